"""Fork-then-search (`search.trunk_epochs: N`): one shared trunk trained for N epochs before the
search, at the centre of the searched ranges (the LR range test's representative
configuration), after which every trial starts from the trunk's weights with a fresh optimizer
and its own schedule. Trials that share the first part of their training become linearly
connected (Frankle et al. 2020): their weights average without a loss barrier, so they soup.

The trunk trains once, in the driver, into `RUN_DIR/trunk/checkpoint.pt` after every epoch (a
resumed search reuses a finished trunk and continues an unfinished one), as an MLflow run of
its own nested under the search's (tag `segtune.kind=trunk`). It is recorded as every trial's
`ancestor` (in each checkpoint): soups refuse ingredients with different ancestors.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from search.errors import RunFolderError
from search.lazy import LazyModule
from search.runfolder import RunFolder
from search.space import centre
from search.spec import Spec
from search.tracking import PARENT_TAG, params_of

# torch loads when a trunk is trained, not before (search.lazy)
checkpoint_io = LazyModule("train_fn.checkpoint")
loop = LazyModule("train_fn.loop")

logger = logging.getLogger(__name__)

TRUNK_DIR = "trunk"
KIND = "trunk"


def trunk_spec(spec: Spec) -> Spec:
    """The trunk's concrete spec: the search space's centre, trained for `trunk_epochs`."""
    tree = spec.resolve(centre(spec)).model_dump(warnings=False)
    tree["train"]["epochs"] = spec.search.trunk_epochs
    tree["train"]["average"] = "none"
    tree["soup"]["siblings"] = 0
    return Spec.model_validate(tree)


def fingerprint(weights: dict[str, Any]) -> str:
    """A short hash of a state dict (the trunk's identity in its descendants' lineage)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(weights.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def trunk_init(state: dict[str, Any]) -> dict[str, Any]:
    """What a trial starts from: the trunk's weights and the ancestor record they carry."""
    return {"model": state["model"],
            "ancestor": {"kind": KIND, "epochs": state["epoch"],
                         "fingerprint": fingerprint(state["model"])}}


def ensure_trunk(run_dir: Path, spec: Spec, split: dict[str, list[str]], data_root: str,
                 tracker=None) -> dict[str, Any]:
    """The run's trunk ({model, ancestor}): read when finished, else trained (continued from
    its last epoch when a run was interrupted during it) and checkpointed after every epoch."""
    folder = Path(run_dir) / TRUNK_DIR
    epochs = spec.search.trunk_epochs
    state = checkpoint_io.load_checkpoint(folder) if (folder / "checkpoint.pt").is_file() else None
    if state is not None and state["epoch"] >= epochs:
        logger.info("trunk: trained already (%d epochs, %s)", state["epoch"], folder)
        return trunk_init(state)
    tspec = trunk_spec(spec)
    run_id = _mlflow_run(tracker, tspec)
    logger.info("trunk: training %d epochs%s", epochs,
                f" from epoch {state['epoch']}" if state else "")
    last: dict[str, Any] = {"state": state}

    def report(metrics: dict[str, Any], new: dict[str, Any] | None) -> None:
        if new is None:
            raise RuntimeError(f"trunk: training diverged at epoch {metrics['epoch']} "
                               f"({metrics.get('stop_reason')}); lower the searched lr range")
        checkpoint_io.save_checkpoint(folder, new)
        last["state"] = new
        logger.info("trunk epoch %d/%d: loss %.3f, val_dice %.3f", new["epoch"], epochs,
                    metrics["loss"], metrics["val_dice"])
        if run_id is not None:
            tracker.log_batch(run_id, metrics={k: float(v) for k, v in metrics.items()
                                               if isinstance(v, (int, float))},
                              step=int(metrics["epoch"]))

    loop.train(tspec, split, data_root, report=report, resume=state)
    if run_id is not None:
        tracker.client.set_terminated(run_id, "FINISHED")
    return trunk_init(last["state"])


def saved_trunk(run_dir: str | Path) -> dict[str, Any] | None:
    """The finished trunk of a run (what `repeat` starts its seeds from), None without one;
    a run with `search.trunk_epochs` whose trunk is missing or unfinished is refused."""
    epochs = RunFolder(run_dir).spec.search.trunk_epochs
    if not epochs:
        return None
    path = Path(run_dir) / TRUNK_DIR / "checkpoint.pt"
    state = checkpoint_io.load_checkpoint(path.parent) if path.is_file() else None
    if state is None or state["epoch"] < epochs:
        raise RunFolderError(f"{path}: the run's trunk ({epochs} epochs) is "
                             f"{'missing' if state is None else 'unfinished'}; its trials "
                             "started from it, so their retrains must too")
    return trunk_init(state)


def refuse_trunk(spec: Spec, what: str) -> None:
    """Cross-validation does not fit a trunk: the trunk trained on the run's train split,
    which holds other folds' validation cases (they would be scored by a model that saw
    them)."""
    if spec.search.trunk_epochs:
        raise RunFolderError(
            f"{what}: the run's trials start from a trunk trained on its train split, which "
            "holds the validation cases of the other folds; cross-validate a search without "
            "search.trunk_epochs")


def _mlflow_run(tracker, tspec: Spec) -> str | None:
    """The trunk's MLflow run under the search's parent: the one an interrupted trunk left,
    else a new one with the trunk's settings as params."""
    if tracker is None or tracker.parent_id is None:
        return None
    found = tracker.client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{tracker.parent_id}' "
        f"and tags.`segtune.kind` = '{KIND}'")
    if found:
        return found[0].info.run_id
    run = tracker.client.create_run(tracker.experiment_id,
                                    run_name=f"{tracker.run_name}/{KIND}",
                                    tags={PARENT_TAG: tracker.parent_id, "segtune.kind": KIND})
    tracker.log_batch(run.info.run_id, params=params_of(tspec.flat()))
    return run.info.run_id
