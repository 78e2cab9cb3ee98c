"""Saving a trained model: safetensors weights, config, tokenizer, ``training_log.json``, and the
recommended decoding settings (``eedecode.json``, read by
:func:`eedecode.model.loading.recommended_settings`).

The recommendation is predicted from the held-out agreement of each exit with the last layer, by
the ideal speed-up of speculative decoding (Leviathan et al. 2023, arXiv 2211.17192),
with the draft cost of ``E`` of ``L`` layers taken as ``E / L``; it is not a measurement.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from ..model.costs import expected_tokens_per_round, ideal_speedup
from ..model.loading import SETTINGS_FILE

MAX_SPECULATIONS = 8


def recommend_decoding(agreement: Sequence[float], max_speculations: int = MAX_SPECULATIONS) -> dict:
    """The ``eedecode.json`` settings from per-depth agreement with the last layer (``agreement[d -
    1]`` for the exit after ``d`` of ``L`` layers): the exit layer ``E`` in ``1..L-1`` and draft
    count ``k`` in ``1..max_speculations`` of the highest ideal speed-up
    (:func:`~eedecode.model.costs.ideal_speedup` with acceptance ``a`` and draft cost ``E / L``;
    the shallowest and fewest on ties)."""
    L = len(agreement)
    if L < 2:
        raise ValueError(f"agreement: need at least 2 layers, got {L}")
    best = max(
        (ideal_speedup(expected_tokens_per_round(agreement[e - 1], k), k, e / L, 1.0), -e, -k)
        for e in range(1, L)
        for k in range(1, max_speculations + 1)
    )
    speedup, exit_layer, num_speculations = best[0], -best[1], -best[2]
    return {
        "exit_layer": exit_layer,
        "num_speculations": num_speculations,
        "predicted_speedup": round(speedup, 4),
        "source": "eedecode train: predicted from held-out agreement "
        f"(ideal speed-up {speedup:.2f}), not measured",
    }


def machine_info(device: torch.device) -> dict:
    """The machine and library versions, for the training log."""
    import sentencepiece
    import transformers

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentencepiece": sentencepiece.__version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def save_checkpoint(
    model,
    tokenizer,
    output_dir: str | Path,
    save_dtype: str,
    log: dict | None = None,
    settings: dict | None = None,
) -> None:
    """Saves safetensors weights in ``save_dtype``, config, generation config, tokenizer, the
    training log and the recommended decoding settings (``eedecode.json``)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, save_dtype)
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if log is not None:
        (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    if settings is not None:
        (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    for f in out.iterdir():  # safetensors writes 0600; package data must be readable by all
        f.chmod(0o644)
