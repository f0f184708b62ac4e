from __future__ import annotations

import pytest

from search.spec import Spec, SpecError, dump_spec, load_spec

GOOD = """
optimizer:
  name: novograd
  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  beta1: 0.95
train:
  epochs: 3
"""


def test_loads_yaml12_floats_and_searched_leaves(write_spec):
    spec = load_spec(write_spec(GOOD))
    assert spec.optimizer.beta1 == 0.95
    assert list(spec.searched()) == ["optimizer.lr"]
    assert spec.searched()["optimizer.lr"].low == 1e-4  # PyYAML alone reads "1.0e-4" as a str
    assert spec.train.epochs == 3


def test_resolve_replaces_leaves_and_validates():
    spec = Spec.model_validate({"optimizer": {"lr": {"type": "float", "low": 0.1, "high": 1}}})
    resolved = spec.resolve({"optimizer.lr": 0.5})
    assert resolved.optimizer.lr == 0.5 and resolved.searched() == {}
    with pytest.raises(SpecError, match="optimizer.lr: no value chosen"):
        spec.resolve({})


def test_dump_round_trips(write_spec, tmp_path):
    spec = load_spec(write_spec(GOOD))
    again = load_spec(write_spec(dump_spec(spec), "again.yaml"))
    assert again == spec


def test_override_goes_through_validation(write_spec):
    spec = load_spec(write_spec(GOOD), ["train.epochs=7", "optimizer.beta1=0.9"])
    assert spec.train.epochs == 7 and spec.optimizer.beta1 == 0.9
    flow = "optimizer.lr={type: float, low: 0.001, high: 0.1, log: true}"
    assert load_spec(write_spec(GOOD), [flow]).searched()["optimizer.lr"].high == 0.1


@pytest.mark.parametrize("text, overrides, message", [
    ("train:\n  epochs: 3\n  step_per_epoch: 4\n", [],
     r"spec.yaml:3: train.step_per_epoch: unknown key; did you mean 'steps_per_epoch'\?"),
    ("optimiser:\n  lr: 0.1\n", [],
     r"spec.yaml:1: optimiser: unknown key; did you mean 'optimizer'\?"),
    ("train:\n  epochs: many\n", [],
     r"spec.yaml:2: train.epochs: Input should be a valid integer.*got 'many'"),
    ("optimizer:\n  lr: {type: float, low: 0.1, high: 0.01}\n", [],
     r"spec.yaml:2: optimizer.lr: .*low.*high"),
    ("optimizer:\n  name: adam\n", [],
     r"spec.yaml:2: optimizer.name: unknown optimizer 'adam'; did you mean 'adamw'\? valid: "),
    ("model:\n  name: unett\n", [],
     r"spec.yaml:2: model.name: unknown model 'unett'; did you mean 'unet'\? valid: unet"),
    ("train:\n  epochs: 3\n", ["train.epochz=4"],
     r"--set train.epochz: unknown key 'epochz' in train; did you mean 'epochs'\?"),
    ("train:\n  epochs: 3\n", ["train.epochs=-1"],
     r"--set train.epochs: train.epochs: Input should be greater than or equal to 1, got -1"),
    ("train:\n  epochs: 3\n", ["train.epochs"],
     r"--set 'train.epochs': expected dotted.key=value"),
    ("train:\n  epochs: 3\n  epochs: 4\n", [], r"spec.yaml:3: train.epochs: duplicate key"),
    ("train:\n  epochs: [3\n", [], r"spec.yaml:\d+: YAML syntax error"),
    ("train:\n  batch_size: 1\n", [],
     r"train.batch_size: Input should be greater than or equal to 2"),
    ("optimizer:\n  grad_averaging: yes\n", [],
     r"optimizer.grad_averaging: .*write true or false"),
    ("- a\n- b\n", [], r"a spec is a mapping of sections"),
    ("optimizer:\n  lr: {type: float, low: 0.1, high: 1, when: {optimizer.name: x}, default: 1}\n",
     [], r"optimizer.lr.when refers to 'optimizer.name', which is not a searched categorical"),
])
def test_bad_input_is_one_clear_line(write_spec, text, overrides, message):
    with pytest.raises(SpecError, match=message) as err:
        load_spec(write_spec(text), overrides)
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match=r"nope.yaml: no such spec file"):
        load_spec(tmp_path / "nope.yaml")


def test_shipped_specs_load():
    from conftest import ROOT

    for path in sorted((ROOT / "spaces").glob("*.yaml")):
        spec = load_spec(path)
        assert spec.searched(), f"{path.name} searches nothing"
