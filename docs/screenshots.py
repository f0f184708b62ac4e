"""Make the README's Ray dashboard and "Segment new images" pictures; rerun after a UI change.

    python docs/screenshots.py [--spec spaces/novograd.yaml] [--storage DIR]
    python docs/screenshots.py --run-dir runs/novograd     # the prediction picture only

Runs a search of the spec (a local Ray, its dashboard on loopback), photographs the dashboard's
actors page in Debian's headless Chromium while the trials run, then draws one axial slice of a
test patient with the finished run's best model's prediction over it. Writes
docs/ray_dashboard.png and docs/predict_overlay.png. The MLflow UI pictures (the stored view's
table and charts, the nested runs, a trial's page) come from the browser test:
`SEGTUNE_DOCS_SCREENSHOTS=1 python -m pytest tests/e2e/test_browser.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# The browser helpers are the browser test's own, so both drive Chromium the same way.
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from headless import chromium, kill_group, missing_browser, save_png  # noqa: E402

WAIT_S = 600


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="spaces/novograd.yaml")
    parser.add_argument("--storage", help="where the search's run folder goes (default: a "
                        "temporary folder, removed)")
    parser.add_argument("--run-dir", help="a finished run folder: redraw only the prediction "
                        "picture from it (no search, no dashboard picture)")
    parser.add_argument("--model", help="with --run-dir: the model to draw (default: the one "
                        "the run recommends; a checkpoint path for a run that did not finish)")
    args = parser.parse_args(argv)
    if args.run_dir:
        predict_overlay(Path(args.run_dir), DOCS / "predict_overlay.png", args.model)
        print(f"wrote {DOCS / 'predict_overlay.png'}")
        return
    reason = missing_browser()
    if reason:
        sys.exit(f"no browser: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(args.storage or tmp).resolve()
        run_dir = search_with_dashboard_shot(args.spec, storage, Path(tmp))
        predict_overlay(run_dir, DOCS / "predict_overlay.png")
    print(f"wrote {DOCS / 'ray_dashboard.png'} and {DOCS / 'predict_overlay.png'}")


def search_with_dashboard_shot(spec: str, storage: Path, tmp: Path) -> Path:
    """Run `python -m search run SPEC`; photograph Ray's actors page once two trials run.

    Token authentication is turned off for this one local, loopback-only Ray: the page would
    otherwise ask for the token first."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "search", "run", spec, "--storage",
                             str(storage)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def pump():  # the search's output is read while it runs, never left to fill a pipe
        for line in proc.stdout:
            output.append(line)
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        dashboard, running = None, 0
        deadline = time.monotonic() + WAIT_S
        while running < 2:
            if proc.poll() is not None and lines.empty():
                raise RuntimeError("the search ended before two trials ran:\n"
                                   + "".join(output[-40:]))
            if time.monotonic() > deadline:
                raise TimeoutError("no two trials running within "
                                   f"{WAIT_S} s:\n" + "".join(output[-40:]))
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            found = re.search(r"Ray dashboard: (http://\S+)", line)
            dashboard = found.group(1) if found else dashboard
            running += bool(re.search(r"trial \w+ started", line))
        if dashboard is None:
            raise RuntimeError("the search logged no Ray dashboard address")
        with chromium(tmp / "profile") as driver:
            photograph_actors(driver, dashboard, DOCS / "ray_dashboard.png")
        if proc.wait(timeout=3600) != 0:
            raise RuntimeError("the search failed:\n" + "".join(output[-40:]))
    finally:
        if proc.poll() is None:
            kill_group(proc)
    summary = json.loads((storage / Path(spec).stem / "summary.json").read_text())
    print(f"search done: best trial {summary['best']['trial_id']}")
    return storage / Path(spec).stem


def photograph_actors(driver, dashboard: str, path: Path) -> None:
    """The actors page with the trials' actors alive (class SegtuneTrial, repr the trial's
    name)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{dashboard}/#/actors")
    WebDriverWait(driver, 60).until(ec.presence_of_element_located(
        (By.XPATH, "//*[contains(text(), 'trial_')]")),
        "the Ray dashboard lists no trial actor")
    time.sleep(2)  # the page fills its columns (state, memory) a moment after the rows
    save_png(driver.get_screenshot_as_png(), path)


def predict_overlay(run_dir: Path, path: Path, chosen: str | None = None) -> None:
    """One axial slice of the first test patient: CT, reference labels, and the labels of
    the model the run recommends (what its last lines tell `predict` to use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    import numpy as np
    from matplotlib.colors import ListedColormap

    from search.predict import load_model
    from search.summary import Summary
    from train_fn.datasets import open_dataset

    run = json.loads((run_dir / "run.json").read_text())
    # The model the run's last lines tell `predict` to use.
    chosen = chosen or Summary.from_json(
        json.loads((run_dir / "summary.json").read_text())).recommended()
    model = load_model(run_dir, chosen, device="cpu")
    case = open_dataset(model.spec.data, root=run["data_root"]).case(run["split"]["test"][0])
    predicted = model.predict(case.image)
    image = np.asarray(nib.load(case.image).dataobj, dtype=np.float32)
    truth = np.asarray(nib.load(case.label).dataobj).astype(np.uint8)
    z = int(np.argmax([len(np.unique(truth[..., k])) * 1e6 + (truth[..., k] > 0).sum()
                       for k in range(truth.shape[2])]))  # the slice with most classes
    colours = ["#e6194b", "#f58231", "#3cb44b", "#4363d8", "#911eb4", "#46f0f0"]
    ids = sorted(model.labels)
    cmap = ListedColormap(colours[: len(ids)])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8), dpi=100)
    for ax, labels, title in ((axes[0], truth, "reference"), (axes[1], predicted,
                                                              f"predict --model {model.name}")):
        ax.imshow(np.rot90(image[..., z]), cmap="gray", vmin=-600, vmax=600)
        shown = np.ma.masked_equal(np.rot90(labels[..., z]), 0)
        ax.imshow(shown, cmap=cmap, vmin=min(ids) - 0.5, vmax=max(ids) + 0.5, alpha=0.5,
                  interpolation="nearest")
        ax.set_title(f"{case.case_id}, slice {z}: {title}")
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[i]) for i in range(len(ids))]
    fig.legend(handles, [model.labels[i] for i in ids], loc="lower center", ncol=len(ids))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    with tempfile.NamedTemporaryFile(suffix=".png") as tmp:
        fig.savefig(tmp.name)
        plt.close(fig)
        save_png(Path(tmp.name).read_bytes(), path)


if __name__ == "__main__":
    main()
