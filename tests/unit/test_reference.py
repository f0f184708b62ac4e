"""The soups' test-split reference (search.reference) on hand-made cases: the bootstrap
interval against the exact bootstrap distribution, the ensemble against a direct average of
softmax outputs, per-case spread and the verdict against the best trial."""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest
import torch

from search.reference import (
    bootstrap_ci,
    describe,
    ensemble_labels,
    format_reference,
    mlflow_metrics,
    reference,
)


@pytest.mark.parametrize(("values", "interval"), [
    # Resample means of [0, 1]: 0, 0.5, 1 with probability 1/4, 1/2, 1/4.
    ([0.0, 1.0], (0.0, 1.0)),
    # [0, 0, 0, 1]: mean k/4 with k ~ Binomial(4, 1/4): P(k <= 2) = 0.949, P(k <= 3) = 0.996,
    # so the 97.5% point is 3/4 and the 2.5% point 0.
    ([0.0, 0.0, 0.0, 1.0], (0.0, 0.75)),
    ([0.4, 0.4, 0.4], (0.4, 0.4)),
])
def test_bootstrap_interval_is_that_of_the_exact_resampling_distribution(values, interval):
    assert bootstrap_ci(values) == pytest.approx(interval)


def test_describe_gives_mean_sample_std_and_interval_over_cases():
    values = [0.2, 0.5, 0.9, 0.6]
    d = describe(values)
    assert d["mean"] == pytest.approx(0.55) and d["n"] == 4
    assert d["std"] == pytest.approx(statistics.stdev(values))
    assert d["ci95"][0] < 0.55 < d["ci95"][1]
    assert describe([0.7])["std"] == 0.0


def constant_net(logits: list[float]) -> dict[str, torch.Tensor]:
    """Weights of a 1x1x1 convolution that outputs `logits` at every voxel."""
    return {"weight": torch.zeros(len(logits), 1, 1, 1, 1), "bias": torch.tensor(logits)}


A, B = constant_net([0.0, 3.0, -5.0]), constant_net([0.0, -5.0, 2.9])
TRAIN = SimpleNamespace(patch_size=(4, 4, 4), sw_batch_size=1, sw_overlap=0.25)


def test_the_ensemble_averages_softmax_not_logits():
    """A says class 1, B class 2; their softmax average says 1 (0.475 vs 0.474), their
    logit average would say 0: the ensemble's label is the direct computation's."""
    net = torch.nn.Conv3d(1, 3, 1)
    image = torch.rand(1, 4, 4, 4)
    direct = (torch.softmax(A["bias"], 0) + torch.softmax(B["bias"], 0)).argmax()
    assert direct == 1 and (A["bias"] + B["bias"]).argmax() == 0
    for members, label in (([A], 1), ([B], 2), ([A, B], 1)):
        out = ensemble_labels(net, members, image, TRAIN, torch.device("cpu"))
        assert out.shape == (1, 4, 4, 4) and bool((out == label).all())


def test_reference_scores_each_case_and_calls_a_loss_not_better():
    """Two cases, regions r1 (label 1) and r2 (label 2): the best trial (A: all 1) and the
    ensemble (A+B: all 1) score the same; B (all 2) is worse on both cases: not better."""
    net = torch.nn.Conv3d(1, 3, 1)
    regions = {"r1": (1,), "r2": (2,)}
    judge = SimpleNamespace(model=net, device=torch.device("cpu"), folder=SimpleNamespace(
        dataset=SimpleNamespace(regions=regions), spec=SimpleNamespace(train=TRAIN)))
    volumes = []
    for ones in (32, 48):  # case 1: half label 1, half 2; case 2: 3/4 label 1
        label = torch.full((1, 4, 4, 4), 2, dtype=torch.uint8)
        label.view(-1)[:ones] = 1
        volumes.append({"image": torch.rand(1, 4, 4, 4), "label": label})
    ref = reference(judge, volumes, ["c1", "c2"], {"best": [A], "other": [B], "ensemble": [A, B]},
                    {"best": ["t0"], "other": ["t1"], "ensemble": ["t0", "t1"]})
    best, other = ref["models"]["best"], ref["models"]["other"]
    # Dice of "all label 1": 2*32/(64+32) and 2*48/(64+48); r2 absent from the prediction: 0.
    r1 = [64 / 96, 96 / 112]
    assert best["regions"]["r1"]["mean"] == pytest.approx(statistics.fmean(r1))
    assert best["regions"]["r1"]["std"] == pytest.approx(statistics.stdev(r1))
    assert best["per_case"] == pytest.approx({"c1": r1[0] / 2, "c2": r1[1] / 2})
    r2 = [64 / 96, 32 / 80]
    assert other["regions"]["r2"]["mean"] == pytest.approx(statistics.fmean(r2))
    assert ref["models"]["ensemble"]["vs_best"]["delta"] == pytest.approx(0.0)
    assert ref["models"]["ensemble"]["vs_best"]["better"] is False
    assert other["vs_best"]["delta"] == pytest.approx(
        statistics.fmean([r2[0] / 2 - r1[0] / 2, r2[1] / 2 - r1[1] / 2]))
    assert other["vs_best"]["better"] is False
    logged = mlflow_metrics(ref)
    assert logged["reference/best/test_dice/r1/std"] == pytest.approx(statistics.stdev(r1))
    assert logged["reference/other/vs_best/better"] == 0.0
    text = "\n".join(format_reference(ref))
    assert "not better" in text and "2 cases" in text
