"""Sibling soups (`soup.siblings: K`): after the search, K siblings of the best trial, each
forked from the best trial's own checkpoint at `soup.fork_fraction` of its epochs and finishing
its training with its own seed for the patch order (and the augmentation drawn with it). They
share the best trial's weights up to the fork point, so they sit in its basin and average well
(linear mode connectivity, Frankle et al. 2020), and each is as good as the best trial's
configuration is. They run as Ray Tune trials like `repeat`'s jobs (one MLflow run each,
nested under the search's), and the soups are made of the best trial and its siblings.

Cost: K x (1 - fork_fraction) x epochs more training epochs, and trials that keep their fork
point's state (model and optimizer) in every later checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from search.errors import SoupError
from search.retrain import pick_trials, run_jobs
from search.runfolder import RunFolder
from search.storage import load_run_checkpoint
from search.summary import SiblingRecord, TrialRecord
from search.trials import fork_epoch
from train_fn.files import write_json

logger = logging.getLogger(__name__)

NAME = "siblings"


def sibling_seeds(spec, k: int) -> list[int]:
    """The siblings' seeds: the spec's patch seed plus 1..K (the best trial's is the seed)."""
    return [(spec.train.seed + i) % 2**32 for i in range(1, k + 1)]


def fork_state(run_dir: Path, best: TrialRecord, epoch: int) -> dict[str, Any]:
    """The best trial's state at its fork point, read from its checkpoint."""
    state = load_run_checkpoint(run_dir, best.checkpoint)
    fork = state.get("fork")
    if fork is None or fork.get("epoch") != epoch:
        raise SoupError(
            f"trial {best.trial_id}: its checkpoint {best.checkpoint} (epoch "
            f"{state.get('epoch')}) holds no fork point at epoch {epoch} (soup.fork_fraction): "
            "its best epoch came before the fork point, or the trial ran without "
            "soup.siblings; lower soup.fork_fraction, or set soup.siblings to 0")
    return fork


def run_siblings(run_dir: str | Path) -> list[SiblingRecord]:
    """Train the best trial's K siblings (or read them, when an earlier run of this search
    finished them); their records, as summary.json keeps them under `siblings`."""
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    spec = folder.spec
    done = run_dir / NAME / "results.json"
    if done.is_file():  # a resumed search whose siblings had finished
        logger.info("siblings: finished already (%s)", done)
        return [SiblingRecord.from_json(s) for s in json.loads(done.read_text())["siblings"]]
    best = pick_trials(folder.summary(), None)[0]
    epoch = fork_epoch(spec.resolve(best.config))
    start = fork_state(run_dir, best, epoch)
    jobs = {f"sibling{i}": {"trial": best.trial_id, "config": best.config, "seed": seed,
                            "sibling": True, "fork_epoch": epoch, "split": folder.split}
            for i, seed in enumerate(sibling_seeds(spec, spec.soup.siblings), start=1)}
    logger.info("siblings: %d of trial %s, forked at epoch %d of %d", len(jobs),
                best.trial_id, epoch, spec.train.epochs)
    records = run_jobs(run_dir, NAME, jobs, NAME, start=start)
    siblings = [SiblingRecord(
        trial_id=name, status=r["status"], config=best.config, seed=r["seed"],
        fork_of=best.trial_id, fork_epoch=epoch, val_dice=r["scores"].get("final/val_dice"),
        val_dice_per_class={k.split("/", 2)[2]: v for k, v in r["scores"].items()
                            if k.startswith("final/val_dice/")},
        checkpoint=r["checkpoint"]) for name, r in sorted(records.items())]
    done.parent.mkdir(parents=True, exist_ok=True)
    write_json(done, {"kind": NAME, "trial": best.trial_id,
                      "siblings": [s.to_json() for s in siblings]})
    return siblings

