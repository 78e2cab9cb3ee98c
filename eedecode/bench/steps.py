"""The benchmark's clock and the cost of its steps: one draft step and one verification pass
against a plain step, measured with the drafters' own pieces
(:mod:`eedecode.drafting.step_costs`), read on this module's clock (which tests replace)."""

from __future__ import annotations

import statistics
import time

import torch

from ..drafting import step_costs
from ..drafting.step_costs import step_functions  # noqa: F401 (re-exported)

clock = time.perf_counter  # the benchmark's clock (tests replace it)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def sync(device) -> None:
    """Wait for the device, so that a clock read after it sees the work done."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure_step_costs(
    model, prompt: torch.Tensor, exit_layer: int, num_speculations: int, reps: int = 60
) -> dict:
    """:func:`eedecode.drafting.step_costs.measure_step_costs` on the benchmark's clock."""
    return step_costs.measure_step_costs(model, prompt, exit_layer, num_speculations, reps, clock=clock)
