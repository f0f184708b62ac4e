"""The search's results as MLflow runs: the best trial, the uniform soup and the greedy soup,
each a nested run under the search's parent with its validation and test scores and its model,
so the runs table compares them side by side.

A re-soup replaces them: the new runs are made first and the old ones (found by their
`segtune.kind` tag) deleted after, with their models, so a kill in between leaves one set or
two, never none, and the next soup tidies up.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

from search.reference import mlflow_metrics
from search.runfolder import RunFolder
from search.summary import ScoredRecord, Summary
from search.tracking import NOTE_TAG, PARENT_TAG, RUN_DIR_TAG, Tracker, params_of

logger = logging.getLogger(__name__)

KIND_TAG = "segtune.kind"
# The soup step a result run belongs to (summary.json's `result_set`): the runs of the set
# summary.json names are the run's results; any other is left from an interrupted step.
RESULT_SET_TAG = "segtune.result_set"
SOUP_TAG = "segtune.soup"
BEST_TRIAL_TAG = "segtune.best_trial"
RESULT_KINDS = ("best", "soup")
CHAMPION = "champion"  # the alias of the model the run recommends: models:/<run>@champion


@dataclass
class Result:
    """One result of a search: `name` (`best`, `uniform`, `greedy`), its scores as MLflow
    metrics, its weights (a state dict) and what to tag and note."""

    name: str
    metrics: dict[str, float]
    weights: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    note: str = ""


def scores(record: ScoredRecord) -> dict[str, float]:
    """`val_dice`, `val_dice/<region>`, `test_dice`, `test_dice/<region>`,
    `test_hd95/<region>` of a summary.json record (`best`, or a soup)."""
    out = {k: float(v) for k, v in (("val_dice", record.val_dice),
                                    ("test_dice", record.test_dice)) if v is not None}
    for prefix, per_region in (("val_dice", record.val_dice_per_class),
                               ("test_dice", record.test_dice_per_class),
                               ("test_hd95", record.test_hd95_per_class)):
        out.update({f"{prefix}/{region}": float(v) for region, v in (per_region or {}).items()})
    return out


def results_of(summary: Summary, weights: dict[str, Any]) -> list[Result]:
    """The result runs of a summary.json (`best`, and the soups when there are any);
    `weights` maps `best` / `uniform` / `greedy` to their state dicts."""
    best = summary.best
    out = [Result("best", scores(best), weights.get("best"), params=best.config,
                  tags={KIND_TAG: "best", "segtune.trial": best.trial_id},
                  note=f"best trial {best.trial_id}")]
    for kind, soup in (summary.soups or {}).items():
        ingredients = soup.ingredients
        out.append(Result(kind, {**scores(soup), "size": float(len(ingredients))},
                          weights.get(kind),
                          tags={KIND_TAG: "soup", SOUP_TAG: kind,
                                "segtune.ingredients": ", ".join(ingredients)},
                          note=f"{kind} soup of {len(ingredients)} trial(s): "
                               f"{', '.join(ingredients)}"))
    ref = (summary.reference or {}).get("models") or {}
    for result in out:  # the per-case spread and interval of each model on the test split
        record = ref.get(result.name)
        if record:
            result.metrics.update(spread(record))
    return out


def _result_runs(tracker: Tracker) -> list:
    return [r for r in tracker.client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{tracker.parent_id}'")
        if r.data.tags.get(KIND_TAG) in RESULT_KINDS]


def retire_results(tracker: Tracker, current: str | None, untagged: bool = True) -> int:
    """Delete the result runs (and their models) of every soup step but `current`: those an
    earlier step made, or an interrupted one left (also one stuck RUNNING). Runs without a
    set tag (made by an older segtune) go too with `untagged`. Returns how many went."""
    if tracker.parent_id is None:
        return 0
    gone = 0
    for run in _result_runs(tracker):
        tag = run.data.tags.get(RESULT_SET_TAG)
        if (tag is None and not untagged) or (tag is not None and tag == current):
            continue
        for mv in tracker.client.search_model_versions(f"run_id = '{run.info.run_id}'"):
            tracker.client.delete_model_version(mv.name, mv.version)
        for logged in tracker.client.search_logged_models(
                [tracker.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"):
            tracker.client.delete_logged_model(logged.model_id)
        tracker.client.delete_run(run.info.run_id)
        gone += 1
    return gone


def spread(record: dict[str, Any]) -> dict[str, float]:
    """A reference record's std over test cases and bootstrap 95% interval, as metrics."""
    out = {}
    for suffix, s in {"": record["mean"],
                      **{f"/{r}": v for r, v in record["regions"].items()}}.items():
        out.update({f"test_dice_std{suffix}": s["std"], f"test_dice_ci_low{suffix}":
                    s["ci95"][0], f"test_dice_ci_high{suffix}": s["ci95"][1]})
    if "vs_best" in record:
        out["vs_best/delta"] = record["vs_best"]["delta"]
        out["vs_best/better"] = float(record["vs_best"]["better"])
    return {k: float(v) for k, v in out.items() if v == v}  # NaN: no value


