from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # Generated phantoms go to a cache of the test run, never to the user's ~/.cache.
    cache = Path(config.rootpath) / ".pytest_cache" / "segtune-data"
    os.environ.setdefault("SEGTUNE_CACHE", str(cache))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture
def write_spec(tmp_path):
    """Write a YAML spec from an indented string; returns its path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return write


@pytest.fixture(scope="session")
def phantom_root():
    from train_fn.phantom import write_phantom_dataset

    return write_phantom_dataset(Path(os.environ["SEGTUNE_CACHE"]) / "unit-n6", 6, seed=0)
