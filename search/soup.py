"""Model soups of a finished search: uniform and greedy weight averaging of the best trials'
checkpoints, judged on the held-out test split against the best single trial.

Greedy soup (Wortsman et al. 2022): candidates sorted by validation Dice, best first; each is
kept only if the soup's validation Dice does not drop. Selection uses the validation split
only; the test split is looked at once, at the end, for the report.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search import stopping
from search.errors import SoupError
from search.lazy import LazyModule
from search.progress import versus
from search.reference import reference
from search.results import log_new_results, log_parent_scores, retire_results
from search.runfolder import SOUP_LINK, RunFolder, Scorer, use_every_core
from search.storage import load_run_checkpoint
from search.summary import BestRecord, ScoredRecord, SoupRecord, Summary, TrialRecord
from train_fn.data import PatchSampler
from train_fn.files import write_json
from train_fn.models import has_batchnorm, refresh_batchnorm

if TYPE_CHECKING:  # torch is imported where tensors are made: the CLI starts without it
    import torch

    Weights = dict[str, torch.Tensor]
    Source = Weights | Callable[[], Weights]  # weights, or a loader called when needed

# torch loads when a soup is made, not before (search.lazy)
checkpoint_io = LazyModule("train_fn.checkpoint")
loop = LazyModule("train_fn.loop")

logger = logging.getLogger(__name__)

LINEAGE_KEYS = ("architecture", "init_fingerprint", "ancestor")




def check_ingredients(states: dict[str, dict[str, Any]]) -> None:
    """Refuse checkpoints that do not share architecture and initial weights, naming the
    trials and the difference (averaging nets from different inits destroys them)."""
    items = list(states.items())
    ref_id, ref = items[0]
    for trial_id, state in items[1:]:
        for key in LINEAGE_KEYS:
            if state.get(key) != ref.get(key):
                if key == "ancestor":
                    what = f"{_ancestor(ref.get(key))} vs {_ancestor(state.get(key))}"
                elif key == "architecture":
                    diff = {k: (ref[key].get(k), v) for k, v in state[key].items()
                            if ref[key].get(k) != v}
                    what = ", ".join(f"{k} {a} vs {b}" for k, (a, b) in diff.items())
                else:
                    what = (f"initial weights {ref.get(key)} vs {state.get(key)} (init_seed "
                            f"{ref.get('init_seed')} vs {state.get('init_seed')})")
                raise SoupError(
                    f"cannot soup trial {trial_id} with trial {ref_id}: different {key}: {what}"
                )


def _ancestor(record: dict[str, Any] | None) -> str:
    if not record:
        return "none (trained from its initial weights)"
    return f"{record['kind']} {record['fingerprint']} ({record['epochs']} epochs)"


def _load(source: Source) -> Weights:
    return source() if callable(source) else source


class RunningSum:
    """A running sum of state dicts: averaging K models holds one sum and one model at a time,
    whatever K. Floating tensors are summed in place in float32 (float64 ones in float64): the
    soup of K models then peaks at about two models' memory (the sum, and the model being
    added or the result), and float32's rounding over K <= 100 additions (relative 1e-5 at
    worst) is far below what separates the ingredients. Integer buffers (counters, indices)
    are copied from the first model."""

    def __init__(self):
        self.total: dict[str, torch.Tensor] = {}
        self.first: Weights | None = None
        self.count = 0

    def add(self, weights: Weights) -> None:
        for key, tensor in weights.items():
            if tensor.is_floating_point():
                if key in self.total:
                    self.total[key].add_(tensor)  # in place (half types promoted): no copy
                else:
                    # float32 or float64 as it is; half types to float32 (always a copy).
                    self.total[key] = (tensor.clone() if tensor.element_size() >= 4
                                       else tensor.float())
        if self.first is None:
            self.first = {k: v.clone() for k, v in weights.items()
                          if not v.is_floating_point()}
            self.dtypes = {k: v.dtype for k, v in weights.items()}
            self.order = list(weights)
        self.count += 1

    def mean(self, extra: Weights | None = None) -> Weights:
        """The average, or the average with `extra` added (without keeping it)."""
        n = self.count + (extra is not None)
        if n == 0:
            raise SoupError("nothing to average")
        out = {}
        for key in self.order:
            if key in self.total:
                value = self.total[key].add(extra[key]) if extra is not None \
                    else self.total[key]
                out[key] = (value / n).to(self.dtypes[key])
            else:
                out[key] = self.first[key].clone()
        return out


def average(models) -> Weights:
    """Uniform average of state dicts (or loaders of them), streamed through a running sum."""
    total = RunningSum()
    for source in models:
        total.add(_load(source))
    return total.mean()


def greedy(candidates: list[tuple[str, Source]], score: Callable[[Weights], float]
           ) -> tuple[list[str], Weights, list[dict[str, Any]]]:
    """Greedy soup of candidates already sorted best first. Returns the kept ids, the soup's
    weights and one step record per candidate (its score if added, and whether it was).
    Candidates are loaded one at a time into a running sum of the kept ones."""
    total = RunningSum()
    kept_ids = [candidates[0][0]]
    total.add(_load(candidates[0][1]))
    soup = total.mean()
    best = score(soup)
    steps = [{"trial_id": kept_ids[0], "val_dice": best, "accepted": True}]
    for trial_id, source in candidates[1:]:
        stopping.check()
        weights = _load(source)
        trial_soup = total.mean(extra=weights)
        value = score(trial_soup)
        accepted = value >= best
        steps.append({"trial_id": trial_id, "val_dice": value, "accepted": accepted})
        # Ties are kept (value >= best); the precision shows a near-tie for what it is.
        logger.info("greedy soup: %s %s (val_dice %s)", trial_id,
                    "accepted" if accepted else "rejected", versus(value, best))
        if accepted:
            kept_ids.append(trial_id)
            total.add(weights)
            soup, best = trial_soup, value
    return kept_ids, soup, steps


def soup_set(run_dir: Path) -> Path:
    """A new, empty folder for one soup step's outputs, beside the run's current set."""
    path = run_dir / f".soup-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    path.mkdir()
    return path


def switch_soups(run_dir: Path, summary: Summary, new_set: Path | None) -> None:
    """Make `new_set` the run's soups, all at once. summary.json is the manifest: its one
    atomic write switches from the old set to the new one (its `soups` name the new set's
    files). The `soup` link then follows it and the old set goes. A kill at any point leaves
    summary.json naming a complete set; `tidy` repairs the link and deletes the rest."""
    summary.soup_set = new_set.name if new_set else None
    RunFolder(run_dir).write_summary(summary)
    tidy(run_dir)


def tidy(run_dir: Path) -> None:
    """Bring a run folder back to what its summary.json names: the `soup` link points at the
    named set, other soup sets and temporary files of dead processes are removed."""
    folder = RunFolder(run_dir)
    named = folder.summary().soup_set if folder.is_finished() else None
    link = run_dir / SOUP_LINK
    if named and (run_dir / named).is_dir():
        if not (link.is_symlink() and os.readlink(link) == named):
            tmp = run_dir / f".{SOUP_LINK}.link-{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(named)
            if link.is_dir() and not link.is_symlink():  # a run of an older segtune
                link.rename(run_dir / f".soup-old-{os.getpid()}")
            os.replace(tmp, link)
    elif link.is_symlink():
        link.unlink()
    for old in run_dir.glob(".soup-*"):
        if old.name != named and old.is_dir() and _dead(old.name.rsplit("-", 1)[-1]):
            shutil.rmtree(old, ignore_errors=True)
    for tmp in run_dir.rglob(".*.tmp-*"):  # left by a kill inside an atomic write
        if tmp.is_file() and _dead(tmp.name.rsplit("-", 1)[-1]):
            tmp.unlink(missing_ok=True)


def _dead(pid: str) -> bool:
    """Whether the process that named a temporary file is gone (or it is this one's own
    leftover from an earlier step: a soup step runs once per process at a time)."""
    if not pid.isdigit():
        return True
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def candidates(run_dir: Path, summary: Summary) -> list[TrialRecord]:
    """The trials that may be the best or an ingredient, best validation Dice first: those
    with a checkpoint and a score. A trial that errored is listed in the summary but not used:
    its last checkpoints may predate whatever went wrong, but nothing says they are sound."""
    ranked = [t for t in summary.trials if t.usable]
    if not ranked:
        errors = sorted({t.error for t in summary.trials if t.error})
        diverged = sum(1 for t in summary.trials if t.status == "stopped: non-finite loss")
        raise SoupError(f"{run_dir}: no trial finished an epoch with a checkpoint without "
                        "erroring" + (f"; {diverged} of {len(summary.trials)} trial(s) "
                                      "stopped on a non-finite (NaN or infinite) training "
                                      "loss: lower optimizer.lr's range or set "
                                      "train.grad_clip" if diverged else "")
                        + (f"; the trials' errors: {' | '.join(errors)}" if errors else ""))
    return sorted(ranked, key=lambda t: t.val_dice, reverse=True)


AVERAGED = ":avg"  # an ingredient id's suffix: the trial's averaged weights (train.average)


def with_averages(ranked: list[TrialRecord]) -> list[TrialRecord]:
    """The trials and, for each whose checkpoint holds averaged weights, those as one more
    ingredient (`<trial>:avg`, scored by their validation Dice), best validation Dice first."""
    out = list(ranked)
    for t in ranked:
        if t.avg_val_dice is not None:
            out.append(replace(t, trial_id=t.trial_id + AVERAGED, val_dice=t.avg_val_dice,
                               weights="averaged"))
    return sorted(out, key=lambda t: t.val_dice, reverse=True)


def sibling_candidates(summary: Summary, best: TrialRecord) -> list[TrialRecord]:
    """The soup's candidates with siblings (search.siblings): the best trial and its finished
    siblings with a checkpoint, best validation Dice first."""
    kept = [s for s in summary.siblings or [] if s.status == "finished"
            and s.checkpoint and s.val_dice is not None]
    return sorted([best, *kept], key=lambda t: t.val_dice, reverse=True)


def weights_of(run_dir: Path, ingredient: TrialRecord) -> Weights:
    """An ingredient's weights: its checkpoint's `model`, or its `averaged` weights."""
    state = load_run_checkpoint(run_dir, ingredient.checkpoint, mmap=True)
    return state["averaged"]["model"] if ingredient.weights == "averaged" \
        else state["model"]


def readable(run_dir: Path, ranked: list[TrialRecord], need: int) -> list[TrialRecord]:
    """The first `need` trials, best first, whose checkpoint loads; one that does not (cut
    short by a full disk or a kill while Ray copied it) is skipped with a warning."""
    kept = []
    for trial in ranked:
        try:
            load_run_checkpoint(run_dir, trial.checkpoint, mmap=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is skipped alike
            logger.warning("trial %s: checkpoint %s cannot be read (%s); skipped",
                           trial.trial_id, trial.checkpoint, str(err).splitlines()[0][:200])
            continue
        kept.append(trial)
        if len(kept) == need:
            break
    if not kept:
        raise SoupError(f"{run_dir}: no trial's checkpoint can be read (each is cut short or "
                        "missing)")
    return kept


def finish(run_dir: str | Path, top_k: int | None = None, soup: bool = True,
           tracker=None) -> Summary:
    """Score the best trial on the test split and, with `soup`, build the uniform and greedy
    soups of the top-k trials, score them too and save them as a new soup set. Updates
    `<run_dir>/summary.json`; logs to `tracker`'s parent run when given."""

    folder = RunFolder(run_dir)
    summary = folder.summary()  # not a finished run: one line, no summary.json
    tidy(folder.path)  # what a killed earlier step left
    if tracker is not None:  # ... in MLflow too
        repair_results(tracker, folder, summary)
    spec = folder.spec
    top_k = top_k or spec.soup.top_k
    ranked = readable(folder.path, candidates(folder.path, summary), top_k if soup else 1)
    use_every_core()
    judge = folder.scorer()
    test = folder.volumes("test")
    hd = bool(spec.train.val_hd95)  # off: the user turned HD95 off as too slow

    best_weights, summary.best = score_best(folder, ranked[0], judge, test, hd)
    weights, out = {"best": best_weights}, None
    summary.reference = None  # an earlier soup step's
    if soup:
        chosen = (sibling_candidates(summary, ranked[0]) if summary.siblings
                  else with_averages(ranked)[:top_k])
        check_lineage(folder, chosen)
        # The new set is written beside the current one and switched to at the end.
        out = soup_set(folder.path)
        made = soup_trials(folder, chosen, judge)
        for kind, (soup_weights, record) in made.items():
            score_on_test(record, judge(soup_weights, test, hd))
            weights[kind] = soup_weights
        write_soup_set(folder, out, chosen, made, top_k)
        summary.reference = held_out_reference(folder, judge, test, chosen, weights, made,
                                               ranked[0].trial_id)
    summary.soups = {k: r for k, (_, r) in made.items()} if soup else None
    # MLflow is part of the switch: the new result runs first (tagged with this step), then
    # summary.json switches, then the old runs go. A kill or a full disk anywhere leaves the
    # runs of the set summary.json names, and `repair_results` retires the rest.
    summary.result_set = out.name if out else f"results-{time.time_ns()}-{os.getpid()}"
    if tracker is not None:
        log_new_results(tracker, folder, summary, weights, judge.model)
    stopping.check()  # before the new results become the run's
    switch_soups(folder.path, summary, out)
    if tracker is not None:
        retire_results(tracker, summary.result_set)
        log_parent_scores(tracker, folder, summary)
    return summary


