"""Does each optimizer learn the phantom in a short run? One plain call of the training loop
per optimizer (no Ray), same data, model, bands, patches and budget; prints the validation
Dice per class after the last epoch as a Markdown table.

    python bench/learning.py --epochs 8 --steps 25
    python bench/learning.py --only novograd --lr 2e-3 1e-2 3e-2 1.2e-1 --epochs 16 --steps 25
"""

from __future__ import annotations

import argparse
import time

# A mid-range configuration per optimizer (from each family's usual LR range).
CONFIGS = {
    "novograd": {"lr": 0.1, "beta1": 0.95, "beta2": 0.98, "weight_decay": 5e-4,
                 "grad_averaging": True},
    "adamw": {"lr": 3e-3, "weight_decay": 1e-4},
    "sgd": {"lr": 0.1, "momentum": 0.9, "nesterov": True},
    "schedulefree_adamw": {"lr": 1e-2, "weight_decay": 1e-4},
    "schedulefree_sgd": {"lr": 1.0, "momentum": 0.9},
    "schedulefree_radam": {"lr": 1e-2, "weight_decay": 1e-4},
}
COSINE = {"warmup_fraction": 0.15, "warmup_multiplier": 0.1, "cycles": 0.5}
SCHEDULE = {"schedulefree_adamw": {"warmup_fraction": 0.1},
            "schedulefree_sgd": {"warmup_fraction": 0.1},
            "schedulefree_radam": {"warmup_fraction": 0.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--only", nargs="*", default=list(CONFIGS))
    parser.add_argument("--lr", nargs="*", type=float, default=None,
                        help="learning rates to sweep for each optimizer (default: its own)")
    args = parser.parse_args()

    from search.prepare import prepare_data
    from search.spec import Spec, load_spec
    from train_fn.datasets import SEGTHOR_LABELS

    CLASS_NAMES = list(SEGTHOR_LABELS.values())  # noqa: N806
    from train_fn.loop import train

    base = load_spec("spaces/novograd.yaml").model_dump(warnings=False)
    rows = []
    runs = [(name, lr) for name in args.only for lr in (args.lr or [CONFIGS[name]["lr"]])]
    for name, lr in runs:
        tree = {**base, "optimizer": {"name": name, **CONFIGS[name], "lr": lr},
                "schedule": SCHEDULE.get(name, COSINE),
                "layers": {"early_encoder": 0.3, "deep_encoder": 0.85, "middle": 1.0,
                           "decoder": 1.5, "head": 2.0},
                "train": {**base["train"], "epochs": args.epochs,
                          "steps_per_epoch": args.steps, "threads": 1, "device": "cpu"}}
        spec = Spec.model_validate(tree)
        data_root, split = prepare_data(spec)
        t0 = time.perf_counter()
        metrics = train(spec, split, data_root)
        rows.append((name, lr, metrics, time.perf_counter() - t0))
        print(name, lr, {k: round(v, 3) for k, v in metrics.items() if k.startswith("val")},
              flush=True)
    print(f"\n{args.epochs} epochs x {args.steps} steps, validation Dice after the last epoch:\n")
    print("| optimizer | settings | mean | " + " | ".join(CLASS_NAMES) + " | time |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in CLASS_NAMES) + " | --- |")
    for name, lr, m, secs in rows:
        settings = ", ".join(f"{k} {v}" for k, v in {**CONFIGS[name], "lr": lr}.items())
        print(f"| {name} | {settings} | {m['val_dice']:.3f} | "
              + " | ".join(f"{m[f'val_dice/{c}']:.3f}" for c in CLASS_NAMES)
              + f" | {secs:.0f} s |")


if __name__ == "__main__":
    main()
