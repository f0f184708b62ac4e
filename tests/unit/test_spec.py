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
    from helpers import ROOT

    for path in sorted((ROOT / "spaces").glob("*.yaml")):
        spec = load_spec(path)
        assert spec.searched(), f"{path.name} searches nothing"


# Numbers are finite, in their range, and never a boolean, as fixed values and as the bounds,
# choices and defaults of search leaves (issue 15, items 8 and 11).
@pytest.mark.parametrize("override, message", [
    ("optimizer.lr=.nan", "optimizer.lr: Input should be a finite number, got nan"),
    ("optimizer.lr=inf", "optimizer.lr: Input should be a finite number, got 'inf'"),
    ("optimizer.lr=-.inf", "optimizer.lr: Input should be a finite number, got -inf"),
    ("optimizer.lr=-0.1", "optimizer.lr: Input should be greater than 0, got -0.1"),
    ("optimizer.lr=0", "optimizer.lr: Input should be greater than 0, got 0"),
    ("optimizer.lr=true", "optimizer.lr: expected a number, got true (a boolean)"),
    ("train.epochs=true", "train.epochs: expected a number, got true (a boolean)"),
    ("train.patch_size=[false, 32, 16]",
     "train.patch_size: expected a number, got false (a boolean)"),
    ("optimizer.lr={type: float, low: true, high: 0.1}",
     "optimizer.lr.low: Input should be a valid number, got True"),
    ("optimizer.lr={type: categorical, choices: [true]}",
     "optimizer.lr: choices[0]: expected a number, got true (a boolean)"),
    ("optimizer.lr={type: float, low: 0.01, high: 0.1, default: .nan}",
     "optimizer.lr.default: Input should be a finite number, got nan"),
    ("soup=true", "soup: Input should be a valid dictionary or instance of SoupSpec, got True"),
    ("optimizer.lr={type: float, low: .nan, high: 1}",
     "optimizer.lr.low: Input should be a finite number, got nan"),
    ("optimizer.lr={type: float, low: 0.001, high: .inf, log: true}",
     "optimizer.lr.high: Input should be a finite number, got inf"),
    ("optimizer.lr={type: float, low: 0.001, high: 1, step: .nan}",
     "optimizer.lr.step: Input should be a finite number, got nan"),
    ("optimizer.lr={type: int, low: .nan, high: 3}",
     "optimizer.lr.low: Input should be a valid integer, got nan"),
    ("optimizer.lr={type: categorical, choices: [0.1, .nan]}",
     "optimizer.lr.choices: Input should be a finite number, got nan"),
    ("optimizer.lr={type: float, low: 0, high: 0.1}",
     "optimizer.lr: low: Input should be greater than 0, got 0.0"),
    ("optimizer.lr={type: categorical, choices: [0.1, -0.1]}",
     "optimizer.lr: choices[1]: Input should be greater than 0, got -0.1"),
    ("optimizer.nesterov={type: categorical, choices: [0, 1]}",
     "optimizer.nesterov: choices[0]: Input should be a valid boolean, got 0"),
    ("schedule.warmup_multiplier={type: float, low: 0.5, high: 2}",
     "schedule.warmup_multiplier: high: Input should be less than or equal to 1, got 2.0"),
    ("optimizer.beta1=1", "optimizer.beta1: Input should be less than 1, got 1"),
    ("optimizer.weight_decay=-0.01",
     "optimizer.weight_decay: Input should be greater than or equal to 0, got -0.01"),
    ("optimizer.eps=0", "optimizer.eps: Input should be greater than 0, got 0"),
    ("train.grad_clip=0", "train.grad_clip: Input should be greater than 0, got 0"),
    ("schedule.warmup_fraction=1",
     "schedule.warmup_fraction: Input should be less than 1, got 1"),
    ("schedule.cycles=0", "schedule.cycles: Input should be greater than 0, got 0"),
    ("layers.middle=-1", "layers.middle: Input should be greater than or equal to 0, got -1"),
    ("data.spacing=[1, 0, 2.5]", "data.spacing[1]: Input should be greater than 0, got 0"),
    ("data.window=[-1000, .inf]", "data.window[1]: Input should be a finite number, got inf"),
    ("model.channels=[16, 0, 32]",
     "model.channels[1]: Input should be greater than or equal to 1, got 0"),
    ("train.seed=-1", "train.seed: Input should be greater than or equal to 0, got -1"),
    ("search.seed=4294967296",
     "search.seed: Input should be less than 4294967296, got 4294967296"),
    ("search.trial_time_limit_s=.inf",
     "search.trial_time_limit_s: Input should be a finite number, got inf"),
    ("train.patch_size=[0, 32, 16]",
     "train.patch_size[0]: Input should be greater than or equal to 1, got 0"),
    ("train.patch_size=[-32, 32, 16]",
     "train.patch_size[0]: Input should be greater than or equal to 1, got -32"),
])
def test_numbers_are_finite_in_range_and_not_booleans(write_spec, override, message):
    with pytest.raises(SpecError) as err:
        load_spec(write_spec("train:\n  epochs: 3\n"), [override])
    key = override.split("=")[0]
    assert str(err.value) == f"--set {key}: {message}"


