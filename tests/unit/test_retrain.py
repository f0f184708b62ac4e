"""retrain: the per-fold soups and the crossval folds, without Ray (the jobs are faked)."""

from __future__ import annotations

import json

import pytest
import torch

from search.spec import Spec, dump_spec
from train_fn.datasets import find_cases, fold_splits, split_cases

BATCHNORM = {
    "data": {"source": "phantom", "cases": 6},
    "model": {"name": "dynunet", "channels": [4, 8, 16], "strides": [1, 2, 2], "norm": "batch"},
    "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "patch_size": [16, 16, 8],
              "device": "cpu", "threads": 1},
}


def write_run(folder, tree, data_root, split, **info):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.yaml").write_text(dump_spec(Spec.model_validate(tree)))
    (folder / "run.json").write_text(json.dumps({"name": folder.name, "data_root": str(data_root),
                                                 "split": split, **info}))
    return folder


@pytest.fixture
def split(phantom_root):
    return split_cases([c.case_id for c in find_cases(phantom_root)], 0.2, 0.2, 0)


def test_fold_soups_refresh_batchnorm_statistics(tmp_path, phantom_root, split, monkeypatch):
    """Averaged weights have no BatchNorm statistics of their own: the per-fold soups (and
    each greedy candidate) are judged with statistics recomputed on the fold's training
    patches, as the search's soups are, never with the ingredients' averaged ones."""
    from search.retrain import fold_soups
    from train_fn import metrics
    from train_fn.models import build_model

    run = write_run(tmp_path / "run", BATCHNORM, phantom_root, split)
    net = build_model(Spec.model_validate(BATCHNORM).model, 1, 5)  # the phantom: CT, 4 organs
    stats = [k for k in net.state_dict() if k.endswith("running_mean")]
    assert stats
    gen = torch.Generator().manual_seed(0)
    ingredients = []
    for _ in range(2):
        weights = {k: v + 0.01 * torch.randn(v.shape, generator=gen)
                   if v.is_floating_point() else v.clone() for k, v in net.state_dict().items()}
        for key in stats:  # statistics no real patch gives
            weights[key] = torch.full_like(weights[key], 100.0)
        ingredients.append(weights)
    judged = []

    def fake_evaluate(model, volumes, train, device, regions, with_hd95=True):
        judged.append(max(float(model.state_dict()[k].abs().max()) for k in stats))
        return 0.5, {"r": 0.5}, {"r": 1.0} if with_hd95 else {}

    monkeypatch.setattr(metrics, "evaluate", fake_evaluate)
    splits = fold_splits(split, 2, 0)
    result = fold_soups(run, {0: [("a", 0.6, lambda: ingredients[0]),
                                  ("b", 0.5, lambda: ingredients[1])]}, splits)
    assert set(result) == {"uniform", "greedy"}
    # greedy: 2 candidates; then each soup once: 4 judgements, none with the stale 100s.
    assert len(judged) == 4
    assert all(value < 50 for value in judged), judged


def test_crossval_folds_are_drawn_with_the_runs_split_seed(tmp_path, phantom_root, split,
                                                           monkeypatch):
    """The folds come from the run's spec (data.split_seed), as the trials' folds do
    (cv.mode every), whatever run.json holds (a folder of an older segtune has no
    input_spec)."""
    import search.retrain as retrain

    tree = {**BATCHNORM, "data": {**BATCHNORM["data"], "split_seed": 7}}
    run = write_run(tmp_path / "run", tree, phantom_root, split)
    (run / "summary.json").write_text(json.dumps({"trials": [
        {"trial_id": "a", "status": "completed", "val_dice": 0.5, "config": {}}]}))
    seen = {}

    def fake_jobs(run_dir, kind, jobs, name):
        seen.update(jobs)
        (run_dir / name).mkdir()
        return {job: {**{k: v for k, v in spec.items() if k != "split"}, "status": "finished",
                      "checkpoint": None, "scores": {"final/val_dice": 0.5}}
                for job, spec in jobs.items()}

    monkeypatch.setattr(retrain, "run_jobs", fake_jobs)
    retrain.crossval(run, 3)
    want, other = fold_splits(split, 3, 7), fold_splits(split, 3, 0)
    assert want != other  # the two seeds give other folds: the test can tell them apart
    assert [seen[f"fold{k}-a"]["split"] for k in range(3)] == want
    assert json.loads((run / "splits.json").read_text()) == want


def test_repeat_table_keeps_label_order_and_gives_mean_std_and_n():
    from search.retrain import aggregate, format_results

    jobs = [{"final/test_dice/heart": 0.9, "final/test_dice/aorta": 0.7,
             "final/test_dice": 0.8},
            {"final/test_dice/heart": 0.8, "final/test_dice/aorta": 0.5,
             "final/test_dice": 0.65}]
    stats = aggregate(jobs, "final/test_dice")
    assert list(stats) == ["heart", "aorta", "mean"]  # as reported, not alphabetical
    text = format_results({"kind": "repeat", "seeds": [1, 2], "test_dice": stats}, "test")
    assert "mean ± std (n) over 2 seeds" in text
    # std over seeds with ddof 1 (statistics.stdev): 0.0707, 0.1414
    assert "| single | Dice | 0.850 ± 0.071 (2) | 0.600 ± 0.141 (2) |" in text, text
