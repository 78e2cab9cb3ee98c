"""Verification: one pass of the full model over a round's drafts, then acceptance of a prefix of
each row's own drafts (:mod:`eedecode.engine.acceptance`). Every speculative mode verifies here."""

from __future__ import annotations

import torch

from ..engine.mode import Round
from .base import Proposal


def with_point_masses(state, proposal: Proposal) -> Proposal:
    """``proposal`` with its drafts' point-mass distributions when sampling (``[B, V]`` each): what
    drafts copied from the context (lookup) are distributed as."""
    if state.chooser.do_sample and not proposal.qs:
        V = state.runner.vocab_size
        d = proposal.drafts
        proposal.qs = [torch.nn.functional.one_hot(d[:, j], V).float() for j in range(d.shape[1])]
    return proposal


def verify(state, proposal: Proposal) -> Round:
    """One verification pass over the pending tokens and the proposal, then acceptance. The
    decoder rolls every layer back to the accepted lengths afterwards."""
    runner, cache = state.runner, state.cache
    if proposal.entry > 0:
        h = runner.run_layers(proposal.states, proposal.entry, runner.num_layers, cache)
    else:
        block = torch.cat([state.pending[:, None], proposal.drafts.to(state.pending.device)], 1)  # [B, k + 1]
        h = runner.run_layers(runner.embed(block), 0, runner.num_layers, cache)
    drafts = proposal.drafts.to(state.pending.device)
    tokens, counts = state.chooser.accept(
        state, drafts, proposal.exit_states, proposal.qs, runner.logits(h), proposal.counts
    )
    return Round(tokens, counts, drafted=proposal.drafted(state.active))
