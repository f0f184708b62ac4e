"""MLflow logging from the driver: one parent run per search, one nested run per trial.

Ray's stock `MLflowLoggerCallback` logs Tune internals as metrics, makes one call per metric,
has no parent run, leaves runs RUNNING when the driver stops and duplicates runs on restore.
This logger (`Tracker`, fed by `search.callbacks.MlflowCallback`) runs in the driver only
(trials never talk to MLflow, so a multi-node cluster needs no MLflow access on the workers),
batches every result into one `log_batch` call, finds a trial's run again by its Ray trial id,
and closes every run it opened with the trial's status.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shlex
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from search.errors import TrackingError
from search.spec import SearchLeaf
from search.trials import values_text

logger = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "ray.trial_id"
RUN_DIR_TAG = "segtune.run_dir"
NOTE_TAG = "mlflow.note.content"  # the run's description in the UI
# What a trial reports that is a curve worth plotting (Ray adds its own bookkeeping keys).
METRIC_PREFIXES = ("loss", "val_dice", "val_hd95", "grad_norm", "lr/")
# The runs table has no default columns; MLflow's UI opens a view stored as this experiment
# tag (plus the key) from a link with `?viewStateShareKey=<key>`, and picks the chart view's
# first metric from the primary-metric tag.
VIEW_KEY = "segtune"
VIEW_TAG = "mlflow.sharedViewState."
PRIMARY_METRIC_TAG = "mlflow.experiment.primaryMetric.name"
# MLflow 3's UI opens an experiment in its GenAI mode (Overview, Traces) unless this tag says
# it holds model training runs.
KIND_TAG = "mlflow.experimentKind"
KIND = "custom_model_development"
# MLflow 3.18 decides it by its GenAI / Model training switch instead, which a link sets.
WORKFLOW = "machine_learning"
STATUS_TAG = "segtune.status"  # running, completed, stopped early, error, ...
EPOCHS_TAG = "segtune.epochs"  # epochs trained of the budget, `3 of 8`
DEFAULT_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def default_uri(storage: str | Path) -> str:
    """sqlite store next to the runs: `<storage>/mlflow.db`."""
    return f"sqlite:///{Path(storage).resolve() / 'mlflow.db'}"




PROBE_TIMEOUT_S = 5.0


# The stores MLflow 3 opens: a server, a database (SQLAlchemy), or Databricks.
STORE_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")


def check_tracking(uri: str, what: str) -> None:
    """Refuse an http(s) tracking URI where no server answers, within seconds (MLflow's client
    would retry for minutes). Any HTTP answer counts, even an error status (a proxy that asks
    for a login is there); other stores (sqlite, file) are opened by MLflow itself. `what`
    names where the URI came from (`--tracking-uri`, the spec's key, run.json)."""

    scheme = uri.partition(":")[0].lower().split("+")[0] if ":" in uri else ""
    if scheme not in STORE_SCHEMES:
        shown = uri if len(uri) <= 80 else f"{uri[:60]}... ({len(uri)} characters)"
        raise TrackingError(f"{what} {shown}: not an MLflow tracking URI; use one of "
                            + ", ".join(f"{s}://..." for s in STORE_SCHEMES))
    if scheme not in ("http", "https"):
        return
    try:
        _probe_server(uri, what)
    except TrackingError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, (TimeoutError, socket.timeout)):
            reason = f"no answer within {PROBE_TIMEOUT_S:g} s"
        raise TrackingError(f"{what} {uri}: no MLflow tracking server answers there "
                            f"({reason}); start the server, or pick another tracking URI "
                            "(--tracking-uri, or tracking.uri in the spec)") from None