def repair_results(tracker, folder: RunFolder, summary: Summary) -> None:
    """Retire the MLflow result runs an interrupted soup step left beside (or instead of)
    those of the set summary.json names, and put its scores back on the parent run."""
    current = summary.result_set
    if current is None:
        return  # an older run: its result runs carry no set
    try:
        gone = retire_results(tracker, current, untagged=False)
        if gone:
            logger.warning("MLflow: retired %d result run(s) an interrupted soup step left; "
                           "the runs of %s stay", gone, current)
            log_parent_scores(tracker, folder, summary)
    except Exception as err:  # noqa: BLE001 - the step itself logs again (or says why not)
        logger.warning("MLflow: could not tidy the result runs (%s)", err)


def held_out_reference(folder: RunFolder, judge: Scorer, test: list, chosen: list[TrialRecord],
                       weights: dict[str, Weights], made: dict[str, tuple[Weights, SoupRecord]],
                       best_id: str) -> dict[str, Any]:
    """The best trial, the soups and the prediction ensemble of the soup's candidates, per
    test case with spread and bootstrap intervals (search.reference)."""
    members = [weights_of(folder.path, t) for t in chosen]
    models = {"best": [weights["best"]], **{k: [weights[k]] for k in made},
              "ensemble": members}
    ingredients = {"best": [best_id],
                   **{k: r.ingredients for k, (_, r) in made.items()},
                   "ensemble": [t.trial_id for t in chosen]}
    return reference(judge, test, list(folder.split["test"]), models, ingredients)