def log_results(tracker: Tracker, results: list[Result], model=None, example=None,
                metadata: dict[str, Any] | None = None, result_set: str | None = None,
                champion: str | None = None) -> dict[str, str]:
    """Make one nested run per result under the tracker's parent run (and log its model, when
    `model`, a network of the right architecture, is given, named by the result and
    registered as a version of the registered model named after the run; the version of
    `champion` gets the alias `champion`), tagged with the soup step's `result_set`; without
    a `result_set`, then delete the result runs an earlier soup made, with their models and
    versions (with one, `retire_results` does so once the step is switched to). Tags the
    parent with the best trial's id. Returns name -> run id."""
    if tracker.parent_id is None:
        return {}
    client = tracker.client
    old = [] if result_set else _result_runs(tracker)
    made, versions = {}, {}
    for result in results:
        run = client.create_run(
            tracker.experiment_id, run_name=f"{tracker.run_name}/{result.name}",
            tags={PARENT_TAG: tracker.parent_id, RUN_DIR_TAG: tracker.run_dir,
                  NOTE_TAG: result.note, **result.tags,
                  **({RESULT_SET_TAG: result_set} if result_set else {})})
        run_id = run.info.run_id
        tracker.log_batch(run_id, params=params_of(result.params), metrics=result.metrics)
        if model is not None and result.weights is not None:
            versions[result.name] = log_model(tracker.uri, run_id, model, result.weights,
                                              example, metadata, result.name,
                                              tracker.run_name)
        client.set_terminated(run_id, "FINISHED")
        made[result.name] = run_id
    if versions.get(champion):
        client.set_registered_model_alias(tracker.run_name, CHAMPION, versions[champion])
    best = next((r for r in results if r.name == "best"), None)
    if best is not None:
        client.set_tag(tracker.parent_id, BEST_TRIAL_TAG, best.tags["segtune.trial"])
    for run in old:
        for mv in client.search_model_versions(f"run_id = '{run.info.run_id}'"):
            client.delete_model_version(mv.name, mv.version)
        for logged in client.search_logged_models(
                [tracker.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"):
            client.delete_logged_model(logged.model_id)
        client.delete_run(run.info.run_id)
    return made


@contextlib.contextmanager
def _active(uri: str, run_id: str):
    """`run_id` as the active run of MLflow's fluent API on the store `uri` (the only way
    `mlflow.pytorch.log_model` takes a run), the earlier tracking URI back after."""
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_id=run_id):
            yield
    finally:
        mlflow.set_tracking_uri(before)


def requirements() -> list[str]:
    """The model's environment, given rather than inferred: MLflow's inference loads the
    model in a subprocess (seconds). Versions without a local tag (`+cpu`): that build may
    not exist on PyPI."""
    return [f"{name}=={version(name).split('+')[0]}" for name in ("torch", "monai",
                                                                  "cloudpickle")]


def log_model(uri: str, run_id: str, model, weights: dict[str, Any], example,
              metadata: dict[str, Any] | None, name: str = "model",
              registered: str | None = None) -> str | None:
    """The network with `weights`, as an MLflow PyTorch model `name` of the run, registered
    as a new version of the registered model `registered` (when given); returns that
    version. Saved pickled (MONAI's classes by reference), not as MLflow's default `pt2`
    graph: an exported graph takes one input shape and not every MONAI network exports. A
    model that cannot be logged is a warning: the run's scores and the run folder's files
    stand without it."""
    import mlflow.pytorch

    net = copy.deepcopy(model).to("cpu").eval()
    net.load_state_dict(weights)
    pickle_warning = logging.getLogger("mlflow.pytorch")
    level = pickle_warning.level
    # MLflow warns on every pickled model; the README says once where these models load from.
    pickle_warning.setLevel(logging.ERROR)
    try:
        with _active(uri, run_id):
            info = mlflow.pytorch.log_model(net, name=name, input_example=example,
                                            pip_requirements=requirements(),
                                            metadata=metadata, serialization_format="pickle")
            # In the block: the registry finds the logged model through the active store.
            return register(uri, registered, info, run_id) if registered else None
    except Exception as err:  # noqa: BLE001 - any failure: the results are kept without it
        logger.warning("MLflow: the model of run %s was not logged (%s)", run_id,
                       str(err).splitlines()[0][:200] if str(err) else type(err).__name__)
        return None
    finally:
        pickle_warning.setLevel(level)


def register(uri: str, name: str, info, run_id: str) -> str:
    """A new version of the registered model `name` (made if new) for the logged model
    `info`; its number. Through the client: MLflow's `registered_model_name=` prints its
    own lines on stderr."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        client.create_registered_model(
            name, description="segtune: the best trial and the soups of the run of this "
            "name; alias champion: the model the run recommends")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, info.model_uri, run_id=run_id,
                                          model_id=info.model_id)
    return str(version.version)


def log_finish(tracker: Tracker, folder: RunFolder, summary: Summary,
               weights: dict[str, Any], model: Any) -> None:
    """`log_new_results` then `log_parent_scores`, with nothing to switch in between."""
    log_new_results(tracker, folder, summary, weights, model)
    log_parent_scores(tracker, folder, summary)


def log_parent_scores(tracker: Tracker, folder: RunFolder, summary: Summary) -> None:
    """The best trial's and the soups' scores on the parent run (`best/*`, `soup/*`: scripts
    read them), with summary.json and soup.json."""
    best = summary.best
    metrics = {"best/test_dice": best.test_dice,
               **{f"best/test_dice/{k}": v for k, v in best.test_dice_per_class.items()},
               **{f"best/test_hd95/{k}": v for k, v in best.test_hd95_per_class.items()}}
    for kind, soup in (summary.soups or {}).items():
        metrics[f"soup/{kind}/val_dice"] = soup.val_dice
        metrics[f"soup/{kind}/test_dice"] = soup.test_dice
        metrics[f"soup/{kind}/size"] = len(soup.ingredients)
        metrics.update({f"soup/{kind}/test_dice/{k}": v
                        for k, v in soup.test_dice_per_class.items()})
    if summary.reference:
        metrics.update(mlflow_metrics(summary.reference))
    artifacts = [folder.summary_json]
    if summary.soups:
        artifacts.append(folder.soup_link / "soup.json")
    tracker.log_parent(metrics, artifacts)


def log_new_results(tracker: Tracker, folder: RunFolder, summary: Summary,
                    weights: dict[str, Any], model: Any) -> None:
    """One result run per model, with it, tagged with summary's `result_set` (when it has
    one: the old runs then stay until `retire_results`)."""
    import torch

    ds, spec = folder.dataset, folder.spec
    example = torch.zeros((1, len(ds.channels), *spec.train.patch_size)).numpy()
    log_results(tracker, results_of(summary, weights), model, example,
                champion=summary.recommended(), metadata={
        "segtune": {"run": folder.path.name, "channels": list(ds.channels),
                    "regions": {k: list(v) for k, v in ds.regions.items()},
                    "num_classes": ds.num_classes,
                    "patch_size": list(spec.train.patch_size),
                    "preprocessing": spec.data.model_dump(mode="json")}},
        result_set=summary.result_set)
