"""Mixed precision, torch.compile and per-epoch (not per-step) host syncs in the loop."""

from __future__ import annotations

import pytest
import torch

from search.spec import Spec
from train_fn.datasets import find_cases, split_cases
from train_fn.loop import autocast_dtype, train

TINY = {
    "model": {"channels": [4, 8, 16], "strides": [2, 2]},
    "optimizer": {"name": "adamw", "lr": 0.003},
    "train": {"epochs": 2, "steps_per_epoch": 3, "patch_size": [32, 32, 16], "threads": 1,
              "device": "cpu"},
}


def tiny(**train) -> Spec:
    return Spec.model_validate({**TINY, "train": {**TINY["train"], **train}})


@pytest.fixture
def split(phantom_root):
    return split_cases([c.case_id for c in find_cases(phantom_root)], 0.2, 0.2, 0)


@pytest.mark.parametrize(("precision", "device", "dtype"), [
    ("fp32", "cpu", None),
    ("bf16", "cpu", torch.bfloat16),
    ("fp32", "cuda", None),
    ("bf16", "cuda", torch.bfloat16),
    ("fp16", "cuda", torch.float16),
])
def test_autocast_dtype(precision, device, dtype):
    assert autocast_dtype(precision, torch.device(device)) is dtype


def test_fp16_on_cpu_is_refused_before_any_work(phantom_root, split):
    with pytest.raises(ValueError, match=r"train.precision: fp16 needs a CUDA device, got cpu "
                                         r"\(use bf16 or fp32\)"):
        train(tiny(precision="fp16"), split, phantom_root)


def test_unknown_precision_is_a_spec_error():
    with pytest.raises(ValueError, match="precision"):
        tiny(precision="fp8")


def test_bf16_on_cpu_trains_close_to_fp32(phantom_root, split):
    runs = {}
    for precision in ("fp32", "bf16"):
        states = []
        train(tiny(precision=precision), split, phantom_root,
              report=lambda m, s, out=states: out.append(s))
        runs[precision] = states
    fp32, bf16 = runs["fp32"], runs["bf16"]
    for a, b in zip(fp32, bf16, strict=True):
        assert b["metrics"]["loss"] == pytest.approx(a["metrics"]["loss"], rel=0.02)
        assert b["metrics"]["loss"] != a["metrics"]["loss"]  # autocast did run in bf16
    # The weights stay fp32 (autocast computes in bf16, the optimizer updates fp32 masters).
    assert all(v.dtype == torch.float32 for v in bf16[-1]["model"].values()
               if v.is_floating_point())
    assert bf16[-1]["scaler"] == {}  # no loss scaling for bf16


def test_epoch_loss_and_grad_norm_equal_a_per_step_recomputation(phantom_root, split,
                                                                  monkeypatch):
    """The loop sums on the device and syncs once per epoch; the figures it reports must be
    the means of the per-step values read one by one."""
    import train_fn.loop as loop

    losses, norms = [], []
    real_loss, real_clip = loop.deep_supervision_loss, torch.nn.utils.clip_grad_norm_

    def spy_loss(*args):
        loss = real_loss(*args)
        losses.append(float(loss.detach()))
        return loss

    def spy_clip(*args, **kwargs):
        norm = real_clip(*args, **kwargs)
        norms.append(float(norm))
        return norm

    monkeypatch.setattr(loop, "deep_supervision_loss", spy_loss)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy_clip)
    reports = []
    train(tiny(), split, phantom_root, report=lambda m, s: reports.append(m))
    steps = TINY["train"]["steps_per_epoch"]
    assert len(losses) == len(norms) == 2 * steps
    for epoch, metrics in enumerate(reports):
        window = slice(epoch * steps, (epoch + 1) * steps)
        assert metrics["loss"] == pytest.approx(sum(losses[window]) / steps, rel=1e-6)
        assert metrics["grad_norm"] == pytest.approx(sum(norms[window]) / steps, rel=1e-6)
    assert reports[0]["loss"] != reports[1]["loss"]


def test_compile_trains_the_compiled_model_and_saves_plain_weights(phantom_root, split,
                                                                   monkeypatch):
    compiled = []
    real_compile = torch.compile

    def eager_compile(model):  # dynamo without inductor code generation: seconds, not minutes
        compiled.append(model)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    states = {}
    for flag in (False, True):
        got = []
        train(tiny(epochs=1, compile=flag), split, phantom_root,
              report=lambda m, s, out=got: out.append(s))
        states[flag] = got[-1]
    assert len(compiled) == 1
    assert list(states[True]["model"]) == list(states[False]["model"])  # no _orig_mod. prefix
    assert states[True]["metrics"]["loss"] == pytest.approx(states[False]["metrics"]["loss"],
                                                            rel=1e-4)