def score_best(folder: RunFolder, best: TrialRecord, judge: Scorer, test: list, hd: bool
               ) -> tuple[Weights, BestRecord]:
    """The best trial's weights and its summary.json record, scored on the test split."""
    weights = load_run_checkpoint(folder.path, best.checkpoint)["model"]
    record = BestRecord(trial_id=best.trial_id, config=best.config, val_dice=best.val_dice,
                        val_dice_per_class=best.val_dice_per_class, checkpoint=best.checkpoint)
    score_on_test(record, judge(weights, test, hd))
    return weights, record


def score_on_test(record: ScoredRecord,
                  scores: tuple[float, dict[str, float], dict[str, float]]) -> None:
    """Put a model's scores on the test split (`Scorer`'s) into its record."""
    record.test_dice, record.test_dice_per_class, record.test_hd95_per_class = scores


def soup_pair(sources: list[tuple[str, Source]], score: Callable[[Weights], float],
              refresh: Callable[[Weights], Weights]
              ) -> dict[str, tuple[Weights, list[str], list[dict[str, Any]] | None]]:
    """The uniform and greedy soups of `sources` (sorted best first): {kind: (weights,
    ingredients, the greedy steps or None)}. Averaged weights have no BatchNorm statistics of
    their own: `refresh` recomputes them on each soup, and on each greedy candidate before
    `score` judges it. The search's soups and the per-fold soups are both made here."""
    uniform = refresh(average([w for _, w in sources]))
    kept, greedy_w, steps = greedy(sources, lambda w: score(refresh(w)))
    return {"uniform": (uniform, [tid for tid, _ in sources], None),
            "greedy": (refresh(greedy_w), kept, steps)}


