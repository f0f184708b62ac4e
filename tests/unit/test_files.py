"""`train_fn.files`: a write that fails leaves the previous file whole and no temporary file."""

from __future__ import annotations

import json
import os

import pytest

from train_fn.files import atomic_write, write_json, write_text


def test_writes_replace_the_file_whole(tmp_path):
    path = write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert json.loads(path.read_text()) == {"x": [1, 2]} and path.read_text().endswith("\n")
    write_text(path, "new")
    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_text(tmp_path / "a.txt", "old")

    def half(tmp):
        tmp.write_text("half of the new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, half)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_the_temporary_name_is_hidden_ends_with_the_pid_and_the_suffix(tmp_path):
    seen = []
    atomic_write(tmp_path / "label.nii.gz", lambda tmp: (seen.append(tmp.name),
                                                         tmp.write_bytes(b"x")), ".nii.gz")
    assert seen == [f".label.nii.gz.tmp-{os.getpid()}.nii.gz"]
