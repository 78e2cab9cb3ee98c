"""Tokens-per-second benchmark of HF ``generate``, HF's assisted decoding (``assistant_early_exit``,
prompt lookup), every registered eedecode mode and llama.cpp, on one model and a prompt set; and a sweep
over exit layers x draft lengths.

:mod:`.method` says what a method is and :mod:`.methods` names them (from the mode registry; llama.cpp
on the same weights: :mod:`.llamacpp`), :mod:`.measure` times them (interleaved per prompt, paired
ratios, latency from :mod:`.latency`, the share of the memory-bandwidth floor, step costs) and
:mod:`.results` makes each method's result, :mod:`.sweep` runs the grid, :mod:`.report` derives the
ideal speed-up and efficiency and draws the table, the legend and the heatmap, :mod:`.chart` the
speed-up bar chart, and :mod:`eedecode.cli.bench` is ``eedecode bench``. Nothing here asserts a time.
"""

from __future__ import annotations

from .chart import plot_speedups
from .measure import MethodResult, load_prompts, run_measurements, time_methods
from .methods import Speculation, available_methods, method_names
from .report import (
    complete,
    derive,
    expected_tokens_per_round,
    ideal_speedup,
    markdown_table,
    plot_batches,
    plot_sweep,
    speedup,
)
from .steps import measure_step_costs
from .sweep import run_sweep


def run_benchmark(model, tokenizer, prompts: list[dict], **kwargs) -> dict:
    """:func:`~.measure.run_measurements` (same arguments), then the machine and the derived columns: the
    record ``eedecode bench`` writes."""
    return complete(run_measurements(model, tokenizer, prompts, **kwargs), model)


__all__ = [
    "MethodResult",
    "Speculation",
    "available_methods",
    "complete",
    "derive",
    "expected_tokens_per_round",
    "ideal_speedup",
    "load_prompts",
    "markdown_table",
    "run_measurements",
    "measure_step_costs",
    "method_names",
    "plot_batches",
    "plot_speedups",
    "plot_sweep",
    "run_benchmark",
    "run_sweep",
    "speedup",
    "time_methods",
]
