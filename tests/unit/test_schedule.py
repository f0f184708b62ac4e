from __future__ import annotations

import pytest
import torch

from search.spec import Spec
from train_fn.loop import build_schedule, warmup_steps


def lrs(spec, steps):
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": params[:1], "lr": 0.01}, {"params": params[1:], "lr": 0.02}])
    schedule = build_schedule(opt, spec)
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        schedule.step()
    return out


def spec_of(**schedule):
    return Spec.model_validate({"schedule": schedule,
                                "train": {"epochs": 2, "steps_per_epoch": 5}})


@pytest.mark.parametrize("fraction, expected", [(0.0, 0), (0.2, 2), (0.15, 2), (0.5, 5)])
def test_warmup_steps_are_a_fraction_of_all_steps(fraction, expected):
    assert warmup_steps(spec_of(warmup_fraction=fraction)) == (expected, 10)


def test_warmup_cosine_table():
    # 10 steps, 2 of warmup from 0.1x, then a half cosine to 0 over the remaining 8.
    table = lrs(spec_of(warmup_fraction=0.2, warmup_multiplier=0.1, cycles=0.5), 10)
    base = [0.1, 0.55, 1.0, 0.9619, 0.8536, 0.6913, 0.5, 0.3087, 0.1464, 0.0381]
    assert [row[0] for row in table] == pytest.approx([0.01 * f for f in base], abs=1e-6)
    # One factor for every group: the band ratio stays exactly 2.
    assert all(row[1] == pytest.approx(2 * row[0]) for row in table)


def test_no_warmup_starts_at_full_lr():
    table = lrs(spec_of(warmup_fraction=0.0, cycles=0.5), 3)
    assert table[0][0] == pytest.approx(0.01)


@pytest.mark.parametrize("multiplier, cycles, expected", [
    # 2 warmup steps from `multiplier`, then 8 steps of cosine with `cycles` periods.
    (0.0, 0.5, [0.0, 0.5, 1.0, 0.9619, 0.8536, 0.6913, 0.5, 0.3087, 0.1464, 0.0381]),
    (0.5, 0.5, [0.5, 0.75, 1.0, 0.9619, 0.8536, 0.6913, 0.5, 0.3087, 0.1464, 0.0381]),
    # A quarter cosine ends at half way down the curve: the LR stays above 0.7x.
    (0.0, 0.25, [0.0, 0.5, 1.0, 0.9904, 0.9619, 0.9157, 0.8536, 0.7778, 0.6913, 0.5975]),
])
def test_warmup_multiplier_and_cycles_table(multiplier, cycles, expected):
    table = lrs(spec_of(warmup_fraction=0.2, warmup_multiplier=multiplier, cycles=cycles), 10)
    assert [row[0] for row in table] == pytest.approx([0.01 * f for f in expected], abs=1e-6)
    assert all(row[1] == pytest.approx(2 * row[0]) for row in table)  # ratios preserved
