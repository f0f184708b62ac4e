"""The LR range test before a search (`lr_finder.enabled`) or alone (`python -m search
lr-find`): run it on the centre of the space, then set or centre `optimizer.lr` on its
suggestion."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from search.space import centre
from search.spec import Spec, with_lr
from train_fn.files import write_json
from train_fn.lr_finder import plot_range_test, range_test

logger = logging.getLogger(__name__)


def lr_find(spec: Spec, data_root: Path, split: dict[str, list[str]], out_dir: str | Path
            ) -> tuple[Spec, dict[str, Any]]:
    """Run the LR range test; return the spec with its lr set or centred on the suggestion,
    and the test's record, which is saved (the one writer of both) as `lr_finder.json` and
    drawn as `lr_finder_plot.png` in `out_dir`."""
    # The test needs one concrete configuration: the centre of the space (lr is ramped).
    params = centre(spec)
    result = range_test(spec.resolve(params), split, data_root)
    new = with_lr(spec, result["suggestion"])
    lr = new.optimizer.lr
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result.update(config=params, plot=str(out_dir / "lr_finder_plot.png"),
                  lr_used=lr if isinstance(lr, float) else {"low": lr.low, "high": lr.high})
    write_json(out_dir / "lr_finder.json", result)
    plot_range_test(result, result["plot"], used=result["lr_used"])
    logger.info("LR finder: suggested lr %.3g; optimizer.lr is now %s", result["suggestion"],
                result["lr_used"])
    return new, result
