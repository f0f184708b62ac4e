"""Fork-then-search: the shared trunk trains once (and continues after an interruption), trials
start from its exact weights with a fresh optimizer, and soups refuse other ancestors."""

from __future__ import annotations

import pytest
import torch

from search.errors import SoupError
from search.soup import check_ingredients
from search.spec import Spec
from search.trunk import ensure_trunk, fingerprint, trunk_spec
from train_fn.datasets import find_cases, split_cases
from train_fn.loop import train

TINY = {
    "model": {"channels": [4, 8, 16], "strides": [2, 2]},
    "optimizer": {"name": "novograd", "lr": {"type": "float", "low": 0.01, "high": 0.04,
                                             "log": True}, "grad_averaging": True},
    "train": {"epochs": 2, "steps_per_epoch": 2, "patch_size": [32, 32, 16], "threads": 1,
              "device": "cpu", "val_hd95": False},
    "search": {"trunk_epochs": 2},
}


@pytest.fixture
def split(phantom_root):
    return split_cases([c.case_id for c in find_cases(phantom_root)], 0.2, 0.2, 0)


def test_the_trunk_trains_at_the_centre_of_the_space_for_its_epochs():
    spec = trunk_spec(Spec.model_validate(TINY))
    assert spec.optimizer.lr == pytest.approx(0.02) and spec.train.epochs == 2
    assert not spec.searched()


def test_the_trunk_trains_once_and_continues_an_interrupted_one(phantom_root, split, tmp_path,
                                                                 monkeypatch):
    import search.trunk  # noqa: F401 - the module whose train() calls are counted
    import train_fn.loop

    spec = Spec.model_validate(TINY)
    epochs_run = []
    real = train_fn.loop.train

    def counted(tspec, *args, **kwargs):
        resume = kwargs.get("resume")
        epochs_run.append((resume or {}).get("epoch", 0))
        return real(tspec, *args, **kwargs)

    monkeypatch.setattr(train_fn.loop, "train", counted)
    # An interrupted trunk: its first epoch's checkpoint only.
    one = Spec.model_validate({**TINY, "search": {"trunk_epochs": 1}})
    first = ensure_trunk(tmp_path, one, split, str(phantom_root))
    assert first["ancestor"]["epochs"] == 1
    trunk = ensure_trunk(tmp_path, spec, split, str(phantom_root))  # continues from epoch 1
    again = ensure_trunk(tmp_path, spec, split, str(phantom_root))  # finished: not trained
    assert epochs_run == [0, 1]
    assert trunk["ancestor"] == again["ancestor"]
    assert trunk["ancestor"]["epochs"] == 2
    assert trunk["ancestor"]["fingerprint"] == fingerprint(again["model"])
    assert trunk["ancestor"]["fingerprint"] != first["ancestor"]["fingerprint"]


def test_a_trial_starts_from_the_trunks_exact_weights(phantom_root, split):
    """With a vanishing learning rate, a trial's first epoch ends where it started: at the
    trunk's weights, not at the spec's initial weights; its checkpoint names the trunk."""
    trunk_weights = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                     for k, v in _initial(Spec.model_validate(TINY)).items()}
    init = {"model": trunk_weights, "ancestor": {"kind": "trunk", "epochs": 2,
                                                 "fingerprint": fingerprint(trunk_weights)}}
    spec = Spec.model_validate({**TINY, "optimizer": {**TINY["optimizer"], "lr": 1e-12},
                                "train": {**TINY["train"], "epochs": 1}, "search": {}})
    states = []
    train(spec, split, phantom_root, report=lambda m, s: states.append(s), init=init)
    assert states[0]["ancestor"] == init["ancestor"]
    for key, value in trunk_weights.items():
        torch.testing.assert_close(states[0]["model"][key], value, rtol=0, atol=1e-6)
    # A resumed trial keeps its ancestor.
    longer = Spec.model_validate({**TINY, "optimizer": {**TINY["optimizer"], "lr": 1e-12},
                                  "search": {}})
    resumed = []
    train(longer, split, phantom_root, report=lambda m, s: resumed.append(s), resume=states[0])
    assert resumed[0]["ancestor"] == init["ancestor"]


def _initial(spec: Spec) -> dict[str, torch.Tensor]:
    from train_fn.models import build_model

    return build_model(spec.model, 1, 5).state_dict()


def test_soups_refuse_ingredients_of_another_ancestor_naming_it():
    base = {"architecture": {"name": "unet"}, "init_fingerprint": "f0", "init_seed": 0}
    trunk = {"kind": "trunk", "epochs": 4, "fingerprint": "abc123"}
    with pytest.raises(SoupError, match=r"cannot soup trial t2 with trial t1: different "
                                        r"ancestor: trunk abc123 \(4 epochs\) vs none"):
        check_ingredients({"t1": {**base, "ancestor": trunk}, "t2": base})
    other = {**trunk, "fingerprint": "def456"}
    with pytest.raises(SoupError, match="trunk abc123 .* vs trunk def456"):
        check_ingredients({"t1": {**base, "ancestor": trunk}, "t2": {**base, "ancestor": other}})
    check_ingredients({"t1": {**base, "ancestor": trunk}, "t2": {**base, "ancestor": trunk}})
