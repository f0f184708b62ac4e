"""The training loop of one trial. It runs without Ray: Ray's trainable only passes a
`report` callback and the checkpoint to resume from."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from train_fn.averaging import WeightAverage, start_epoch
from train_fn.data import PatchSampler, load_volumes, sample_workers
from train_fn.datasets import Dataset, open_dataset
from train_fn.metrics import evaluate
from train_fn.models import (
    architecture,
    build_model,
    has_batchnorm,
    refresh_batchnorm,
    weights_fingerprint,
)
from train_fn.optim import OPTIMIZERS, adopt_hyperparameters, build_optimizer, param_groups

if TYPE_CHECKING:
    from search.spec import Spec

logger = logging.getLogger(__name__)

BN_EPOCH = 1_000_000  # the fixed patches BatchNorm statistics are recomputed on
# report(metrics, state): state is None when the trial ends without a checkpoint (diverged).
Report = Callable[[dict[str, Any], dict[str, Any] | None], None]


def use_trial_threads(spec: Spec) -> None:
    """torch's threads for a trial (or its LR range test): `train.threads`, else the CPUs Ray
    granted it (`resources.cpu`), so trials side by side do not oversubscribe the cores."""
    torch.set_num_threads(spec.train.threads or max(1, int(spec.resources.cpu)))


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `train.precision` on `device` (None: plain fp32). fp16 needs CUDA:
    CPU kernels have no fast fp16 path and its loss scaling exists for CUDA only."""
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"train.precision: fp16 needs a CUDA device, got {device.type} "
                         "(use bf16 or fp32)")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class OutOfMemory(RuntimeError):
    """A trial ran out of (GPU) memory: a clear failure of that trial, with what to change."""


def share_gpu(spec: Spec, device: torch.device) -> None:
    """With a fractional `resources.gpu`, cap this process's CUDA allocator at that fraction of
    the GPU's memory: trials sharing a GPU then cannot starve each other, and the one that
    needs more than its share fails itself (with `OutOfMemory`), not a random neighbour."""
    share = spec.resources.gpu
    if device.type == "cuda" and 0 < share < 1:
        # torch refuses a bare "cuda" device here: pass its index, or None for the current one.
        torch.cuda.set_per_process_memory_fraction(float(share), device.index)


def out_of_memory(spec: Spec, device: torch.device, epoch: int, phase: str,
                  err: BaseException) -> OutOfMemory:
    """`err` (torch's out-of-memory error) as an `OutOfMemory` naming the settings to change."""
    gib = None
    if device.type == "cuda":
        gib = (torch.cuda.get_device_properties(device).total_memory / 2**30,
               torch.cuda.max_memory_allocated(device) / 2**30)
    return OutOfMemory(oom_message(spec, epoch, phase, gib, err))


def oom_message(spec: Spec, epoch: int, phase: str, gib: tuple[float, float] | None,
                err: BaseException) -> str:
    """What ran out, where, and what to change; `gib`: (GPU memory, the trial's peak) in GiB,
    None on the CPU."""
    t, detail = spec.train, str(err)[:300]
    sizes = (f"train.batch_size ({t.batch_size}), train.patch_size ({list(t.patch_size)})"
             + (f" or train.sw_batch_size ({t.sw_batch_size})" if phase == "validation" else ""))
    if gib is None:
        return (f"out of memory in epoch {epoch} ({phase}): lower {sizes}, or run fewer "
                f"trials at a time (search.max_concurrent {spec.search.max_concurrent}) "
                f"[{detail}]")
    total, peak = gib
    share = spec.resources.gpu
    if 0 < share < 1:
        where = (f"this trial's share of the GPU is resources.gpu {share:g} ({share * total:.1f} "
                 f"of {total:.1f} GiB, up to {int(1 / share)} trials per GPU)")
        fix = f"run fewer trials per GPU (resources.gpu {min(1.0, 2 * share):g}) or lower {sizes}"
    else:
        where = f"the GPU has {total:.1f} GiB"
        fix = f"lower {sizes}"
    return (f"out of GPU memory in epoch {epoch} ({phase}): {where}, and the trial had "
            f"{peak:.1f} GiB allocated at its peak; {fix} [{detail}]")


def warmup_steps(spec: Spec) -> tuple[int, int]:
    """(warmup steps, total steps): warmup is a fraction of the whole training budget."""
    total = spec.train.epochs * spec.train.steps_per_epoch
    return round(spec.schedule.warmup_fraction * total), total


