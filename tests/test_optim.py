from __future__ import annotations

import pytest
import torch

from search.spec import Spec, SpecError, load_spec
from train_fn.models import MODELS, build_model, model_depth, place_params
from train_fn.optim import BANDS, build_optimizer, param_bands, param_groups

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
    bands = param_bands(build_model(spec.model, 1, 5), spec.model)
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
