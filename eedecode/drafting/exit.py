"""Early-exit drafts (LayerSkip, Elhoushi et al. 2024): the model's own first ``E`` layers and its
own exit head (final norm and LM head) draft; verification runs layers ``[E, L)`` over the
drafts' layer-``E`` states, the *exit query cache*, so layers ``< E`` never see a draft twice.

With ``rerun=True`` verification runs every layer over the drafts again, as Hugging Face's
``assistant_early_exit`` does (the drafts' shallow keys and values are dropped first): the
greedy tokens are the same; it exists to measure what the exit query cache saves.
"""

from __future__ import annotations

import torch

from .base import Drafter, DraftStats, Proposal, stop_rule
from .steps import draft_steps

Tensor = torch.Tensor


class ExitDrafter(Drafter):
    """Drafts from layers ``[0, exit_layer)`` and the exit head (``head``: a translator or a
    smaller vocabulary in front of it, :class:`~eedecode.drafting.head.DraftHead`)."""

    def __init__(self, exit_layer: int, head=None, stats: DraftStats | None = None, rerun: bool = False):
        super().__init__(stats)
        self.exit_layer, self.rerun = exit_layer, rerun
        self.head = None if head is None else head.with_depth(exit_layer)
        self.name = f"exit:E={exit_layer}"

    def forward(self, state, x: Tensor) -> Tensor:
        """Tokens ``[B, T]`` through layers ``[0, E)``, into the cache: their exit states ``[B, T, H]``."""
        runner = state.runner
        return runner.run_layers(runner.embed(x), 0, self.exit_layer, state.cache)

    def propose(self, state, k: int, stop=None) -> Proposal:
        rule = stop_rule(stop)
        steps = draft_steps(state, k, rule, lambda x: self.forward(state, x), self.head)
        out, conf = steps.tensors(state)
        kept = out.shape[1]
        seconds = steps.seconds or None
        if self.rerun:  # forget the drafts' shallow KV: verification runs every layer again
            state.rewind()
            states = torch.cat(steps.states, 1) if steps.states else None
            return Proposal(out, steps.counts, steps.qs, 0, None, states, conf, seconds, rule is not None)
        last = self.forward(state, steps.last)  # the last draft's exit state
        block = torch.cat([*steps.states, last], 1)  # [B, k' + 1, H]: the exit query cache
        return Proposal(
            out,
            steps.counts,
            steps.qs,
            self.exit_layer,
            block,
            block[:, :kept],
            conf,
            seconds,
            rule is not None,
        )