def batchnorm_refresh(judge: Scorer, cases: list[str]) -> Callable[[Weights], Weights]:
    """A function that gives weights the BatchNorm statistics of `judge`'s network on fixed
    patches of the training `cases` (sampled once, when first needed); the identity for the
    instance- and group-norm networks."""
    model, folder = judge.model, judge.folder
    if not has_batchnorm(model):
        return lambda weights: weights
    spec, patches = folder.spec, []

    def refresh(weights: Weights) -> Weights:
        if not patches:
            sampler = PatchSampler(folder.volumes(cases, labels=False), spec.train.patch_size,
                                   spec.train.seed, folder.dataset.num_classes)
            patches.extend(x for x, _ in sampler.epoch(loop.BN_EPOCH, 8, spec.train.batch_size))
        model.load_state_dict(weights)
        refresh_batchnorm(model, patches, judge.device)
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    return refresh


def check_lineage(folder: RunFolder, chosen: list[TrialRecord]) -> None:
    """Refuse to soup trials of different architectures or initial weights (read from their
    checkpoints one at a time, their tensors not read)."""
    lineages = {}
    for t in chosen:
        state = load_run_checkpoint(folder.path, t.checkpoint, mmap=True)
        lineages[t.trial_id] = {k: state.get(k) for k in (*LINEAGE_KEYS, "init_seed")}
        del state
    check_ingredients(lineages)


