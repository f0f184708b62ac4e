"""`search.prepare` without Ray: `parallel_map` here in order with its progress line, the
progress line's pace, the CUDA-without-GPU refusal, and the memory a preprocessing task is
given. (Over Ray tasks: tests/unit/test_cache.py; the cluster checks: tests/e2e.)"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from search.prepare import Progress, _is_large, _prep_memory, check_device, parallel_map
from search.spec import Spec, SpecError
from train_fn.datasets import find_cases


def test_parallel_map_without_ray_runs_here_in_order_and_says_so(caplog):
    with caplog.at_level(logging.INFO, logger="search.prepare"):
        out = parallel_map(lambda a, b: a * b, [(1, 2), (3, 4), (5, 6)], "data check")
    assert out == [2, 12, 30]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("data check: 3/3 cases (")
    assert "took" in lines[0]


def test_progress_speaks_at_most_every_few_seconds_and_at_the_end(caplog):
    progress = Progress("cache", 4, every=3600)
    with caplog.at_level(logging.INFO, logger="search.prepare"):
        for _ in range(4):
            progress.step()
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["cache: 4/4 cases"]


@pytest.mark.parametrize("device, gpu, refused", [
    ("cuda", 0.0, True), ("cuda", 0.5, False), ("auto", 0.0, False), ("cpu", 0.0, False)])
def test_cuda_trials_must_ask_ray_for_a_gpu(device, gpu, refused):
    spec = Spec.model_validate({"train": {"device": device}, "resources": {"gpu": gpu}})
    if refused:
        with pytest.raises(SpecError, match="train.device is cuda but resources.gpu is 0"):
            check_device(spec)
    else:
        check_device(spec)


def test_a_preprocessing_task_asks_for_16_float_copies_of_its_image_at_least_half_a_gib(
        tmp_path, phantom_root):
    big = tmp_path / "big.nii.gz"  # zeros: a small file whose header says 256 x 256 x 160
    nib.save(nib.Nifti1Image(np.zeros((256, 256, 160), np.uint8), np.eye(4)), big)
    assert _prep_memory(SimpleNamespace(image=str(big))) == 16 * 4 * 256 * 256 * 160
    cases = find_cases(phantom_root)
    assert _prep_memory(cases[0]) == 2**29  # a phantom's is below the floor
    assert not _is_large(cases)  # a phantom: checked and cached here, not over Ray tasks
