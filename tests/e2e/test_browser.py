"""The MLflow UI of a finished search, seen in a real (headless) browser, as a user sees it.

Screenshots go to `<run dir>/browser/` (CI keeps them), and to docs/ with
SEGTUNE_DOCS_SCREENSHOTS=1 (the README's pictures).
"""

from __future__ import annotations

import os
import re
import time

import pytest
from headless import chromium, missing_browser, mlflow_ui, save_png
from helpers import ROOT

pytestmark = pytest.mark.e2e

# The metric a trial's run page must show. One name, so that it can follow the tracking code.
TRIAL_METRIC = "best_val_dice"
# `segtune.kind` of the nested result runs (best trial, soups) listed beside the trials.
RESULT_KINDS = {"best", "soup"}
WAIT_S = 180  # the UI's first page on a busy 2-core machine took 60 s
# MLflow 3.18's GenAI / Model training switch, set by the address (the run prints it).
WORKFLOW = "workflowType=machine_learning"


# Session scope, as smoke_run's: pytest sets up wider scopes first, so a narrower one would
# skip only after the smoke search was made.
@pytest.fixture(scope="session")
def browser_ready():
    reason = missing_browser()
    if reason and os.environ.get("SEGTUNE_REQUIRE_BROWSER") == "1":
        # CI installs the browser: there a missing one is a broken setup, not a skip.
        pytest.fail(f"SEGTUNE_REQUIRE_BROWSER=1 but {reason}")
    if reason:
        pytest.skip(reason)


def _runs(store):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    trials = [r for r in runs if "ray.trial_id" in r.data.tags]
    results = [r for r in runs if r.data.tags.get("segtune.kind") in RESULT_KINDS]
    return experiment.experiment_id, parent, trials, results