def _probe_server(uri: str, what: str) -> None:
    """Ask the server what an MLflow client would (list one experiment, with the client's
    credentials from the environment): an MLflow server answers 200 with JSON. An error
    status (503 from a server still starting or overloaded, 404 from a web server that is no
    MLflow, 401/403 from a login) is one line naming it: the client would retry for minutes
    or fail later. Connection errors propagate (URLError, OSError)."""
    endpoint = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    request = urllib.request.Request(endpoint)
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
        pair = (f"{os.environ['MLFLOW_TRACKING_USERNAME']}:"
                f"{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}")
        request.add_header("Authorization", f"Basic {base64.b64encode(pair.encode()).decode()}")
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as answer:
            code, body = answer.status, answer.read(1 << 16)
    except urllib.error.HTTPError as err:
        code, body = err.code, b""
    try:
        is_mlflow = code == 200 and isinstance(json.loads(body), dict)
    except ValueError:
        is_mlflow = False
    if is_mlflow:
        return
    why = {401: "a login is needed: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                "or MLFLOW_TRACKING_TOKEN", 403: "this login may not use it",
           503: "the server is unavailable (starting, overloaded or down)"}.get(
        code, "not an MLflow tracking server's answer")
    raise TrackingError(f"{what} {uri}: answers HTTP {code} at {endpoint} ({why}); start "
                        "the MLflow server, or pick another tracking URI (--tracking-uri, or "
                        "tracking.uri in the spec)")


def _str(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_str(v) for v in value) + "]"
    return str(value)


