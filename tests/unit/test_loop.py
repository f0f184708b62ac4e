from __future__ import annotations

import pytest

from search.spec import Spec
from train_fn.checkpoint import load_checkpoint, save_checkpoint
from train_fn.datasets import SEGTHOR_LABELS, find_cases, split_cases
from train_fn.loop import train

TINY = {
    "model": {"channels": [4, 8, 16], "strides": [2, 2]},
    "optimizer": {"name": "novograd", "lr": 0.05, "grad_averaging": True},
    "train": {"epochs": 2, "steps_per_epoch": 2, "patch_size": [32, 32, 16], "threads": 1,
              "device": "cpu"},
}


@pytest.fixture
def split(phantom_root):
    return split_cases([c.case_id for c in find_cases(phantom_root)], 0.2, 0.2, 0)


def run_plain(spec, split, root, out_dir):
    """Train without Ray, each epoch's checkpoint saved under `out_dir/epoch_NNN/`."""

    def report(metrics, state):
        if state is not None:
            save_checkpoint(out_dir / f"epoch_{metrics['epoch']:03d}", state)

    return train(spec, split, root, report=report)


def resume_state(folder):
    return load_checkpoint(folder)


def test_plain_run_reports_every_epoch_with_a_checkpoint(phantom_root, split, tmp_path):
    spec = Spec.model_validate(TINY)
    reports = []
    last = train(spec, split, phantom_root, report=lambda m, s: reports.append((m, s)))
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    metrics, state = reports[-1]
    assert metrics == last
    assert set(metrics) >= {"loss", "grad_norm", "val_dice",
                            *(f"val_dice/{c}" for c in SEGTHOR_LABELS.values()),
                            *(f"val_hd95/{c}" for c in SEGTHOR_LABELS.values()),
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


@pytest.mark.parametrize("model", [
    {"name": "dynunet", "channels": [4, 8, 16], "strides": [1, 2, 2], "deep_supervision": True,
     "deep_supr_num": 1},
    {"name": "segresnet", "init_filters": 8, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]},
    {"name": "mednext", "init_filters": 4, "blocks_down": [1, 1], "blocks_up": [1, 1],
     "blocks_bottleneck": 1, "deep_supervision": True},
], ids=lambda m: m["name"])
def test_each_architecture_trains_with_its_outputs(phantom_root, split, model):
    spec = Spec.model_validate({**TINY, "model": model,
                                "train": {**TINY["train"], "epochs": 1}})
    metrics = train(spec, split, phantom_root)
    assert metrics["epoch"] == 1 and metrics["loss"] > 0 and 0 <= metrics["val_dice"] <= 1


def test_deep_supervision_loss_weights_heads():
    import torch
    from monai.losses import DiceCELoss

    from train_fn.loop import deep_supervision_loss

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    label = torch.randint(0, 5, (2, 1, 8, 8, 8))
    main, aux = torch.randn(2, 5, 8, 8, 8), torch.randn(2, 5, 4, 4, 4)
    up = torch.nn.functional.interpolate(aux, size=(8, 8, 8), mode="trilinear")
    expected = (loss_fn(main, label) + 0.5 * loss_fn(up, label)) / 1.5
    assert deep_supervision_loss(loss_fn, (main, aux), label) == pytest.approx(float(expected))
    stacked = torch.stack([main, up], dim=1)  # DynUNet's layout
    assert deep_supervision_loss(loss_fn, stacked, label) == pytest.approx(float(expected))
    assert deep_supervision_loss(loss_fn, main, label) == pytest.approx(
        float(loss_fn(main, label)))


def test_batchnorm_statistics_are_recomputed_as_a_plain_average():
    import torch

    from train_fn.models import refresh_batchnorm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3), torch.nn.BatchNorm3d(3))
    batches = [torch.rand(2, 1, 6, 6, 6) * (i + 1) for i in range(3)]
    assert refresh_batchnorm(model, batches)
    with torch.no_grad():
        outs = [model[0](b) for b in batches]
    expected = torch.stack([o.mean(dim=(0, 2, 3, 4)) for o in outs]).mean(0)
    torch.testing.assert_close(model[1].running_mean, expected, rtol=1e-5, atol=1e-6)
    assert not refresh_batchnorm(torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3)), batches)


