"""Selection in `search.tuner`: a trial's record is its best epoch (score and checkpoint), an
errored trial never becomes the best or an ingredient, ASHA stops a weak trial and TPE
proposes. A fake ResultGrid where the search is not the point; a real Tune run (a toy
trainable in place of training) and the real Optuna searcher where it is."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import ROOT, shared_ray

from search.soup import candidates
from search.spec import load_spec
from search.summary import Summary

# Three trials (ranking, stopping), each with several epochs whose best is not the last.
SMOKE = ROOT / "spaces" / "smoke.yaml"


def _spec(*overrides: str):
    return load_spec(SMOKE, ["train.epochs=4", *overrides])


def _result(name, epochs, best_checkpoints, error=None):
    """A Ray `Result` as `trial_records` reads it."""
    return SimpleNamespace(
        metrics={"trial_id": name, "epoch": epochs},
        path=f"/runs/exp/trial_{name}", config={"optimizer.lr": 0.01, "seed_x": 1},
        best_checkpoints=[(SimpleNamespace(path=f"/runs/exp/trial_{name}/checkpoint_{e:06d}"),
                           {"val_dice": d, "epoch": e, "val_dice/heart": d / 2})
                          for e, d in best_checkpoints],
        error=error)


def test_a_record_is_the_trials_best_epoch_not_its_last():
    from search.tuner import trial_records

    # Ray keeps checkpoints in its own order (by score, then time): the best is not first
    # and not last, and the trial's last epoch is worse than its best.
    results = [
        _result("a", 4, [(3, 0.6), (2, 0.8), (4, 0.5)]),
        _result("b", 4, [(1, 0.3), (4, 0.7), (3, 0.65)]),
        _result("c", 2, [(2, 0.2), (1, 0.4)]),
    ]
    records = [r.to_json() for r in trial_records(results, "/runs/exp", _spec())]
    assert [(r["trial_id"], r["val_dice"], r["best_epoch"], r["checkpoint"]) for r in records] \
        == [("a", 0.8, 2, "trial_a/checkpoint_000002"),
            ("b", 0.7, 4, "trial_b/checkpoint_000004"),
            ("c", 0.4, 1, "trial_c/checkpoint_000001")]
    assert records[0]["val_dice_per_class"] == {"heart": 0.4}
    assert [(r["status"], r["epochs"]) for r in records] == [
        ("completed", 4), ("completed", 4), ("stopped", 2)]
    assert records[0]["config"] == {"optimizer.lr": 0.01}


def test_an_errored_trial_ranked_first_is_not_the_best_or_an_ingredient():
    from search.tuner import trial_records

    error = RuntimeError("ray::ImplicitFunc.train()\nValueError: the loss is NaN")
    results = [_result("good", 4, [(3, 0.7)]), _result("err", 1, [(1, 0.99)], error=error),
               _result("ok", 4, [(2, 0.5)])]
    records = [r.to_json() for r in trial_records(results, "/runs/exp", _spec())]
    # Listed (first by its score, with its error) but never chosen.
    assert records[0]["trial_id"] == "err" and records[0]["status"] == "error"
    assert records[0]["error"] == "ValueError: the loss is NaN"
    ranked = candidates(Path("run"), Summary.from_json({"trials": records}))
    assert [t.trial_id for t in ranked] == ["good", "ok"]


# --- a real Tune run of make_tuner, with a toy trainable -------------------------------------

# Quality of the n-th trial to start (by start order, through files): the first errors after
# a record score; the third is weak and is stopped by ASHA at its rung (epoch 2).
QUALITY = {0: None, 1: 0.8, 2: 0.3, 3: 0.9}
SHAPE = [0.5, 1.0, 0.8, 0.6]  # a trial's val_dice over epochs / its quality: best at epoch 2


def toy_trainable(config, base, split, data_root):
    import tempfile

    from ray import tune

    folder = Path(data_root)
    n = 0
    while True:  # the trial's start order, claimed atomically
        try:
            os.close(os.open(folder / f"start_{n}", os.O_CREAT | os.O_EXCL))
            break
        except FileExistsError:
            n += 1
    quality = QUALITY[n]
    trial_id = tune.get_context().get_trial_id()
    for epoch in range(1, base.train.epochs + 1):
        dice = 0.99 if quality is None else quality * SHAPE[epoch - 1]
        with tempfile.TemporaryDirectory() as ck:
            (Path(ck) / "state.json").write_text(json.dumps({"epoch": epoch, "order": n}))
            tune.report({"val_dice": dice, "epoch": epoch, "trial_id": trial_id},
                        checkpoint=tune.Checkpoint.from_directory(ck))
        if quality is None:
            raise ValueError("the loss is NaN")


@pytest.fixture(scope="module")
def toy_search(tmp_path_factory):
    import ray
    from ray import cloudpickle

    import search.trainable as worker
    import search.tuner as tuner
    from search import stopping

    tmp = tmp_path_factory.mktemp("toy")
    spec = _spec("search.num_trials=4", "search.max_concurrent=1", "search.grace_period=2",
                 "search.reduction_factor=2", "search.max_failures=0")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    mp = pytest.MonkeyPatch()
    mp.setattr(worker, "trainable", toy_trainable)
    ray.init(address=shared_ray())  # the session's Ray: no start of one of its own
    try:
        toy = tuner.make_tuner(spec, {"train": [], "val": [], "test": []}, str(tmp), "exp",
                               tmp / "runs", callbacks=[])
        results = stopping.tune_fit(toy.fit)  # as the search does: SIGINT's handler put back
        records = [r.to_json() for r in tuner.trial_records(results, tmp / "runs" / "exp", spec)]
    finally:
        ray.shutdown()
        mp.undo()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    for r in records:
        state = tmp / "runs" / "exp" / r["checkpoint"] / "state.json"
        r["kept"] = json.loads(state.read_text())
    return records


def test_a_real_search_keeps_and_records_each_trials_best_epoch(toy_search):
    by_order = {r["kept"]["order"]: r for r in toy_search}
    assert sorted(by_order) == [0, 1, 2, 3]
    for n in (1, 2, 3):
        r = by_order[n]
        assert r["val_dice"] == pytest.approx(QUALITY[n])  # epoch 2, not the last epoch
        assert r["best_epoch"] == 2 and r["kept"]["epoch"] == 2


def test_a_real_search_stops_the_weak_trial_at_its_rung(toy_search):
    by_order = {r["kept"]["order"]: r for r in toy_search}
    assert [(by_order[n]["status"], by_order[n]["epochs"]) for n in (1, 2, 3)] == [
        ("completed", 4), ("stopped", 2), ("completed", 4)]


def test_a_real_search_never_chooses_its_errored_trial(toy_search):
    assert toy_search[0]["kept"]["order"] == 0 and toy_search[0]["val_dice"] == 0.99
    assert toy_search[0]["status"] == "error"
    assert toy_search[0]["error"] == "ValueError: the loss is NaN"
    ranked = candidates(Path("run"), Summary.from_json({"trials": toy_search}))
    assert [t.extra["kept"]["order"] for t in ranked] == [3, 1, 2]


# --- TPE proposes ---------------------------------------------------------------------------

def _asked_lrs(target: float) -> list[float]:
    """log10 of the lr of each configuration the real searcher of a 20-trial search asks,
    told the results of an objective whose best is at log10(lr) = `target`."""
    import optuna

    from search.trials import budget
    from search.tuner import make_searcher

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = _spec("search.num_trials=20")
    searcher = make_searcher(spec, None, "s")
    asked = []
    for i in range(20):
        x = math.log10(searcher.suggest(f"t{i}")["optimizer.lr"])  # in [-3, -1]
        asked.append(x)
        searcher.on_trial_complete(f"t{i}", {"val_dice": 1 - abs(x - target),
                                             "epoch": budget(spec),
                                             "training_iteration": budget(spec)})
    return asked


def test_tpe_proposes_from_the_results_after_its_random_start():
    low, high = _asked_lrs(-3.0), _asked_lrs(-1.0)
    # The seeded random start (20 // 3 = 6 trials) is the same whatever the results ...
    assert low[:6] == high[:6]
    # ... then TPE proposes where the results were good (random: a mean of -2 for both).
    assert sum(low[-10:]) / 10 < -2.25
    assert sum(high[-10:]) / 10 > -1.75
