"""The draft loop that exit-layer and layer-skip drafters share: one draft step after another,
each a forward pass to some hidden state and a token chosen from it, with an optional stop rule
that lets every row stop on its own."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass
class DraftSteps:
    """What the draft loop made: per step the states it drafted from, the drafts ``[B, 1]``, their
    draft distributions and confidences; per row the drafts it proposed (with a stop rule); the
    wall time of each step (when the host waited on it); the last draft ``[B, 1]``."""

    last: Tensor
    states: list
    drafts: list
    qs: list
    confidences: list
    counts: Tensor | None
    seconds: list

    def tensors(self, state) -> tuple[Tensor, Tensor | None]:
        """The drafts ``[B, k']`` and their confidences ``[B, k']`` (None without drafts)."""
        out = torch.cat(self.drafts, 1) if self.drafts else state.pending.new_zeros(state.pending.shape[0], 0)
        conf = torch.stack(self.confidences, 1) if self.confidences else None
        return out, conf


def _context(state, drafts: list[Tensor]) -> Tensor | None:
    """The drafts so far, for logits processors that read the context (None when none do)."""
    if state.chooser.pipeline.context_free or not drafts:
        return None
    return torch.cat(drafts, 1)


def draft_steps(state, k: int, rule, forward, head=None) -> DraftSteps:
    """Up to ``k`` draft steps: ``forward`` takes tokens ``[B, 1]`` to the states ``[B, 1, H]`` a
    draft is chosen from (by the token chooser, through ``head`` when given: a translator or a
    smaller vocabulary, :class:`~eedecode.drafting.head.DraftHead`). With a stop ``rule``, a row
    stops proposing after the draft the rule turns it down at, and drafting ends when no row
    goes on (one host read per step)."""
    x = state.pending[:, None]  # [B, 1]
    steps = DraftSteps(x, [], [], [], [], None, [])
    alive = rule.start(state.active) if rule is not None else None
    steps.counts = torch.zeros_like(state.pending) if rule is not None else None
    clock = time.perf_counter()
    for i in range(k):
        h = forward(x)
        steps.states.append(h)
        # without a stop rule nothing reads a greedy draft's confidence: not computed
        token, q, confidence = state.chooser.draft(
            state, h[:, 0], _context(state, steps.drafts), i, rule is not None, head
        )
        x = token[:, None]
        steps.drafts.append(x)
        if confidence is not None:
            steps.confidences.append(confidence)
        if q is not None:
            steps.qs.append(q)
        if rule is not None:
            steps.counts += alive
            alive = rule.keep(alive, confidence, token)
            going_on = i + 1 < k and bool(alive.any())
            now = time.perf_counter()
            steps.seconds.append(now - clock)
            clock = now
            if not going_on:
                break
    steps.last = x
    return steps
