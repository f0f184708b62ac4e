from __future__ import annotations

import json
import math

import pytest

from search.lrfind import lr_find
from search.spec import FloatLeaf, Spec, SpecError, load_spec, with_lr
from train_fn.datasets import find_cases, split_cases
from train_fn.lr_finder import edge_warning, steepest


def test_steepest_descent_on_a_known_curve():
    lrs = [10 ** (-5 + i * 0.25) for i in range(21)]  # 1e-5 .. 1
    # A smooth step down centred on index 12 (lr 1e-2), then a blow-up at the end.
    losses = [2.0 - 1.5 / (1 + math.exp(-(i - 12) * 1.5)) for i in range(20)] + [5.0]
    assert steepest(lrs, losses) == pytest.approx(lrs[12])
    # Start-up noise: a steep first drop is picked unless the first points are skipped.
    noisy = [4.0, 2.5] + losses[2:]
    assert steepest(lrs, noisy) == pytest.approx(lrs[0])
    assert steepest(lrs, noisy, skip_start=3) == pytest.approx(lrs[12])
    with pytest.raises(ValueError, match="raise num_iter"):
        steepest(lrs[:3], losses[:3])


@pytest.mark.parametrize("pick, edge", [(1.2e-5, "low"), (0.8, "high"), (1e-2, None)])
def test_edge_warning(pick, edge):
    warning = edge_warning(pick, 1e-5, 1.0)
    assert (warning is None) if edge is None else f"at the {edge} edge" in warning


def test_edge_is_judged_on_the_range_actually_tested():
    # The test stopped early (divergence) at 1e-2: 8e-3 is at its high edge.
    assert "high edge" in edge_warning(8e-3, 1e-5, 1.0, tested_end=1e-2)


def test_with_lr_sets_or_centres():
    spec = Spec.model_validate({"lr_finder": {"use": "set"}})
    assert with_lr(spec, 0.02).optimizer.lr == 0.02
    centred = with_lr(Spec.model_validate({"lr_finder": {"span": 100}}), 0.02).optimizer.lr
    assert isinstance(centred, FloatLeaf) and centred.log
    assert (centred.low, centred.high) == pytest.approx((0.002, 0.2))


def test_bad_range_is_refused(write_spec):
    with pytest.raises(SpecError, match=r"lr_finder.start_lr \(1.0\) must be below "
                                        r"lr_finder.end_lr \(0.1\)"):
        load_spec(write_spec("lr_finder:\n  start_lr: 1.0\n  end_lr: 0.1\n"))


@pytest.mark.parametrize("optimizer", [
    {"name": "novograd", "grad_averaging": True},
    {"name": "schedulefree_adamw"},  # needs optimizer.train() before its first step
])
def test_range_test_runs_and_saves_its_plot(phantom_root, tmp_path, optimizer):
    spec = Spec.model_validate({
        "model": {"channels": [4, 8, 16], "strides": [2, 2]},
        "optimizer": {**optimizer, "lr": 1e-3},
        "schedule": {"warmup_fraction": 0.1},
        "train": {"patch_size": [32, 32, 16], "threads": 1, "device": "cpu"},
        "lr_finder": {"start_lr": 1e-4, "end_lr": 1.0, "num_iter": 12, "skip_start": 2}})
    split = split_cases([c.case_id for c in find_cases(phantom_root)], 0.2, 0.2, 0)
    new, result = lr_find(spec, phantom_root, split, tmp_path)
    assert (tmp_path / "lr_finder_plot.png").stat().st_size > 5000
    saved = json.loads((tmp_path / "lr_finder.json").read_text())
    assert saved["suggestion"] == result["suggestion"]
    # One writer: the file holds the curve and what the search then used, as returned.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr_finder.json",
                                                           "lr_finder_plot.png"]
    assert saved == result
    assert saved["plot"] == str(tmp_path / "lr_finder_plot.png")
    assert saved["lr_used"] == {"low": new.optimizer.lr.low, "high": new.optimizer.lr.high}
    assert saved["lr_used"]["low"] < saved["suggestion"] < saved["lr_used"]["high"]
    assert len(saved["lr"]) == len(saved["loss"]) >= 5
    # The exponential ramp from start_lr to end_lr over num_iter steps (cut short only where
    # the loss diverged), as the optimizer was given it.
    import numpy as np

    ramp = np.geomspace(1e-4, 1.0, 12)
    assert saved["lr"] == pytest.approx(list(ramp[:len(saved["lr"])]), rel=1e-9)
    assert len(saved["lr"]) == 12 or saved["loss"][-1] > min(saved["loss"])
    # The suggestion is the steepest descent of that curve, past the skipped start.
    assert result["suggestion"] == steepest(saved["lr"], saved["loss"], skip_start=2)
    assert result["suggestion"] in saved["lr"][2:]


def test_the_plot_shows_the_range_the_search_used(tmp_path):
    import matplotlib.image
    import numpy as np

    from train_fn.lr_finder import plot_range_test

    lrs = list(np.geomspace(1e-4, 1.0, 15))
    record = {"lr": lrs, "loss": [2.0 - 0.1 * i for i in range(15)], "suggestion": 0.05,
              "skip_start": 2, "optimizer": "novograd", "model": "unet"}
    images = {}
    for name, used in (("plain", None), ("range", {"low": 0.016, "high": 0.16}),
                       ("value", 0.05)):
        path = plot_range_test(record, tmp_path / f"{name}.png", used=used)
        assert path.stat().st_size > 5000
        images[name] = matplotlib.image.imread(path)
    # The searched range is a shaded band, the set value a line: both change the picture.
    assert not np.array_equal(images["plain"], images["range"])
    assert not np.array_equal(images["plain"], images["value"])