def soup_trials(folder: RunFolder, chosen: list[TrialRecord], judge: Scorer
                ) -> dict[str, tuple[Weights, SoupRecord]]:
    """The uniform and greedy soups of the `chosen` trials (best first), judged on the
    validation split: {kind: (weights, its summary.json record)}."""
    # From an object store, each is downloaded when needed and its copy deleted after.
    sources = [(t.trial_id, (lambda t=t: weights_of(folder.path, t))) for t in chosen]
    val = folder.volumes("val")  # the validation cases only judge soups
    made = soup_pair(sources, lambda w: judge(w, val, hd95=False)[0],
                     batchnorm_refresh(judge, folder.split["train"]))
    out = {}
    for kind, (weights, kept, steps) in made.items():
        dice, per_class, _ = judge(weights, val, hd95=False)
        out[kind] = (weights, SoupRecord(ingredients=kept, val_dice=dice,
                                         val_dice_per_class=per_class, steps=steps))
    return out


def write_soup_set(folder: RunFolder, out: Path, chosen: list[TrialRecord],
                   made: dict[str, tuple[Weights, SoupRecord]], top_k: int) -> None:
    """Save the soups into the new soup set `out` (made by `soup_set` beside the current one;
    switched to by `switch_soups`): one checkpoint per soup and `soup.json`. Each soup's
    record gets the path of its weights."""
    best = load_run_checkpoint(folder.path, chosen[0].checkpoint, mmap=True)
    lineage = {k: best.get(k) for k in LINEAGE_KEYS}
    # Settings as values, like a trial's checkpoint, not the run's search space: a soup is
    # loaded (predict, evaluate) with the settings of its best ingredient, which every soup
    # starts from; each ingredient's searched values are kept too.
    best_config = best["config"]
    del best
    by_id = {t.trial_id: t for t in chosen}
    for kind, (weights, record) in made.items():
        record.weights = f"{out.name}/{kind}/checkpoint.pt"
        checkpoint_io.save_checkpoint(out / kind, {
            "model": weights, "config": best_config, "ingredients": record.ingredients,
            "ingredient_configs": {tid: by_id[tid].config for tid in record.ingredients},
            **lineage})
    write_json(out / "soup.json", {"top_k": top_k, "candidates": [
        {"trial_id": t.trial_id, "val_dice": t.val_dice} for t in chosen],
        **{kind: record.to_json() for kind, (_, record) in made.items()}})