def artifact_root(uri: str, experiment: str) -> str | None:
    """Artifacts of a sqlite store go next to it (`<dir>/mlartifacts/<experiment>`), not to
    MLflow's default `./mlruns` in whatever folder the command ran from. A server keeps its
    own artifact location (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    return (db.parent / "mlartifacts" / experiment).resolve().as_uri()


def params_of(flat: dict[str, Any]) -> list[tuple[str, str]]:
    """Spec settings as MLflow params under their dotted names (MLflow caps values at 6000
    characters); a searched setting as its readable range."""
    return [(k, (readable_range(v) if _is_leaf(v) else _str(v))[:6000]) for k, v in flat.items()]


def _is_leaf(value: Any) -> bool:
    if isinstance(value, list):
        return bool(value) and all(_is_leaf(v) for v in value)
    return isinstance(value, dict) and value.get("type") in ("float", "int", "categorical")


def readable_range(leaf: SearchLeaf | dict[str, Any] | list) -> str:
    """A search leaf (or its dict form, `Spec.flat()`) as one short line, the one text of a
    leaf (MLflow params, `--dry-run`): `float 0.001..0.1 log`, `int 1..8 step 2`,
    `choice [adamw, novograd]`; alternatives joined by `; `, each with its condition
    (`when optimizer.name=adamw`)."""
    if isinstance(leaf, list):
        return "; ".join(readable_range(x) for x in leaf)
    if isinstance(leaf, SearchLeaf):
        leaf = leaf.model_dump(exclude_none=True)
    if leaf["type"] == "categorical":
        text = f"choice {_str(leaf['choices'])}"
    else:
        text = f"{leaf['type']} {leaf['low']:g}..{leaf['high']:g}"
        if leaf.get("log"):
            text += " log"
        if leaf.get("step") is not None and not (leaf["type"] == "int" and leaf["step"] == 1):
            text += f" step {leaf['step']:g}"
    for key, allowed in (leaf.get("when") or {}).items():
        shown = "|".join(map(str, allowed)) if isinstance(allowed, list) else allowed
        text += f" when {key}={shown}"
    if leaf.get("default") is not None:
        text += f" (default {leaf['default']})"
    return text


def metrics_of(result: dict[str, Any]) -> dict[str, float]:
    """The curves of one trial result."""
    return {k: float(v) for k, v in result.items()
            if k.startswith(METRIC_PREFIXES) and isinstance(v, (int, float))}


def best_so_far(best: dict[str, Any] | None, result: dict[str, Any], latest: bool = False
                ) -> dict[str, Any] | None:
    """The trial's best validated epoch after `result` (None: none yet): `{"val_dice",
    "epoch", "metrics"}`, by `val_dice`. A tie goes to the later epoch, as Ray keeps the later
    of two equal checkpoints, so the epoch matches summary.json's. With `latest` (cv.mode
    every: each report is the mean over more folds) the last report is the best. An epoch
    without per-region scores (a diverged trial's last report, without a checkpoint) is never
    the best: it is not in summary.json either."""
    dice = result.get("val_dice")
    if not isinstance(dice, (int, float)) or not any(k.startswith("val_dice/") for k in result):
        return best
    if best is not None and not latest and dice < best["val_dice"]:
        return best
    return {"val_dice": float(dice), "epoch": int(result.get("epoch", 0)),
            "metrics": {k: float(v) for k, v in result.items()
                        if k.startswith(("val_dice/", "val_hd95/"))
                        and isinstance(v, (int, float))}}


def best_metrics(best: dict[str, Any], hd_keys: set[str]) -> dict[str, float]:
    """`best_val_dice`, `best_epoch`, `best_val_dice/<region>`, `best_val_hd95/<region>` of a
    best epoch. A region's HD95 logged earlier but not scored at this best epoch (HD95 every
    k epochs) becomes NaN: the column then never shows another epoch's value."""
    out = {"best_val_dice": best["val_dice"], "best_epoch": float(best["epoch"])}
    out.update({f"best_{k}": v for k, v in best["metrics"].items()})
    out.update({k: float("nan") for k in hd_keys if k not in out})
    return out


class Tracker:
    """Parent and nested MLflow runs for one search. Plain class: `search.callbacks` wraps it in a
    Ray callback, and the soup logs to the parent run through it."""

    def __init__(self, uri: str, experiment: str, run_name: str, run_dir: str | Path):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (found.experiment_id if found is not None else
                              self.client.create_experiment(
                                  experiment, artifact_location=artifact_root(uri, experiment),
                                  tags={KIND_TAG: KIND}))
        self.run_name = run_name
        self.run_dir = str(Path(run_dir).resolve())
        self.parent_id: str | None = None
        self.trial_runs: dict[str, str] = {}  # ray trial id -> mlflow run id
        self.open: set[str] = set()
        self.best: dict[str, dict[str, Any]] = {}  # ray trial id -> its best epoch so far
        self.hd_keys: dict[str, set[str]] = {}  # ray trial id -> best_val_hd95/* logged

    # -- parent ---------------------------------------------------------------------------
    def start_parent(self, flat_spec: dict[str, Any], searched: list[str],
                     tags: dict[str, str] | None = None) -> str:
        run = self.client.create_run(
            self.experiment_id, run_name=self.run_name,
            tags={RUN_DIR_TAG: self.run_dir, "segtune.searched": ", ".join(searched),
                  **(tags or {})},
        )
        self.parent_id = run.info.run_id
        self.log_batch(self.parent_id, params=params_of(flat_spec))
        self.open.add(self.parent_id)
        self.set_view(searched)
        return self.parent_id

    def set_view(self, searched: list[str]) -> None:
        """The experiment's runs table as segtune means it to be read: the scores and the
        searched params as columns, best validation Dice first. MLflow's UI keeps the columns
        a user picks in the browser and lets no client set them as the default; it opens a
        view stored in an experiment tag from `view_url`, and takes the chart view's first
        metric from the primary-metric tag."""
        columns = [f"metrics.`{m}`" for m in ("best_val_dice", "val_dice", "test_dice",
                                                "best_epoch")]
        columns += [f"tags.`{STATUS_TAG}`", f"tags.`{EPOCHS_TAG}`"]
        columns += [f"params.`{k}`" for k in searched] + ["tags.`segtune.kind`"]
        view = {"orderByKey": "metrics.`best_val_dice`", "orderByAsc": False,
                "selectedColumns": columns, **chart_view()}
        for key, value in ((VIEW_TAG + VIEW_KEY, json.dumps(view)),
                           (PRIMARY_METRIC_TAG, "best_val_dice"), (KIND_TAG, KIND)):
            self.client.set_experiment_tag(self.experiment_id, key, value)

    def view_url(self, ui: str | None = None) -> str:
        """The address of the view `set_view` stored, on the UI at `ui` (default: the
        tracking server itself, or where `mlflow ui` serves a local store)."""
        return view_url(self.uri, self.experiment_id, ui)

    def attach_parent(self, run_id: str) -> None:
        self.parent_id = run_id

    def reopen_parent(self, run_id: str) -> None:
        """Continue a search's parent run (on resume): RUNNING again until it ends."""
        self.parent_id = run_id
        self.client.update_run(run_id, status="RUNNING")
        self.open.add(run_id)

    # Ray pickles its callbacks with the experiment (and restores them on resume): keep the
    # store's address, not the client or the open-run bookkeeping of this process.
    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("client", None)
        state["trial_runs"], state["open"] = {}, set()
        state["best"], state["hd_keys"] = {}, {}
        return state

    def __setstate__(self, state):
        from mlflow.tracking import MlflowClient

        self.__dict__.update(state)
        self.client = MlflowClient(tracking_uri=self.uri)

    def finish_parent(self, status: str) -> None:
        if self.parent_id in self.open:
            self.client.set_terminated(self.parent_id, status)
            self.open.discard(self.parent_id)

    # -- trials ---------------------------------------------------------------------------
    def start_trial(self, trial_id: str, flat_config: dict[str, Any],
                    searched: dict[str, Any], run_name: str | None = None,
                    tags: dict[str, str] | None = None) -> str:
        """The nested run of a trial: created once, found again by its Ray trial id."""
        if trial_id not in self.trial_runs:
            found = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and "
                              f"tags.`{PARENT_TAG}` = '{self.parent_id}'")
            if found:  # a resumed search: the trial's run exists already
                self.trial_runs[trial_id] = found[0].info.run_id
                self._recall_best(trial_id, found[0].data.metrics)
        if trial_id in self.trial_runs:
            run_id = self.trial_runs[trial_id]
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, STATUS_TAG, "running")
        else:
            run = self.client.create_run(
                self.experiment_id, run_name=run_name or f"{self.run_name}/{trial_id}",
                tags={PARENT_TAG: self.parent_id, TRIAL_TAG: trial_id,
                      RUN_DIR_TAG: self.run_dir, **(tags or {})},
            )
            run_id = run.info.run_id
            self.trial_runs[trial_id] = run_id
            # The searched values also as one tag and as the description: the runs table
            # shows a run's description without picking a column.
            values = values_text(searched, digits=4)
            self.log_batch(run_id, params=params_of(flat_config),
                      tags=[("segtune.searched_params", ", ".join(sorted(searched))),
                            ("segtune.searched_values", values[:5000]), (STATUS_TAG, "running"),
                            (NOTE_TAG, f"searched: {values}"[:5000])])
        self.open.add(run_id)
        return run_id

    def _recall_best(self, trial_id: str, metrics: dict[str, float]) -> None:
        """A resumed trial's best epoch so far, from what its run holds."""
        if "best_val_dice" not in metrics:
            return
        self.best[trial_id] = {
            "val_dice": metrics["best_val_dice"], "epoch": int(metrics.get("best_epoch", 0)),
            "metrics": {k.removeprefix("best_"): v for k, v in metrics.items()
                        if k.startswith(("best_val_dice/", "best_val_hd95/")) and v == v}}
        self.hd_keys[trial_id] = {k for k in metrics if k.startswith("best_val_hd95/")}

    def log_result(self, trial_id: str, result: dict[str, Any], latest: bool = False,
                   budget: int | None = None) -> None:
        """One epoch's curves, and the best epoch's scores so far (`best_*`), at the epoch's
        step: a trial stopped or interrupted at any point has them; the epochs trained (of
        `budget`) as a tag. `latest`: the last report is the best (cv.mode every)."""
        run_id = self.trial_runs.get(trial_id)
        if run_id is None:
            return
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = metrics_of(result)
        best = best_so_far(self.best.get(trial_id), result, latest)
        if best is not None:
            self.best[trial_id] = best
            hd_keys = self.hd_keys.setdefault(trial_id, set())
            metrics.update(best_metrics(best, hd_keys))
            hd_keys.update(k for k in metrics if k.startswith("best_val_hd95/"))
        epochs = f"{step} of {budget}" if budget else str(step)
        self.log_batch(run_id, metrics=metrics, step=step, tags=[(EPOCHS_TAG, epochs)])

    def drop_unknown_trials(self, known: set[str]) -> list[str]:
        """Delete the nested runs of trials that Ray's saved state does not hold: a kill -9
        between MLflow's run and Ray's next save leaves a run of a trial that no resume
        continues (it has no checkpoint; Ray starts a new trial in its place)."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_id}'")
        dropped = []
        for run in runs:
            trial_id = run.data.tags.get(TRIAL_TAG)
            if trial_id and trial_id not in known:
                self.client.set_terminated(run.info.run_id, "KILLED")
                self.client.delete_run(run.info.run_id)
                dropped.append(trial_id)
        return dropped

    def note_retry(self, trial_id: str, retries: int) -> None:
        run_id = self.trial_runs.get(trial_id)
        if run_id is not None:
            self.client.set_tag(run_id, "segtune.retries", str(retries))

    def end_trial(self, trial_id: str, status: str, note: str | None = None) -> None:
        run_id = self.trial_runs.get(trial_id)
        if run_id is None or run_id not in self.open:
            return
        if note:
            self.client.set_tag(run_id, STATUS_TAG, note)
        self.client.set_terminated(run_id, status)
        self.open.discard(run_id)

    def close_trials(self, status: str) -> None:
        """Terminate every trial run still open (the search ended or the driver stopped)."""
        for run_id in list(self.open):
            if run_id != self.parent_id:
                self.client.set_terminated(run_id, status)
                self.open.discard(run_id)

    def close_all(self, status: str) -> None:
        """Terminate every run still open, the parent last: none stays RUNNING."""
        self.close_trials(status)
        self.finish_parent(status)

    # -- parent metrics and files -------------------------------------------------------
    def log_parent(self, metrics: dict[str, float], artifacts: list[Path] = (),
                   artifact_path: str | None = None) -> None:
        if self.parent_id is None:
            return
        self.log_batch(self.parent_id, metrics=metrics, step=0)
        for path in artifacts:
            self.client.log_artifact(self.parent_id, str(path), artifact_path)

    def log_batch(self, run_id: str, params=(), metrics: dict[str, float] | None = None,
             step: int = 0, tags=()) -> None:
        """Params ((key, value) pairs), metrics and tags of a run, in as few calls as MLflow
        allows."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        ms = [Metric(k, v, now, step) for k, v in (metrics or {}).items()]
        ps = [Param(k, v) for k, v in params]
        ts = [RunTag(k, v) for k, v in tags]
        # MLflow's per-call limits: 1000 metrics, 100 params, 100 tags.
        while ms or ps or ts:
            self.client.log_batch(run_id, metrics=ms[:1000], params=ps[:100], tags=ts[:100])
            ms, ps, ts = ms[1000:], ps[100:], ts[100:]


def _chart(kind: str, key: str, section: str) -> dict[str, Any]:
    """One chart card as MLflow's UI stores it (its fields and their defaults). Not marked
    generated: the UI would turn a bar chart of a metric with a history into curves."""
    card = {"uuid": f"segtune-{key}", "type": kind, "runsCountToCompare": 10,
            "metricSectionId": section, "deleted": False, "isGenerated": False,
            "displayName": key, "metricKey": key}
    if kind == "LINE":
        card.update(lineSmoothness=0, xAxisScaleType="linear", scaleType="linear",
                    range={}, xAxisKey="step", selectedXAxisMetricKey="", yAxisKey="metric",
                    yAxisExpressions=[], ignoreOutliers=False, useGlobalXaxisKey=True,
                    useGlobalLineSmoothing=True)
    return card


def chart_view() -> dict[str, Any]:
    """The chart view's part of the stored view: first a section with best_val_dice (a bar
    per run), val_dice and loss, then the per-region Dice curves and the learning rates (the
    UI files each `val_dice/<region>` and `lr/<group>` under the section of its prefix), then
    what the UI adds by itself. Every run is shown, so that no section the UI makes for the
    parent's or the soups' metrics stays empty."""
    sections = [{"uuid": f"segtune-section-{name}", "name": name, "display": True,
                 "isReordered": name == "search", "deleted": False}
                for name in ("search", "val_dice", "lr")]
    charts = [_chart("BAR", "best_val_dice", sections[0]["uuid"]),
              _chart("LINE", "val_dice", sections[0]["uuid"]),
              _chart("LINE", "loss", sections[0]["uuid"])]
    return {"compareRunSections": sections, "compareRunCharts": charts,
            "isAccordionReordered": True, "runsHiddenMode": "SHOW_ALL",
            "hideEmptyCharts": True}


def ui_base(uri: str, ui: str | None = None) -> str:
    """Where the MLflow UI of the store `uri` is: `ui`, the tracking server itself, or
    `mlflow ui`'s default address for a local store."""
    if ui:
        return ui.rstrip("/")
    return uri.rstrip("/") if uri.lower().startswith(("http://", "https://")) else DEFAULT_UI


def ui_command(uri: str) -> str | None:
    """The command that serves the UI of a local store (None for a server)."""
    if uri.lower().startswith(("http://", "https://")):
        return None
    return f"mlflow ui --backend-store-uri {shlex.quote(uri)}"


def view_url(uri: str, experiment_id: str, ui: str | None = None) -> str:
    """The stored view's full address (`Tracker.set_view`) on the UI of the store `uri`."""
    return (f"{ui_base(uri, ui)}/#/experiments/{experiment_id}/runs?"
            f"workflowType={WORKFLOW}&viewStateShareKey={VIEW_KEY}")


def experiment_view_url(uri: str, experiment: str) -> str | None:
    """`view_url` of the experiment named `experiment` in the store `uri` (None when the
    store cannot be read or holds no such experiment)."""
    from mlflow.tracking import MlflowClient

    try:
        found = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    except Exception as err:  # noqa: BLE001 - an address to print, not worth failing for
        logger.debug("no MLflow view address: %s", err)
        return None
    return view_url(uri, found.experiment_id) if found is not None else None


def _home_error(run_dir: Path, info: dict[str, Any]) -> TrackingError:
    here = Path(run_dir).resolve()
    return TrackingError(
        f"{run_dir}: this run folder was made at {info['home']}, and its MLflow run (in "
        f"{info['tracking_uri']}) belongs to that folder: a copied or moved folder does not "
        "write into it; give this one an MLflow run of its own with --tracking-uri URI (e.g. "
        f"--tracking-uri sqlite:///{here.parent / 'mlflow.db'})")


def run_tracker(run_dir: str | Path, info: dict[str, Any], reopen: bool = False) -> Tracker:
    """The tracker of an existing run folder (`info` is its run.json), on its parent run; with
    `reopen` that run is RUNNING again (a resumed search). A folder that is not where it was
    made is refused: its run.json still names the original's store, whose artifact paths are
    absolute, so a re-soup of a copy overwrote the original's artifacts."""
    if info.get("home") and Path(info["home"]) != Path(run_dir).resolve():
        raise _home_error(Path(run_dir), info)
    tracker = Tracker(info["tracking_uri"], info["experiment"], info["name"], run_dir)
    (tracker.reopen_parent if reopen else tracker.attach_parent)(info["parent_run_id"])
    return tracker
