"""The spec's sections (`search/spec/sections.py`) validated one by one, each rule as a table
of inputs and the message it gives. (Whole specs, file lines and `--set`: test_spec.py.)"""

from __future__ import annotations

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from search.spec import (
    CategoricalLeaf,
    CVSpec,
    DataSpec,
    LayersSpec,
    LRFinderSpec,
    ModelSpec,
    OptimizerSpec,
    TrainSpec,
)
from search.spec.sections import _names_for

FOLDER = {"source": "folder", "root": "/data", "image_pattern": "images/{case}.nii.gz",
          "label_pattern": "labels/{case}.nii.gz"}


def refused(section: type[BaseModel], values: dict) -> str:
    with pytest.raises(ValidationError) as err:
        section.model_validate(values)
    return str(err.value)


@pytest.mark.parametrize("section, values, message", [
    (DataSpec, {"source": "segthor"}, "data.source segthor needs data.root, the dataset folder"),
    (DataSpec, {**FOLDER, "label_pattern": "labels/{case}/{case}.nii.gz"},
     "data.label_pattern must be a path relative to data.root with one {case} wildcard, e.g. "
     "images/{case}.nii.gz; got 'labels/{case}/{case}.nii.gz'"),
    (DataSpec, {"image_pattern": "i/{case}.nii.gz"},
     "data.image_pattern and data.label_pattern are for data.source folder, not phantom"),
    (DataSpec, {"val_fraction": 0.5, "test_fraction": 0.5},
     "data.val_fraction + data.test_fraction must be below 1"),
    (DataSpec, {"window": [100, 100]},
     "data.window must be (low, high) with low < high, got (100.0, 100.0)"),
    (DataSpec, {"orientation": "RAR"}, "data.orientation must be three axis codes, one of L/R, "
                                       "P/A and I/S each, e.g. RAS; got 'RAR'"),
    (DataSpec, {"cases": 3}, "greater than or equal to 4"),
    (ModelSpec, {"name": "unett"},
     "unknown model 'unett'; did you mean 'unet'? valid: unet, dynunet, segresnet, mednext"),
    (ModelSpec, {"name": "unet", "kernel_size": 3},
     "model.kernel_size is not an option of model.name 'unet'; unet takes: channels, strides, "
     "num_res_units, dropout"),
    (ModelSpec, {"name": "unet", "channels": [4, 8, 16], "strides": [2]},
     "model.strides needs one entry fewer than model.channels (3), got 1"),
    (ModelSpec, {"name": "dynunet", "channels": [4, 8, 16], "strides": [1, 2]},
     "model.strides needs as many entries as model.channels (3), got 2"),
    (ModelSpec, {"name": "segresnet", "init_filters": 12},
     "model.init_filters must be a multiple of 8 for segresnet (its GroupNorm has 8 groups), "
     "got 12"),
    (ModelSpec, {"name": "segresnet", "blocks_down": [1, 2, 2], "blocks_up": [1, 1, 1]},
     "model.blocks_up needs one entry fewer than model.blocks_down (3), got 3"),
    (OptimizerSpec, {"name": "novogard"}, "unknown optimizer 'novogard'; did you mean "
                                          "'novograd'? valid: novograd, adamw, sgd"),
    (OptimizerSpec, {"name": {"type": "categorical", "choices": ["adamw", "adam"]}},
     "unknown optimizer 'adam'; did you mean 'adamw'?"),
    (OptimizerSpec, {"name": "novograd", "momentum": 0.9},
     "optimizer.momentum is not a parameter of optimizer.name 'novograd'; novograd takes: lr, "
     "beta1, beta2, eps, weight_decay, grad_averaging"),
    (OptimizerSpec, {"name": {"type": "categorical", "choices": ["adamw", "sgd"]},
                     "momentum": 0.9},
     "optimizer.momentum is not a parameter of optimizer.name 'adamw'; adamw takes: lr, beta1, "
     "beta2, eps, weight_decay (make it conditional: when: {optimizer.name: [...]})"),
    (OptimizerSpec, {"lr": 0}, "greater than 0"),
    (LayersSpec, {"mode": "ramp", "early_encoder": 0.5},
     "layers.early_encoder belongs to layers.mode 'bands', not 'ramp'; ramp takes: start, end"),
    (LayersSpec, {"mode": "bands", "decay": 0.5},
     "layers.decay belongs to layers.mode 'geometric', not 'bands'; bands takes: "
     "early_encoder, deep_encoder, middle, decoder, head"),
    (CVSpec, {"folds": 1}, "cv.folds must be 0 (no cross-validation) or at least 2"),
    (CVSpec, {"mode": "every"}, "cv.mode every needs cv.folds (2 or more)"),
    (LRFinderSpec, {"start_lr": 1.0, "end_lr": 1.0},
     "lr_finder.start_lr (1.0) must be below lr_finder.end_lr (1.0)"),
    (LRFinderSpec, {"num_iter": 10, "skip_start": 6},
     "lr_finder.skip_start (6) leaves fewer than 5 of lr_finder.num_iter (10) points"),
    (TrainSpec, {"epochs": True}, "expected a number, got true (a boolean)"),
    (TrainSpec, {"batch_size": 1}, "greater than or equal to 2"),
    (TrainSpec, {"val_hd95": 0}, "val_hd95"),
])
def test_each_rule_refuses_with_its_message(section, values, message):
    assert message in refused(section, values)


