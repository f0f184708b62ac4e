"""`search.lazy.LazyModule`: a module named now, imported on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest

from search.lazy import LazyModule


def test_the_module_is_imported_on_the_first_attribute_only():
    code = ("import sys; from search.lazy import LazyModule; m = LazyModule('colorsys'); "
            "before = 'colorsys' in sys.modules; value = m.rgb_to_hsv(1, 0, 0); "
            "print(before, 'colorsys' in sys.modules, value)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split(maxsplit=2)
    assert out == ["False", "True", "(0.0, 1.0, 1)\n"]


def test_a_missing_module_or_attribute_fails_at_first_use():
    missing = LazyModule("no_such_module_here")  # naming it costs nothing, and fails nothing
    with pytest.raises(ModuleNotFoundError, match="no_such_module_here"):
        _ = missing.anything
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = LazyModule("json").no_such_name