def test_schedule_free_batchnorm_network_checkpoints_refreshed_statistics(phantom_root, split):
    import torch

    from train_fn.data import PatchSampler, load_volumes
    from train_fn.loop import BN_EPOCH
    from train_fn.models import build_model, refresh_batchnorm

    spec = Spec.model_validate({
        **TINY, "optimizer": {"name": "schedulefree_adamw", "lr": 0.01},
        "model": {"name": "dynunet", "channels": [4, 8, 16], "strides": [1, 2, 2],
                  "norm": "batch"},
        "train": {**TINY["train"], "epochs": 1}})
    states = []
    train(spec, split, phantom_root, report=lambda m, s: states.append(s))
    saved = states[-1]["model"]
    stats = [k for k in saved if k.endswith(("running_mean", "running_var"))]
    assert stats
    # The saved statistics are those of the averaged (eval-mode) weights on the fixed
    # patches, not the running ones left over from training steps at the y point.
    cases = {c.case_id: c for c in find_cases(phantom_root)}
    vols = load_volumes([cases[i] for i in split["train"]], spec.data)
    patches = [x for x, _ in PatchSampler(vols, spec.train.patch_size, spec.train.seed, 5)
               .epoch(BN_EPOCH, 8, spec.train.batch_size)]
    model = build_model(spec.model, 1, 5)
    model.load_state_dict(saved)
    refresh_batchnorm(model, patches)
    for key in stats:
        torch.testing.assert_close(model.state_dict()[key], saved[key], rtol=1e-4, atol=1e-5)


def test_a_diverging_trial_stops_with_its_reason(phantom_root, split, tmp_path):
    spec = Spec.model_validate({**TINY, "optimizer": {"name": "sgd", "lr": 1.0e6},
                                "train": {**TINY["train"], "epochs": 3, "grad_clip": None}})
    reports = []
    metrics = run_plain(spec, split, phantom_root, tmp_path)
    train(spec, split, phantom_root, report=lambda m, s: reports.append((m, s)))
    assert metrics["stop_reason"] == "non-finite loss" and metrics["epoch"] < 3
    assert reports[-1][1] is None  # no checkpoint of diverged weights
    assert not (tmp_path / f"epoch_{metrics['epoch']:03d}").exists()


def test_fault_injection_counts_attempts(tmp_path, monkeypatch):
    from fault_hook.sitecustomize import fault as inject_fault

    monkeypatch.setenv("SEGTUNE_FAULT", f"epoch=2,times=2,dir={tmp_path}")
    monkeypatch.setenv("SEGTUNE_TRIAL_ID", "t1")
    inject_fault(1)  # another epoch: nothing
    for _ in range(2):
        with pytest.raises(RuntimeError, match="injected fault at epoch 2"):
            inject_fault(2)
    inject_fault(2)  # the third attempt goes through


def test_fault_injection_only_for_the_first_trials(tmp_path, monkeypatch):
    from fault_hook.sitecustomize import fault as inject_fault

    monkeypatch.setenv("SEGTUNE_FAULT", f"epoch=1,times=1,dir={tmp_path},trials=1")
    monkeypatch.setenv("SEGTUNE_TRIAL_ID", "first")
    with pytest.raises(RuntimeError):
        inject_fault(1)
    monkeypatch.setenv("SEGTUNE_TRIAL_ID", "second")
    inject_fault(1)  # not one of the faulty trials