# browser_ready first: without the browser the test skips before the smoke search is made.
def test_mlflow_ui_lists_nested_trials_and_shows_their_metric(browser_ready, smoke_run,
                                                              tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    storage, run_dir, proc = smoke_run
    experiment_id, parent, trials, results = _runs(storage / "mlflow.db")
    assert len(trials) == 2
    for run in trials:
        assert TRIAL_METRIC in run.data.metrics, (
            f"trial run {run.info.run_name} logged no {TRIAL_METRIC}: {sorted(run.data.metrics)}")
    # The metric is checked in the store first: a page without it must fail the UI check,
    # not a search that never logged it.
    best = max(trials, key=lambda r: r.data.metrics[TRIAL_METRIC])
    shots = run_dir / "browser"
    docs = ROOT / "docs" if os.environ.get("SEGTUNE_DOCS_SCREENSHOTS") == "1" else None

    def link(run):
        # On the Model training side a link ends in `?workflowType=...`.
        return (By.CSS_SELECTOR, f"a[href*='/runs/{run.info.run_id}']")

    with mlflow_ui(storage / "mlflow.db", tmp_path / "mlflow-server.log") as base, \
            chromium(tmp_path / "profile") as driver:
        wait = WebDriverWait(driver, WAIT_S)
        _stored_view(driver, wait, printed_url(proc.stdout, base), shots, docs)
        # Without `workflowType` MLflow 3.18 shows its GenAI side (Traces, Judges, ...). A new
        # page, not a jump within the stored view's: that one left the table loading forever.
        driver.get("about:blank")
        driver.get(f"{base}/#/experiments/{experiment_id}/runs?{WORKFLOW}")
        # The runs table is filled by AJAX after the React app starts: wait for the parent.
        wait.until(ec.presence_of_element_located(link(parent)),
                   f"the parent run {parent.info.run_name} is not listed")
        _close_assistant(driver)
        nested = trials + results
        if not driver.find_elements(*link(nested[0])):
            # Nested runs start collapsed under their parent: expand it from its row.
            row = driver.find_element(*link(parent)).find_element(
                By.XPATH, "./ancestor::div[@role='row']")
            row.find_element(
                By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']").click()
        for run in nested:
            wait.until(ec.visibility_of_element_located(link(run)),
                       f"the nested run {run.info.run_name} is not listed")
        listed = driver.find_element(By.CSS_SELECTOR, "div[role='grid']").text
        for run in nested:
            assert run.info.run_name in listed
        _model_training(driver)
        save_png(driver.get_screenshot_as_png(), shots / "experiment.png",
                 *([docs / "mlflow_experiment.png"] if docs else []))

        driver.get(f"{base}/#/experiments/{experiment_id}/runs/{best.info.run_id}?{WORKFLOW}")
        row = wait.until(ec.visibility_of_element_located(
            (By.XPATH, f"//div[@role='row'][.//a[normalize-space()='{TRIAL_METRIC}']]")),
            f"the run page of {best.info.run_name} shows no metric {TRIAL_METRIC}")
        # The page shows the metric's last logged value, in full (its title holds it whole).
        shown = row.find_elements(By.CSS_SELECTOR, "div[role='cell'] span[title]")[-1]
        assert float(shown.get_attribute("title")) == pytest.approx(
            best.data.metrics[TRIAL_METRIC])
        # The parent link is filled by a second request: wait for it, for a whole screenshot.
        wait.until(ec.visibility_of_element_located(
            (By.CSS_SELECTOR, "[data-testid='key-value-Parent run'] " + link(parent)[1])),
            f"the run page of {best.info.run_name} does not link its parent run")
        _close_assistant(driver)
        _model_training(driver)
        save_png(driver.get_screenshot_as_png(), shots / "trial.png",
                 *([docs / "mlflow_trial.png"] if docs else []))
    assert (shots / "experiment.png").stat().st_size > 0


def _model_training(driver) -> None:
    """The page is on MLflow's Model training side: its menu has the model registry, not the
    GenAI side's judges and traces overview."""
    from selenium.webdriver.common.by import By

    text = driver.find_element(By.TAG_NAME, "body").text
    assert "Model registry" in text and "Judges" not in text, text[:500]


def _close_assistant(driver) -> None:
    """Close MLflow's assistant side panel if it is open: it covers a third of the window."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(
            By.CSS_SELECTOR, "button[data-component-id^='mlflow.assistant'][aria-label='Close']"):
        if button.is_displayed():
            button.click()


def printed_url(stdout: str, base: str) -> str:
    """The MLflow view address the end of a run prints, on the test's server at `base`."""
    found = re.search(r"then open (http://127\.0\.0\.1:5000)(/\S+)", stdout)
    assert found, f"the run printed no MLflow view address:\n{stdout[-2000:]}"
    return base + found.group(2)


def _headers(driver) -> set[str]:
    """Every column header of the runs table: the grid draws only the columns in sight, so
    it is scrolled across."""
    from selenium.webdriver.common.by import By

    seen: set[str] = set()
    for x in range(0, 6000, 400):
        driver.execute_script(
            "for (const v of document.querySelectorAll('.ag-center-cols-viewport, "
            ".ag-body-horizontal-scroll-viewport')) v.scrollLeft = arguments[0];", x)
        seen |= {h.get_attribute("textContent").strip()
                 for h in driver.find_elements(By.CSS_SELECTOR, "[role='columnheader']")}
    driver.execute_script(
        "for (const v of document.querySelectorAll('.ag-center-cols-viewport, "
        ".ag-body-horizontal-scroll-viewport')) v.scrollLeft = 0;")
    return seen


def _stored_view(driver, wait, url: str, shots, docs) -> None:
    """The address the run prints opens the runs table (not MLflow's GenAI overview) with the
    scores, each trial's status and epochs; its chart view starts on best_val_dice."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver.get(url)
    wait.until(ec.presence_of_element_located(
        (By.XPATH, "//div[@role='columnheader'][contains(., 'best_val_dice')]")),
        "the stored view shows no best_val_dice column")
    wait.until(ec.presence_of_element_located((By.XPATH, "//a[contains(., 'smoke/')]")),
               "the stored view lists no run")
    _close_assistant(driver)
    assert "/runs" in driver.current_url and "overview" not in driver.current_url
    assert "Send your first trace" not in driver.find_element(By.TAG_NAME, "body").text
    _model_training(driver)
    headers = _headers(driver)
    assert {"best_val_dice", "segtune.status", "segtune.epochs"} <= headers, headers
    save_png(driver.get_screenshot_as_png(), shots / "runs.png",
             *([docs / "mlflow_runs.png"] if docs else []))
    driver.get(url + "&compareRunsMode=CHART")
    card = "[data-testid='experiment-view-compare-runs-card'] h4"
    wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, card)),
               "the chart view shows no chart")
    charts = [e.text.strip() for e in driver.find_elements(By.CSS_SELECTOR, card)]
    assert charts[:3] == ["best_val_dice", "val_dice", "loss"], charts
    sections = [e.text.strip() for e in driver.find_elements(
        By.CSS_SELECTOR, "[data-testid='experiment-view-compare-runs-section-header']")]
    assert sections and not [t for t in sections if t.endswith("(0)")], sections
    # The curves are drawn after the cards (minutes on a busy machine): wait for the plots.
    wait.until(lambda d: len(d.find_elements(
        By.CSS_SELECTOR, "[data-testid='experiment-view-compare-runs-card'] .main-svg")) >= 3,
        "the chart view drew no curves")
    time.sleep(3)
    _close_assistant(driver)
    save_png(driver.get_screenshot_as_png(), shots / "charts.png",
             *([docs / "mlflow_charts.png"] if docs else []))


def check_ray_dashboard(stderr: str, profile, shots) -> None:
    """During a search with a Ray of its own (its log lines so far in `stderr`): the Ray
    dashboard's actors page names a running trial (class SegtuneTrial, repr `trial_<id>`),
    and its jobs page names the job after the run. Skipped without a browser, unless
    SEGTUNE_REQUIRE_BROWSER=1 (CI), where a missing browser fails."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    reason = missing_browser()
    if reason and os.environ.get("SEGTUNE_REQUIRE_BROWSER") != "1":
        return
    assert not reason, reason
    found = re.search(r"Ray dashboard: (http://\S+)", stderr)
    assert found, f"the search logged no Ray dashboard address:\n{stderr[-2000:]}"
    trials = set(re.findall(r"trial (\w+) started", stderr))
    assert trials, stderr[-2000:]
    with chromium(profile) as driver:
        driver.get(f"{found.group(1)}/#/actors")
        text = lambda d: d.find_element(By.TAG_NAME, "body").text  # noqa: E731
        WebDriverWait(driver, WAIT_S).until(
            lambda d: any(f"trial_{t}" in text(d) for t in trials),
            f"the actors page names none of the trials {sorted(trials)}")
        assert "SegtuneTrial" in text(driver) and "ImplicitFunc" not in text(driver)
        time.sleep(2)  # the page fills its columns (state, memory) a moment after the rows
        save_png(driver.get_screenshot_as_png(), shots / "ray_actors.png")
        driver.get(f"{found.group(1)}/#/jobs")
        WebDriverWait(driver, WAIT_S).until(lambda d: "segtune term" in text(d),
                                            "the jobs page does not name the job by its run")
