"""The one deferred import of a segtune module: a module named at the top of a file, imported
when first used (optuna's `_LazyImport`, MONAI's `optional_import`).

Why it exists: `python -m search --help` and every spec error (a bad key, a bad `--set`) answer
in about a second, and `import search.api` (the importable API) stays free of torch. Importing
torch (3-5 s on 2 cores), MONAI, Ray and MLflow first made them 5-10 s (bench/RESULTS.md,
"Start-up"). So the CLI names each command's module with `LazyModule`, and the driver names
what imports torch at its top (the worker's trainables in `search.trainable`,
`train_fn.loop`, `train_fn.metrics`, `train_fn.checkpoint`, `train_fn.lr_finder`, torch
itself) with it; Ray Tune's `Tuner.fit` imports torch in the driver anyway, so a search pays
the same. For the same reason a function may import a library that takes seconds to load
(torch, MONAI, nibabel, SciPy, matplotlib, MLflow, schedulefree, Optuna's plots), so that its
module stays quick to import; every other import is at the top of its module
(tests/unit/test_imports.py).
"""

from __future__ import annotations

import importlib
import types
from typing import Any


class LazyModule(types.ModuleType):
    """`name`, imported on the first attribute access, then that module's attribute."""

    def __init__(self, name: str):
        super().__init__(name)
        self._module: types.ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self.__name__)
        return getattr(self._module, attr)