@pytest.mark.parametrize("section, values", [
    (DataSpec, FOLDER),
    (DataSpec, {"orientation": "LPS", "window": [-200, 300]}),
    (ModelSpec, {"name": "dynunet", "channels": [4, 8, 16], "strides": [1, 2, 2]}),
    (ModelSpec, {"name": "segresnet", "init_filters": 16, "blocks_down": [1, 2],
                 "blocks_up": [1]}),
    (OptimizerSpec, {"name": "sgd", "momentum": 0.9, "nesterov": True}),
    (OptimizerSpec, {"name": {"type": "categorical", "choices": ["adamw", "sgd"]},
                     "momentum": {"type": "float", "low": 0.8, "high": 0.99,
                                  "when": {"optimizer.name": "sgd"}}}),
    (LayersSpec, {"mode": "geometric", "decay": 0.5}),
    (CVSpec, {"folds": 3, "mode": "every"}),
    (TrainSpec, {"val_hd95": 2}),
])
def test_settings_within_the_rules_load(section, values):
    section.model_validate(values)


def test_cv_every_needs_both_the_mode_and_folds():
    assert CVSpec.model_validate({"folds": 3, "mode": "every"}).every
    assert not CVSpec.model_validate({"folds": 3}).every
    assert not CVSpec().every


def test_an_optimizer_section_names_the_optimizers_it_can_resolve_to():
    assert OptimizerSpec().names() == ["novograd"]
    both = OptimizerSpec.model_validate(
        {"name": {"type": "categorical", "choices": ["adamw", "sgd"]}})
    assert isinstance(both.name, CategoricalLeaf) and both.names() == ["adamw", "sgd"]


LEAF = {"type": "float", "low": 0.8, "high": 0.99}


@pytest.mark.parametrize("value, expected", [
    (0.9, ["adamw", "sgd", "novograd"]),  # a fixed value applies to every optimizer
    (LEAF, ["adamw", "sgd", "novograd"]),  # so does an unconditional leaf
    ({**LEAF, "when": {"optimizer.name": "sgd"}}, ["sgd"]),
    ({**LEAF, "when": {"optimizer.name": ["sgd", "adamw", "lion"]}}, ["sgd", "adamw"]),
    ([{**LEAF, "when": {"optimizer.name": "sgd"}},
      {**LEAF, "when": {"optimizer.name": "novograd"}}], ["sgd", "novograd"]),
])
def test_names_for_follows_the_conditions_on_the_optimizer(value, expected):
    momentum = OptimizerSpec.model_fields["momentum"].annotation
    parsed = TypeAdapter(momentum).validate_python(value)
    assert _names_for(parsed, ["adamw", "sgd", "novograd"]) == expected