def test_numbers_in_range_still_load(write_spec):
    spec = load_spec(write_spec("train:\n  epochs: 3\n"), [
        "optimizer.lr={type: float, low: 1.0e-4, high: 0.1, log: true}",
        "layers.middle=0", "schedule.warmup_multiplier=1", "train.seed=4294967295",
        "train.patch_size=[32, 32, 16]", "optimizer.nesterov=true", "optimizer.name=sgd",
        "schedule.warmup_fraction=0"])
    assert spec.train.patch_size == (32, 32, 16) and spec.train.seed == 2**32 - 1
    assert spec.layers.middle == 0.0 and spec.optimizer.nesterov is True


# Files that used to raise a raw exception, hang, or load as "valid" (issue 15, items 13, 14).
EMPTY = (": empty spec; a spec is a mapping of sections (data, model, optimizer, ...): an "
         "empty one would run every default")
BOMB = "a: &a {x: 1, y: 1}\n" + "".join(  # 5^9 copies of `a` once expanded
    f"{b}: &{b} {{v: *{a}, w: *{a}, x: *{a}, y: *{a}, z: *{a}}}\n"
    for a, b in zip("abcdefghi", "bcdefghij", strict=True))


@pytest.mark.parametrize("content, message", [
    (b"train:\n  epochs: 3\xff\n", ": not UTF-8 text (byte 0xff at offset 18); a spec is a UTF-8 "
                                  "YAML file"),
    ("a: " + "[" * 20000 + "]" * 20000 + "\n",
     ":1: YAML nested too deeply; a spec nests at most 32 levels"),
    ("", EMPTY),
    ("# only a comment\n", EMPTY),
    ("{}\n", EMPTY),
    (BOMB, ":2: *a is an alias of a mapping or a list; a spec takes aliases of single values "
           "only (write the mapping or list out)"),
    ("base: &b {epochs: 3}\ntrain:\n  <<: *b\n",
     ":3: *b is an alias of a mapping or a list; a spec takes aliases of single values only "
     "(write the mapping or list out)"),
    ("train:\n  epochs: 3\n" + "#" * 2**20 + "\n",
     ": 1048596 bytes; a spec file is at most 1 MiB (1048576 bytes)"),
])
def test_bad_spec_files_are_one_line(tmp_path, content, message):
    # The nesting and alias limits are checked before anything recurses or expands: the
    # message names the limit, where an expanding reader would hang or overflow instead.
    path = tmp_path / "spec.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(err.value) == f"{path}{message}"


def test_aliases_of_single_values_still_load(write_spec):
    spec = load_spec(write_spec("optimizer:\n  lr: &lr 0.01\nlr_finder:\n  start_lr: *lr\n"))
    assert spec.optimizer.lr == spec.lr_finder.start_lr == 0.01


@pytest.mark.parametrize("text, override, message", [
    ("train:\n  epochs: 3\n", "train.epochs.x=3",
     "--set train.epochs.x: train.epochs is a single value, not a section; set it with "
     "--set train.epochs=VALUE"),
    ("train:\n  grad_clip: 2\n", "train.grad_clip.low=0.5",
     "--set train.grad_clip.low: train.grad_clip is 2 in the spec, not a search leaf; give "
     "the whole leaf, e.g. --set 'train.grad_clip={type: float, low: ..., high: ...}'"),
    ("train:\n  epochs: 3\n", "optimizer.lr=[&a [1, 1], *a, *a]",
     "--set optimizer.lr: *a is an alias of a mapping or a list; a spec takes aliases of "
     "single values only (write the mapping or list out)"),
])
def test_set_into_a_value_is_one_line(write_spec, text, override, message):
    with pytest.raises(SpecError) as err:
        load_spec(write_spec(text), [override])
    assert str(err.value) == message


def test_set_into_a_dict_setting_and_an_empty_section(write_spec):
    spec = load_spec(write_spec("train:\n"), ["data.labels.1=organ", "train.epochs=4"])
    assert spec.data.labels == {1: "organ"} and spec.train.epochs == 4
