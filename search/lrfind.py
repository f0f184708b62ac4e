"""The LR range test before a search (`lr_finder.enabled`) or alone (`python -m search
lr-find`): run it on the centre of the space, then set or centre `optimizer.lr` on its
suggestion."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from search.soup import write_json
from search.space import centre
from search.spec import Spec, with_lr
from train_fn.lr_finder import plot_range_test, range_test

logger = logging.getLogger(__name__)


def lr_find(spec: Spec, data_root: Path, split: dict[str, list[str]], out_dir: str | Path
            ) -> tuple[Spec, dict[str, Any]]:
    """Run the LR range test into `out_dir`; return the spec with its lr set or centred on
    the suggestion, and the test's record."""
    # The test needs one concrete configuration: the centre of the space (lr is ramped).
    params = centre(spec)
    result = range_test(spec.resolve(params), split, data_root, out_dir)
    result["config"] = params
    new = with_lr(spec, result["suggestion"])
    lr = new.optimizer.lr
    result["lr_used"] = lr if isinstance(lr, float) else {"low": lr.low, "high": lr.high}
    write_json(Path(out_dir) / "lr_finder.json", result)
    plot_range_test(result, result["plot"], used=result["lr_used"])  # now with the range
    logger.info("LR finder: suggested lr %.3g; optimizer.lr is now %s", result["suggestion"],
                result["lr_used"])
    return new, result
