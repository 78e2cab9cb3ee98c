"""The demo checkpoints shipped inside the package (trained by :mod:`eedecode.train` on the Python
standard library): ``early_exit`` (LayerSkip recipe, the default model) and ``plain``."""

from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent / "demo_models"
VARIANTS = ("early_exit", "plain")


def demo_model_path(variant: str = "early_exit") -> Path:
    if variant not in VARIANTS:
        raise ValueError(f"variant: must be one of {VARIANTS}, got {variant!r}")
    path = DEMO_DIR / variant
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"demo model {variant!r} is missing at {path}; train it with `eedecode train --variant {variant}`"
        )
    return path