def build_schedule(optimizer: torch.optim.Optimizer, spec: Spec):
    """MONAI's warmup-cosine schedule: one factor for every group, so band ratios stay exact."""
    from monai.optimizers import WarmupCosineSchedule

    warm, total = warmup_steps(spec)
    return WarmupCosineSchedule(
        optimizer, warmup_steps=warm, t_total=total,
        cycles=0.5 if spec.schedule.cycles is None else spec.schedule.cycles,
        warmup_multiplier=spec.schedule.warmup_multiplier or 0.0,
    )


def hd95_due(spec: Spec, epoch: int) -> bool:
    """Whether validation after `epoch` (1-based) scores HD95: `train.val_hd95` true (every
    epoch), k (every k-th epoch and the last), false (never)."""
    every = spec.train.val_hd95
    if isinstance(every, bool):
        return every
    return epoch % every == 0 or epoch == spec.train.epochs


def deep_supervision_loss(loss_fn, output, label: torch.Tensor) -> torch.Tensor:
    """The loss of a network output, with deep supervision: DynUNet stacks its heads in dim 1
    (all at full size), MedNeXt returns a tuple at falling resolutions (upsampled here). Head i
    weighs 1/2^i, normalised to sum 1 (as nnU-Net)."""
    if isinstance(output, torch.Tensor) and output.ndim == label.ndim:
        return loss_fn(output, label)
    heads = list(output.unbind(1) if isinstance(output, torch.Tensor) else output)
    weights = [0.5**i for i in range(len(heads))]
    total = 0.0
    for weight, head in zip(weights, heads, strict=True):
        if head.shape[2:] != label.shape[2:]:
            head = torch.nn.functional.interpolate(head, size=label.shape[2:], mode="trilinear")
        total = total + weight * loss_fn(head, label)
    return total / sum(weights)


@dataclass
class Trial:
    """What one trial's epochs share: the data, the network (and `net`, its compiled form for
    the training steps), the optimizer, schedule, loss scaler and weight average, and where
    the trial started (its initial weights' fingerprint, the trunk it grew from)."""

    spec: Spec
    device: torch.device
    amp: torch.dtype | None
    ds: Dataset
    shape: tuple[int, int]  # (input channels, classes)
    val_vols: list
    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any  # MONAI's warmup-cosine schedule; None for schedule-free optimizers
    scaler: torch.amp.GradScaler
    average: WeightAverage | None
    schedule_free: bool
    loss_fn: torch.nn.Module
    sampler: PatchSampler
    bn_batches: int  # fixed patches for BatchNorm statistics (0: no BatchNorm)
    clip: float
    init_fingerprint: str
    ancestor: dict[str, Any] | None
    first_epoch: int = 0


def set_up(spec: Spec, split: dict[str, list[str]], data: Dataset | str | Path,
           resume: dict[str, Any] | None = None, init: dict[str, Any] | None = None) -> Trial:
    """Load the data, build the network, optimizer and schedule, and put them where `resume`
    (a checkpoint state) or `init` (a trunk's weights) says the trial starts."""
    use_trial_threads(spec)
    device = pick_device(spec.train.device)
    share_gpu(spec, device)
    amp = autocast_dtype(spec.train.precision, device)
    ds = data if isinstance(data, Dataset) else open_dataset(spec.data, data)
    train_vols = load_volumes(ds.subset(split["train"]), spec.data, ds.num_classes)
    val_vols = load_volumes(ds.subset(split["val"]), spec.data, ds.num_classes)
    model = build_model(spec.model, len(ds.channels), ds.num_classes)
    init_fingerprint = weights_fingerprint(model)
    ancestor = None
    if init is not None and resume is None:
        model.load_state_dict(init["model"])
        ancestor = init["ancestor"]
    model.to(device)
    kind = OPTIMIZERS[spec.optimizer.name]
    optimizer = build_optimizer(
        param_groups(model, spec.model, spec.layers, spec.optimizer.lr), spec.optimizer,
        warmup_steps=warmup_steps(spec)[0] if kind.warmup else 0,
    )
    from monai.losses import DiceCELoss

    trial = Trial(
        spec=spec, device=device, amp=amp, ds=ds,
        shape=(len(ds.channels), ds.num_classes), val_vols=val_vols, model=model,
        # Compiled for the training steps only; validation and checkpoints use `model` itself.
        net=torch.compile(model) if spec.train.compile else model, optimizer=optimizer,
        # Schedule-free optimizers keep their own warmup and averaging: no external schedule.
        schedule=None if kind.schedule_free else build_schedule(optimizer, spec),
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        scaler=torch.amp.GradScaler(device.type, enabled=spec.train.precision == "fp16"),
        average=None if spec.train.average == "none" else WeightAverage(
            model, spec.train.average,
            start_epoch(spec.train.average_fraction, spec.train.epochs),
            spec.train.ema_decay, kind.schedule_free),
        schedule_free=kind.schedule_free,
        loss_fn=DiceCELoss(to_onehot_y=True, softmax=True, batch=True),
        # Patches are cropped ahead of the step by background threads (pinned for the GPU).
        sampler=PatchSampler(train_vols, spec.train.patch_size, spec.train.seed,
                             ds.num_classes, workers=sample_workers(spec.train, spec.resources),
                             pin=device.type == "cuda"),
        # BatchNorm statistics of the averaged weights come from these fixed training patches.
        bn_batches=8 if has_batchnorm(model) else 0,
        clip=spec.train.grad_clip if spec.train.grad_clip is not None else math.inf,
        init_fingerprint=init_fingerprint, ancestor=ancestor)
    if resume is not None:
        load_state(trial, resume)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one patch shape: pick the fastest kernels once
    return trial