def test_running_out_of_memory_is_a_clear_trial_error(phantom_root, split, tmp_path,
                                                      monkeypatch):
    from fault_hook.sitecustomize import patch

    from train_fn import data
    from train_fn.loop import OutOfMemory

    # The error torch raises when an allocation fails, at the end of epoch 1's training steps.
    monkeypatch.setattr(data.PatchSampler, "epoch", data.PatchSampler.epoch)  # undone after
    patch(data)
    monkeypatch.setenv("SEGTUNE_FAULT", f"epoch=1,times=1,dir={tmp_path},kind=oom")
    reports = []
    with pytest.raises(OutOfMemory, match=r"^out of memory in epoch 1 \(training\): lower "
                       r"train.batch_size \(2\), train.patch_size \(\[32, 32, 16\]\), or run "
                       r"fewer trials at a time \(search.max_concurrent 2\) \[injected out of "
                       r"memory at epoch 1"):
        train(Spec.model_validate(TINY), split, phantom_root,
              report=lambda m, s: reports.append(m))
    assert reports == []  # the epoch that ran out is not reported as if it had finished


def test_out_of_gpu_memory_names_the_trials_share_and_what_to_change():
    from train_fn.loop import oom_message

    err = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    shared = Spec.model_validate({**TINY, "resources": {"gpu": 0.25}})
    text = oom_message(shared, 3, "validation", (80.0, 19.7), err)
    assert text == (
        "out of GPU memory in epoch 3 (validation): this trial's share of the GPU is "
        "resources.gpu 0.25 (20.0 of 80.0 GiB, up to 4 trials per GPU), and the trial had "
        "19.7 GiB allocated at its peak; run fewer trials per GPU (resources.gpu 0.5) or lower "
        "train.batch_size (2), train.patch_size ([32, 32, 16]) or train.sw_batch_size (4) "
        "[CUDA out of memory. Tried to allocate 2.00 GiB]")
    whole = Spec.model_validate({**TINY, "resources": {"gpu": 1}})
    assert oom_message(whole, 1, "training", (80.0, 79.5), err).startswith(
        "out of GPU memory in epoch 1 (training): the GPU has 80.0 GiB, and the trial had "
        "79.5 GiB allocated at its peak; lower train.batch_size (2), train.patch_size "
        "([32, 32, 16]) [CUDA")


def test_fault_injection_per_trial_times_and_kinds(tmp_path, monkeypatch):
    import torch
    from fault_hook.sitecustomize import fault as inject_fault

    monkeypatch.setenv("SEGTUNE_FAULT",
                       f"epoch=1,times=1/2,kind=error/oom,dir={tmp_path},trials=2")
    monkeypatch.setenv("SEGTUNE_TRIAL_ID", "first")
    with pytest.raises(RuntimeError, match="injected fault") as caught:
        inject_fault(1)
    assert not isinstance(caught.value, torch.OutOfMemoryError)
    inject_fault(1)  # the first trial fails once
    monkeypatch.setenv("SEGTUNE_TRIAL_ID", "second")
    for _ in range(2):
        with pytest.raises(torch.OutOfMemoryError, match="injected out of memory"):
            inject_fault(1)
    inject_fault(1)
    monkeypatch.setenv("SEGTUNE_TRIAL_ID", "third")
    inject_fault(1)  # not one of the 2 faulty trials


@pytest.mark.parametrize("device, expected", [("cuda", 0), ("cuda:1", 1)])
def test_a_gpu_share_caps_the_allocator_of_a_device_given_without_an_index(monkeypatch, device,
                                                                         expected):
    """Found on a real H200: `train.device: cuda` with `resources.gpu: 0.5` failed every trial,
    because torch's own `set_per_process_memory_fraction` refuses a bare "cuda" device. Its
    real body runs here with only the CUDA calls below it replaced."""
    import torch

    from train_fn.loop import share_gpu

    capped = []
    monkeypatch.setattr(torch.cuda.memory, "_lazy_init", lambda: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_setMemoryFraction",
                        lambda fraction, index: capped.append((fraction, index)), raising=False)
    spec = Spec.model_validate({"resources": {"gpu": 0.5}})
    share_gpu(spec, torch.device(device))
    assert capped == [(0.5, expected)]
