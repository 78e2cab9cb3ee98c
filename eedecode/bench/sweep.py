"""The exit layer x draft length sweep: in every cell of the grid, HF generate, HF
assistant_early_exit and every eedecode mode take turns on each prompt at batch size 1
(:func:`~eedecode.bench.measure.time_methods`), so each cell's speed-ups are paired measurements.

A cell records every method's tokens/s and speed-up over HF generate; eedecode self-speculative
(the method the grid is for) also its speed-up over eedecode autoregressive, acceptance rate and
tokens per round; ``identical_to_hf`` is the fewest prompts any method decoded exactly as HF did.
Lossy modes (early exit) have no exit layer or draft length to sweep and are left out.
"""

from __future__ import annotations

from .measure import check_count, encode_prompts, time_methods, weights_layout
from .methods import AR, HF, Speculation, available_methods

FOCUS = "eedecode_ss"  # the method whose speed-up the heatmap draws


def sweep_methods() -> list[str]:
    """HF generate, HF assistant_early_exit and every registered lossless eedecode mode (not the
    opt-in oracle bound)."""
    table = available_methods().items()
    eedecode = [n for n, m in table if n.startswith("eedecode_") and m.lossless and m.in_default]
    return [HF, "hf_early_exit", *eedecode]


def run_sweep(
    model,
    tokenizer,
    prompts,
    *,
    exit_layers,
    draft_lengths,
    confidence_threshold=None,
    max_new_tokens=64,
    warmup=1,
    repeats=1,
    show_progress=True,
) -> dict:
    """Every cell of ``exit_layers`` x ``draft_lengths``. Returns the measured record: ``cells``
    and ``settings``."""
    from tqdm.auto import tqdm

    grid = [(e, k) for e in exit_layers for k in draft_lengths]
    _check_sweep(prompts, grid, model.config.num_hidden_layers, confidence_threshold, max_new_tokens)
    check_count("warmup", warmup, minimum=0)
    check_count("repeats", repeats)
    device = next(model.parameters()).device
    prompt_ids = encode_prompts(tokenizer, prompts, model.config.vocab_size, device)
    methods = sweep_methods()
    cells = []
    hf_weights = weights_layout(model)
    for e, k in tqdm(grid, desc="sweep", disable=not show_progress, leave=False):
        spec = Speculation(e, k, confidence_threshold)
        kw = dict(max_new_tokens=max_new_tokens, warmup=warmup, repeats=repeats)
        cells.append(_cell(e, k, time_methods(model, methods, prompt_ids, spec=spec, **kw)))
    return {
        "cells": cells,
        "settings": {
            "max_new_tokens": max_new_tokens,
            "num_prompts": len(prompt_ids),
            "repeats": repeats,
            "draft_confidence_threshold": confidence_threshold,
            "hf_weights": hf_weights,
        },
    }


def _cell(exit_layer: int, num_speculations: int, res: dict) -> dict:
    cell = {"exit_layer": exit_layer, "num_speculations": num_speculations}
    for name, r in res.items():
        cell[f"{name}_tokens_per_s"] = r.tokens_per_s
    focus = res[FOCUS]
    cell.update(
        acceptance_rate=focus.acceptance_rate,
        mean_tokens_per_round=focus.mean_tokens_per_round,
        speedup_vs_hf=focus.speedup_vs_hf,
        speedup_vs_ar=focus.speedup_vs_ar,
    )
    for name, r in res.items():
        if name not in (HF, FOCUS):
            cell[f"{name}_speedup_vs_hf"] = r.speedup_vs_hf
        if name.startswith("eedecode_") and name not in (AR, FOCUS) and r.acceptance_rate is not None:
            cell[f"{name}_acceptance_rate"] = r.acceptance_rate
    cell["identical_to_hf"] = min(r.identical_to_hf for name, r in res.items() if name != HF)
    return cell


def _check_sweep(prompts, grid, num_layers, confidence_threshold, max_new_tokens) -> None:
    if not prompts:
        raise ValueError("prompts: need at least one prompt")
    if not grid:
        raise ValueError("exit_layers, draft_lengths: need at least one of each")
    for e, k in grid:
        Speculation(e, k, confidence_threshold).validate(num_layers)
    check_count("max_new_tokens", max_new_tokens)
