from __future__ import annotations

import pytest
import torch

from search.spec import Spec, SpecError, load_spec
from train_fn.datasets import find_cases, split_cases
from train_fn.loop import train
from train_fn.models import MODELS, build_model, model_depth, place_params
from train_fn.optim import (
    BANDS,
    OPTIMIZERS,
    band_of,
    build_optimizer,
    optimizer_settings,
    param_groups,
)

ARCHS = [
    {"name": "unet", "channels": (8, 16, 32, 64), "strides": (2, 2, 2), "num_res_units": 1},
    {"name": "unet", "channels": (8, 16, 32, 64, 128), "strides": (2, 2, 2, 2),
     "num_res_units": 2},
    {"name": "unet", "channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 0},
    {"name": "dynunet", "channels": (8, 16, 32, 64), "strides": (1, 2, 2, 2)},
    {"name": "dynunet", "channels": (8, 16, 32, 64), "strides": (1, 2, 2, 2),
     "deep_supervision": True, "deep_supr_num": 2},
    {"name": "segresnet", "init_filters": 8, "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1)},
    {"name": "mednext", "init_filters": 8, "blocks_down": (2, 2, 2), "blocks_up": (2, 2, 2),
     "deep_supervision": True},
]


def names_of(group, model):
    ids = {id(p) for p in group["params"]}
    return [n for n, p in model.named_parameters() if id(p) in ids]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"{a['name']}")
@pytest.mark.parametrize("mode", ["bands", "ramp", "geometric"])
@pytest.mark.parametrize("no_decay", [False, True])
def test_every_parameter_in_exactly_one_group(arch, mode, no_decay):
    spec = Spec.model_validate({"model": arch,
                                "layers": {"mode": mode, "no_decay_norm_bias": no_decay}})
    model = build_model(spec.model, 1, 5)
    groups = param_groups(model, spec.model, spec.layers, 0.01)
    names = [n for g in groups for n in names_of(g, model)]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(names) == len(set(names))
    if mode == "bands":
        assert {g["name"].split("/")[0] for g in groups} == set(BANDS)
    else:
        depth = model_depth(spec.model)
        seen = {g["name"].split("/")[0] for g in groups}
        path = {"middle", "head", *(f"{s}{i}" for s in ("enc", "dec") for i in range(depth))}
        assert {"enc0", "middle", "head"} <= seen <= path
        # One group per place on the path (a UNet without residual units has no dec0: its
        # whole top up block is the head).
        assert len(seen) >= 2 * depth + 1
    if no_decay:
        for g in groups:
            assert (g.get("weight_decay") == 0.0) == g["name"].endswith("/no_decay")
            assert all((p.ndim <= 1) == g["name"].endswith("/no_decay") for p in g["params"])


def test_unet_band_names():
    spec = Spec.model_validate({"model": ARCHS[0]})
    bands: dict[str, list[str]] = {}
    for name, (part, level) in place_params(build_model(spec.model, 1, 5), spec.model).items():
        bands.setdefault(band_of(part, level, model_depth(spec.model)), []).append(name)
    assert set(bands) == set(BANDS)
    assert all(n.startswith(("model.0.", "model.1.submodule.0.")) for n in bands["early_encoder"])
    assert all(".submodule.1.submodule.0." in n for n in bands["deep_encoder"])
    assert all(n.startswith("model.1.submodule.1.submodule.1.submodule.")
               for n in bands["middle"])
    assert all(n.startswith("model.2.1.") for n in bands["head"])  # the last residual unit


@pytest.mark.parametrize("arch, head, middle", [
    (ARCHS[3], ("output_block", "deep_supervision_heads"), ("bottleneck",)),
    (ARCHS[5], ("conv_final",), ("down_layers.3",)),
    (ARCHS[6], ("out_0", "out_blocks"), ("bottleneck",)),
])
def test_other_architectures_place_heads_and_middles(arch, head, middle):
    spec = Spec.model_validate({"model": arch})
    places = place_params(build_model(spec.model, 1, 5), spec.model)
    for name, (part, _) in places.items():
        assert (part == "head") == name.startswith(head), name
        assert (part == "middle") == name.startswith(middle), name


def test_multipliers_per_mode():
    model_cfg = {"name": "unet", "channels": (4, 8, 16), "strides": (2, 2)}  # depth 2
    def mults(layers):
        spec = Spec.model_validate({"model": model_cfg, "layers": layers})
        groups = param_groups(build_model(spec.model, 1, 5), spec.model, spec.layers, 0.1)
        return {g["name"]: round(g["multiplier"], 6) for g in groups}

    assert mults({"early_encoder": 0.2, "deep_encoder": 0.8, "decoder": 1.5, "head": 2.0}) == {
        "early_encoder": 0.2, "deep_encoder": 0.8, "middle": 1.0, "decoder": 1.5, "head": 2.0}
    # Positions enc0 enc1 middle dec1 dec0 head = 0..5 of 5: a linear ramp 0.5 -> 1.5.
    assert mults({"mode": "ramp", "start": 0.5, "end": 1.5}) == {
        "enc0": 0.5, "enc1": 0.7, "middle": 0.9, "dec1": 1.1, "dec0": 1.3, "head": 1.5}
    assert mults({"mode": "geometric", "decay": 0.5}) == {
        "enc0": 0.03125, "enc1": 0.0625, "middle": 0.125, "dec1": 0.25, "dec0": 0.5,
        "head": 1.0}


def test_groups_carry_the_multipliers_into_the_optimizer():
    spec = Spec.model_validate({
        "optimizer": {"name": "novograd", "lr": 0.01, "beta1": 0.95, "beta2": 0.98,
                      "weight_decay": 5e-4, "grad_averaging": True},
        "layers": {"early_encoder": 0.1, "deep_encoder": 0.8, "decoder": 1.5, "head": 2.0,
                   "no_decay_norm_bias": True}})
    model = build_model(spec.model, 1, 5)
    optimizer = build_optimizer(param_groups(model, spec.model, spec.layers, 0.01),
                                spec.optimizer)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["early_encoder"] == pytest.approx(0.001) and lrs["head/no_decay"] == 0.02
    decay = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
    assert decay["decoder"] == 5e-4 and decay["decoder/no_decay"] == 0.0
    assert optimizer.param_groups[0]["betas"] == (0.95, 0.98)


@pytest.mark.parametrize("text, message", [
    ("layers:\n  start: 0.5\n", r"layers.start belongs to layers.mode 'ramp', not 'bands'; "
                                r"bands takes: early_encoder, deep_encoder"),
    ("layers:\n  mode: geometric\n  head: 2\n",
     r"layers.head belongs to layers.mode 'bands', not 'geometric'; geometric takes: decay"),
    ("model:\n  name: segresnet\n  channels: [8, 16]\n",
     r"model.channels is not an option of model.name 'segresnet'; segresnet takes: "
     r"init_filters"),
    ("model:\n  name: segresnet\n  init_filters: 12\n",
     r"model.init_filters must be a multiple of 8 for segresnet .*got 12"),
    ("model:\n  name: unet\n  channels: [8, 16]\n  strides: [2, 2]\n",
     r"model.strides needs one entry fewer than model.channels \(2\), got 2"),
])
def test_layer_and_model_errors(write_spec, text, message):
    with pytest.raises(SpecError, match=message):
        load_spec(write_spec(text))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_all_trials_share_initial_weights(name):
    from train_fn.models import weights_fingerprint

    spec = Spec.model_validate({"model": {"name": name, "init_seed": 7}})
    torch.manual_seed(123)
    first = weights_fingerprint(build_model(spec.model, 1, 5))
    torch.manual_seed(456)  # the global RNG must not matter
    assert weights_fingerprint(build_model(spec.model, 1, 5)) == first
    other = Spec.model_validate({"model": {"name": name, "init_seed": 8}})
    assert weights_fingerprint(build_model(other.model, 1, 5)) != first


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_builds_and_steps(name):
    schedule = {"warmup_fraction": 0.0} if name == "schedulefree_radam" else {}
    spec = Spec.model_validate({"optimizer": {"name": name, "lr": 0.01},
                                "schedule": schedule,
                                "model": {"channels": [4, 8], "strides": [2]}})
    model = build_model(spec.model, 1, 5)
    before = [p.detach().clone() for p in model.parameters()]
    opt = build_optimizer(param_groups(model, spec.model, spec.layers, 0.01), spec.optimizer)
    if OPTIMIZERS[name].schedule_free:
        opt.train()
    for _ in range(6):  # schedule-free RAdam is silent for its first steps (rectification)
        opt.zero_grad()
        model(torch.rand(2, 1, 16, 16, 16)).mean().backward()
        opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_unset_keys_take_the_optimizer_defaults():
    spec = Spec.model_validate({"optimizer": {"name": "sgd", "lr": 0.1, "nesterov": True}})
    assert optimizer_settings(spec.optimizer) == {"lr": 0.1, "momentum": 0.9, "nesterov": True,
                                                  "weight_decay": 0.0}


@pytest.mark.parametrize("text, message", [
    ("optimizer:\n  name: adamw\n  grad_averaging: true\n",
     r"spec.yaml:1: optimizer: optimizer.grad_averaging is not a parameter of optimizer.name "
     r"'adamw'; adamw takes: lr, beta1, beta2, eps, weight_decay"),
    ("optimizer:\n  name: sgd\n  beta1: 0.9\n",
     r"optimizer.beta1 is not a parameter of optimizer.name 'sgd'; sgd takes: lr, momentum, "
     r"nesterov, weight_decay"),
    ("optimizer:\n  name: schedulefree_adamw\nschedule:\n  cycles: 0.5\n",
     r"schedule.cycles does not fit optimizer.name 'schedulefree_adamw': a schedule-free "
     r"optimizer keeps its LR constant after its own warmup \(remove schedule.cycles\)"),
    ("optimizer:\n  name: schedulefree_radam\n",
     r"schedule.warmup_fraction does not fit optimizer.name 'schedulefree_radam'"),
])
def test_parameters_an_optimizer_does_not_take_are_refused(write_spec, text, message):
    with pytest.raises(SpecError, match=message):
        load_spec(write_spec(text))


SF = {
    "model": {"channels": [4, 8, 16], "strides": [2, 2]},
    "optimizer": {"name": "schedulefree_adamw", "lr": 0.01, "beta1": 0.9},
    "schedule": {"warmup_fraction": 0.25},
    "train": {"epochs": 2, "steps_per_epoch": 3, "patch_size": [32, 32, 16], "threads": 1,
              "device": "cpu"},
}


@pytest.fixture
def split(phantom_root):
    return split_cases([c.case_id for c in find_cases(phantom_root)], 0.2, 0.2, 0)


def test_schedule_free_checkpoint_holds_the_validated_eval_weights(phantom_root, split):
    from train_fn.data import load_volumes
    from train_fn.datasets import SEGTHOR_LABELS
    from train_fn.metrics import evaluate

    spec = Spec.model_validate(SF)
    states = []
    train(spec, split, phantom_root, report=lambda m, s: states.append((m, s)))
    metrics, state = states[-1]
    assert all(g["train_mode"] is False for g in state["optimizer"]["param_groups"])
    # The saved weights are the ones validated: evaluating them gives the reported Dice.
    model = build_model(spec.model, 1, 5)
    model.load_state_dict(state["model"])
    cases = {c.case_id: c for c in find_cases(phantom_root)}
    vols = load_volumes([cases[i] for i in split["val"]], spec.data)
    regions = {name: (i,) for i, name in SEGTHOR_LABELS.items()}
    assert evaluate(model, vols, spec.train, torch.device("cpu"), regions)[0] == \
        metrics["val_dice"]
    # Warmup comes from the warmup fraction: 0.25 x 6 steps -> the optimizer's own 2 steps.
    assert state["optimizer"]["param_groups"][0]["warmup_steps"] == 2


def test_schedule_free_resume_matches_an_uninterrupted_run(phantom_root, split):
    spec = Spec.model_validate(SF)
    full = []
    train(spec, split, phantom_root, report=lambda m, s: full.append(s))
    resumed = []
    train(spec, split, phantom_root, report=lambda m, s: resumed.append(s), resume=full[0])
    assert [s["epoch"] for s in resumed] == [2]
    a, b = full[-1]["model"], resumed[-1]["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