def load_state(trial: Trial, resume: dict[str, Any]) -> None:
    """Continue `trial` from the checkpoint state `resume` (see `checkpoint_state`)."""
    if resume["init_fingerprint"] != trial.init_fingerprint:
        raise ValueError("the checkpoint to resume from has different initial weights")
    trial.model.load_state_dict(resume["model"])
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in trial.optimizer.param_groups]
    trial.optimizer.load_state_dict(resume["optimizer"])  # schedule-free: saved in eval mode
    if trial.schedule is not None:
        trial.schedule.load_state_dict(resume["scheduler"])
    adopt_hyperparameters(trial.optimizer, fresh, trial.schedule)  # PBT: another trial's state
    trial.first_epoch = resume["epoch"]
    trial.ancestor = resume.get("ancestor")
    if trial.average is not None and resume.get("averaged"):
        trial.average.load(resume["averaged"])
    if resume.get("scaler"):
        trial.scaler.load_state_dict(resume["scaler"])


def train(
    spec: Spec,
    split: dict[str, list[str]],
    data: Dataset | str | Path,
    report: Report | None = None,
    resume: dict[str, Any] | None = None,
    init: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train `spec` (fully resolved: no search leaves) and validate after every epoch.

    `data` is the opened dataset (or its folder). `report(metrics, state)` receives each
    epoch's metrics and the checkpoint state; `resume` is a state to continue from; `init`
    ({model, ancestor}: a shared trunk's weights) is where a new run starts, with a fresh
    optimizer, instead of the initial weights. Returns the last epoch's metrics.
    """
    t_start = time.perf_counter()
    trial = set_up(spec, split, data, resume, init)
    logger.info("setup took %.1fs", time.perf_counter() - t_start)
    metrics: dict[str, Any] = {}
    epoch, phase = trial.first_epoch, "training"
    try:
        for epoch in range(trial.first_epoch, spec.train.epochs):
            phase = "training"
            loss_sum, norm_sum = train_epoch(trial, epoch)
            if not bool(torch.isfinite(loss_sum)):
                # Diverged: the weights are no longer worth validating or saving. Report why
                # and end the trial (one host sync per epoch, not per step).
                metrics = {"epoch": epoch + 1,
                           "loss": float(loss_sum) / spec.train.steps_per_epoch,
                           "val_dice": 0.0, "stop_reason": "non-finite loss"}
                logger.warning("epoch %d: non-finite training loss; stopping", epoch + 1)
                if report is not None:
                    report(metrics, None)
                return metrics
            end_epoch(trial, epoch)
            phase = "validation"
            metrics = validate(trial, epoch, loss_sum, norm_sum)
            state = checkpoint_state(trial, epoch, metrics)
            if trial.average is not None and trial.average.count:
                state["averaged"] = validate_average(trial)
                metrics.update({f"avg/{k}": v for k, v in state["averaged"]["metrics"].items()})
            if report is not None:
                report(metrics, state)
    except torch.OutOfMemoryError as err:
        raise out_of_memory(spec, trial.device, epoch + 1, phase, err) from err
    return metrics


def train_epoch(trial: Trial, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch of training steps: the sums of the steps' losses and gradient norms, kept on
    the device (no host sync per step)."""
    t, spec, optimizer, scaler = trial, trial.spec, trial.optimizer, trial.scaler
    t.model.train()
    if t.schedule_free:
        optimizer.train()  # weights to y, the point gradients are taken at
    loss_sum = torch.zeros((), device=t.device)
    norm_sum = torch.zeros((), device=t.device)
    for image, label in t.sampler.epoch(epoch, spec.train.steps_per_epoch,
                                        spec.train.batch_size):
        image = image.to(t.device, non_blocking=True)
        label = label.to(t.device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(t.device.type, dtype=t.amp, enabled=t.amp is not None):
            loss = deep_supervision_loss(t.loss_fn, t.net(image), label)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip and measure true gradients (no-op unless fp16)
        # Measured before step(): Novograd divides p.grad in place.
        norm = torch.nn.utils.clip_grad_norm_(t.model.parameters(), t.clip)
        # A step the fp16 scaler skips (inf/nan gradients) adds 0, not inf, to the mean.
        norm_sum += norm.nan_to_num(0.0, 0.0, 0.0) if scaler.is_enabled() else norm
        scaler.step(optimizer)
        scaler.update()
        if t.schedule is not None:
            t.schedule.step()
        if t.average is not None:
            t.average.after_step(t.model, epoch)
        loss_sum += loss.detach()
    return loss_sum, norm_sum


def end_epoch(trial: Trial, epoch: int) -> None:
    """After an epoch's steps: a schedule-free optimizer's weights to x, the averaged point
    (what is validated, saved and souped; model and optimizer state are saved together in
    this mode), with BatchNorm statistics of their own; the weight average's epoch end."""
    if trial.schedule_free:
        trial.optimizer.eval()
        refresh_batchnorm(trial.model, bn_patches(trial), trial.device)
    if trial.average is not None:
        trial.average.after_epoch(trial.model, epoch)


def bn_patches(trial: Trial):
    """The fixed training patches BatchNorm statistics are recomputed on."""
    return (x for x, _ in trial.sampler.epoch(BN_EPOCH, trial.bn_batches,
                                              trial.spec.train.batch_size))


def validate(trial: Trial, epoch: int, loss_sum: torch.Tensor, norm_sum: torch.Tensor
             ) -> dict[str, Any]:
    """The epoch's metrics: its mean loss and gradient norm, validation Dice (and HD95 when
    due) per region, and each parameter group's learning rate."""
    spec = trial.spec
    val_dice, per_class, per_hd95 = evaluate(trial.model, trial.val_vols, spec.train,
                                             trial.device, trial.ds.regions,
                                             hd95_due(spec, epoch + 1))
    steps = spec.train.steps_per_epoch
    return {
        "epoch": epoch + 1,
        "loss": float(loss_sum) / steps,
        "grad_norm": float(norm_sum) / steps,
        "val_dice": val_dice,
        **{f"val_dice/{name}": value for name, value in per_class.items()},
        **{f"val_hd95/{name}": value for name, value in per_hd95.items()},
        **{f"lr/{group['name']}": group.get("scheduled_lr", group["lr"])
           for group in trial.optimizer.param_groups},
    }


def checkpoint_state(trial: Trial, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint after `epoch`: what `load_state` continues from, and the lineage a soup
    checks."""
    spec = trial.spec
    return {
        "format": 1,
        "epoch": epoch + 1,
        # Copies, not views of the live tensors: training goes on after the report.
        "model": {k: v.detach().to("cpu", copy=True)
                  for k, v in trial.model.state_dict().items()},
        "optimizer": copy.deepcopy(trial.optimizer.state_dict()),
        "scheduler": trial.schedule.state_dict() if trial.schedule is not None else {},
        "scaler": trial.scaler.state_dict(),
        "metrics": metrics,
        "config": spec.flat(),
        "architecture": architecture(spec.model, *trial.shape),
        "init_seed": spec.model.init_seed,
        "init_fingerprint": trial.init_fingerprint,
        "ancestor": trial.ancestor,  # the shared trunk it started from (None: its init)
    }


def validate_average(trial: Trial) -> dict[str, Any]:
    """The averaged weights with BatchNorm statistics of their own, validated (without HD95):
    the checkpoint's `averaged` entry."""
    net = trial.average.model.module
    refresh_batchnorm(net, bn_patches(trial), trial.device)
    val_dice, per_class, _ = evaluate(net, trial.val_vols, trial.spec.train, trial.device,
                                      trial.ds.regions, False)
    return trial.average.state({"val_dice": val_dice,
                                **{f"val_dice/{k}": v for k, v in per_class.items()}})
