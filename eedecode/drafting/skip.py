"""Drafts with some layers skipped (Draft & Verify, Zhang et al. 2024; SWIFT, Xia et al. 2024):
the model runs only a chosen set of its layers, then its final norm and LM head. The drafts' keys
and values in the layers they ran are not the full model's, so every layer is moved back before
a verification that runs them all."""

from __future__ import annotations

import torch

from .base import Drafter, DraftStats, Proposal, stop_rule
from .steps import draft_steps

Tensor = torch.Tensor


def segments(layers) -> list[tuple[int, int]]:
    """Sorted layer indices -> the contiguous runs ``[start, end)`` they form."""
    runs: list[tuple[int, int]] = []
    for i in sorted(layers):
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


class SkipDrafter(Drafter):
    """Drafts through the layers in ``layers`` only (``head``: as for exit-layer drafts)."""

    def __init__(self, layers, head=None, stats: DraftStats | None = None):
        super().__init__(stats)
        self.layers, self.head = tuple(layers), head
        self.runs = segments(self.layers)
        self.name = f"skip:{','.join(map(str, self.layers))}"

    def propose(self, state, k: int, stop=None) -> Proposal:
        runner = state.runner

        def forward(x: Tensor) -> Tensor:
            h = runner.embed(x)
            for a, b in self.runs:
                h = runner.run_layers(h, a, b, state.cache)
            return h

        rule = stop_rule(stop)
        steps = draft_steps(state, k, rule, forward, self.head)
        state.rewind()  # the layers the drafts ran through hold their (not the full model's) keys
        out, conf = steps.tensors(state)
        return Proposal(out, steps.counts, steps.qs, 0, None, confidences=conf, ruled=rule is not None)
