from __future__ import annotations

import pytest
import torch

from search.spec import Spec
from train_fn.models import build_model
from train_fn.optim import BANDS, build_optimizer, param_bands, param_groups


@pytest.mark.parametrize("channels, strides, res", [
    ((8, 16, 32, 64), (2, 2, 2), 1),
    ((8, 16, 32, 64, 128), (2, 2, 2, 2), 2),
    ((4, 8, 16), (2, 2), 0),
])
def test_every_parameter_in_exactly_one_band(channels, strides, res):
    spec = Spec.model_validate({"model": {"channels": channels, "strides": strides,
                                          "num_res_units": res}})
    model = build_model(spec.model, 1, 5)
    bands = param_bands(model, len(strides))
    names = [n for band in bands.values() for n in band]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(names) == len(set(names))
    assert all(bands[b] for b in BANDS), {b: len(v) for b, v in bands.items()}


def test_band_names_on_a_three_level_unet():
    spec = Spec.model_validate({"model": {"channels": (8, 16, 32, 64), "strides": (2, 2, 2)}})
    bands = param_bands(build_model(spec.model, 1, 5), 3)
    prefixes = {b: {".".join(n.split(".")[:-3]) for n in names} for b, names in bands.items()}
    assert any(n.startswith("model.0.") for n in bands["early_encoder"])
    assert all(n.startswith("model.0.") or n.startswith("model.1.submodule.0.")
               for n in bands["early_encoder"])
    assert all(".submodule.1.submodule.0." in n for n in bands["deep_encoder"])
    assert all(n.startswith("model.1.submodule.1.submodule.1.submodule.")
               for n in bands["middle"])
    assert all(n.startswith("model.2.1.") for n in bands["head"])  # the last residual unit
    assert all(".2." in n for n in bands["decoder"]), prefixes


def test_groups_carry_the_band_multipliers():
    spec = Spec.model_validate({"optimizer": {"name": "novograd", "lr": 0.01, "beta1": 0.95,
                                              "beta2": 0.98, "weight_decay": 5e-4,
                                              "grad_averaging": True}})
    model = build_model(spec.model, 1, 5)
    mult = {"early_encoder": 0.1, "deep_encoder": 0.8, "middle": 1.0, "decoder": 1.5,
            "head": 2.0}
    optimizer = build_optimizer(param_groups(model, 3, 0.01, mult), spec.optimizer)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == pytest.approx({b: 0.01 * m for b, m in mult.items()})
    group = optimizer.param_groups[0]
    assert group["betas"] == (0.95, 0.98) and group["grad_averaging"] is True
    assert group["weight_decay"] == 5e-4
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_all_trials_share_initial_weights():
    from train_fn.models import weights_fingerprint

    spec = Spec.model_validate({"model": {"init_seed": 7}})
    torch.manual_seed(123)
    first = weights_fingerprint(build_model(spec.model, 1, 5))
    torch.manual_seed(456)  # the global RNG must not matter
    assert weights_fingerprint(build_model(spec.model, 1, 5)) == first
    other = Spec.model_validate({"model": {"init_seed": 8}})
    assert weights_fingerprint(build_model(other.model, 1, 5)) != first
