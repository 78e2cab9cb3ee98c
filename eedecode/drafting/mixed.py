"""Mixed drafts in a batch: rows that found a lookup match take their lookup drafts, the others
draft from an exit layer. The rows' drafts no longer match the exit states cached in the shallow
layers, so every layer is moved back and verification runs them all. Greedy decoding only: a
sampled round would need each row's draft distribution from its own drafter."""

from __future__ import annotations

import torch

from .base import Drafter, Proposal
from .exit import ExitDrafter
from .lookup import LookupDrafter


class MixedDrafter(Drafter):
    """Per row, ``lookup``'s drafts (found this round) where it matched, else ``exit``'s."""

    def __init__(self, lookup: LookupDrafter, exit: ExitDrafter):
        super().__init__(exit.stats)
        self.lookup, self.exit = lookup, exit
        self.name = exit.name  # what it learns is about its exit drafts

    def propose(self, state, k: int, stop=None) -> Proposal:
        found = self.lookup.propose(state, k)
        ex = self.exit.propose(state, k, stop)
        state.rewind()
        use = found.counts.to(ex.drafts.device) > 0  # [B]
        width = max(ex.k, found.k)

        def widen(d):
            return torch.nn.functional.pad(d.to(ex.drafts.device), (0, width - d.shape[1]))

        drafts = torch.where(use[:, None], widen(found.drafts), widen(ex.drafts))
        ex_counts = ex.counts if ex.counts is not None else torch.full_like(use, ex.k, dtype=torch.long)
        counts = torch.where(use, found.counts.to(use.device), ex_counts)
        return Proposal(drafts, counts, [], 0, None, step_seconds=ex.step_seconds, ruled=True)

    def observe(self, state, proposal: Proposal, counts) -> None:
        """Nothing: the rows' drafts came from two drafters (the exit drafter's calibration is fed
        by its own rounds)."""
