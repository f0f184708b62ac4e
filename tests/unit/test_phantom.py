"""`train_fn.phantom`: a case is deterministic by seed and holds every SegTHOR organ;
`write_once` fills a folder once, reuses it, replaces an outdated format, refuses a
different phantom or a foreign folder, and leaves nothing behind when filling fails."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from train_fn.phantom import MANIFEST, make_case, write_once


def test_a_case_is_deterministic_by_seed_and_holds_every_organ():
    image, label = make_case(3)
    again, other = make_case(3), make_case(4)
    assert image.dtype == np.int16 and label.dtype == np.uint8 and image.shape == label.shape
    assert np.array_equal(image, again[0]) and np.array_equal(label, again[1])
    assert not np.array_equal(image, other[0])
    assert set(np.unique(label)) == {0, 1, 2, 3, 4}  # esophagus, heart, trachea, aorta
    assert image[label == 3].mean() < -500 < image[label == 2].mean()  # air trachea, heart


def filler(calls: list):
    def fill(tmp):
        calls.append(tmp.name)
        (tmp / "case.txt").write_text(str(len(calls)))
    return fill


def test_a_folder_is_filled_once_and_reused(tmp_path):
    calls: list = []
    want = {"format": 3, "cases": 2}
    root = write_once(tmp_path / "p", want, filler(calls))
    assert write_once(tmp_path / "p", want, filler(calls)) == root
    assert calls == [f".p.tmp-{os.getpid()}"]
    assert json.loads((root / MANIFEST).read_text()) == want
    assert sorted(os.listdir(tmp_path)) == ["p"]  # no temporary folder left


def test_an_outdated_format_is_written_again(tmp_path):
    calls: list = []
    write_once(tmp_path / "p", {"format": 2, "cases": 2}, filler(calls))
    root = write_once(tmp_path / "p", {"format": 3, "cases": 2}, filler(calls))
    assert len(calls) == 2 and (root / "case.txt").read_text() == "2"
    assert sorted(os.listdir(tmp_path)) == ["p"]


def test_a_different_phantom_or_a_foreign_folder_is_refused(tmp_path):
    write_once(tmp_path / "p", {"format": 3, "cases": 2}, filler([]))
    with pytest.raises(ValueError, match=r"p: holds a different phantom \(cases 2 != 4\)"):
        write_once(tmp_path / "p", {"format": 3, "cases": 4}, filler([]))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="mine: exists and is not a phantom folder"):
        write_once(tmp_path / "mine", {"format": 3}, filler([]))


def test_a_fill_that_fails_leaves_nothing(tmp_path):
    def broken(tmp):
        (tmp / "half.txt").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_once(tmp_path / "p", {"format": 3}, broken)
    assert os.listdir(tmp_path) == []
