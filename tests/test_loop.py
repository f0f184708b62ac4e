from __future__ import annotations

import pytest

from search.spec import Spec
from train_fn.data import CLASS_NAMES, find_cases, split_cases
from train_fn.loop import resume_state, run_plain, train

TINY = {
    "model": {"channels": [4, 8, 16], "strides": [2, 2]},
    "optimizer": {"name": "novograd", "lr": 0.05, "grad_averaging": True},
    "train": {"epochs": 2, "steps_per_epoch": 2, "patch_size": [32, 32, 16], "threads": 1,
              "device": "cpu"},
}


@pytest.fixture
def split(phantom_root):
    return split_cases([c.case_id for c in find_cases(phantom_root)], 0.2, 0.2, 0)


def test_plain_run_reports_every_epoch_with_a_checkpoint(phantom_root, split, tmp_path):
    spec = Spec.model_validate(TINY)
    reports = []
    last = train(spec, split, phantom_root, report=lambda m, s: reports.append((m, s)))
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    metrics, state = reports[-1]
    assert metrics == last
    assert set(metrics) >= {"loss", "grad_norm", "val_dice",
                            *(f"val_dice/{c}" for c in CLASS_NAMES),
                            *(f"lr/{b}" for b in ("early_encoder", "middle", "head"))}
    assert 0.0 <= metrics["val_dice"] <= 1.0 and metrics["grad_norm"] > 0
    assert state["epoch"] == 2 and state["init_seed"] == 0 and state["init_fingerprint"]
    assert state["architecture"]["channels"] == [4, 8, 16]


def test_resume_continues_where_the_checkpoint_stopped(phantom_root, split, tmp_path):
    spec = Spec.model_validate(TINY)
    run_plain(spec, split, phantom_root, tmp_path)
    once = resume_state(tmp_path / "epoch_002")
    longer = Spec.model_validate({**TINY, "train": {**TINY["train"], "epochs": 3}})
    seen = []
    train(longer, split, phantom_root, report=lambda m, s: seen.append(m["epoch"]),
          resume=resume_state(tmp_path / "epoch_001"))
    assert seen == [2, 3]
    # Same init, same data order: resuming from epoch 1 reproduces epoch 2.
    reports = []
    train(spec, split, phantom_root, report=lambda m, s: reports.append(s),
          resume=resume_state(tmp_path / "epoch_001"))
    assert reports[-1]["metrics"]["loss"] == pytest.approx(once["metrics"]["loss"], rel=1e-4)


def test_resume_refuses_other_initial_weights(phantom_root, split, tmp_path):
    run_plain(Spec.model_validate(TINY), split, phantom_root, tmp_path)
    other = Spec.model_validate({**TINY, "model": {**TINY["model"], "init_seed": 1}})
    with pytest.raises(ValueError, match="different initial weights"):
        train(other, split, phantom_root, resume=resume_state(tmp_path / "epoch_001"))
