"""The plain step: the pending token through every layer, one new token per row. Autoregressive
decoding is nothing else, and a speculative mode takes it whenever no draft is worth making."""

from __future__ import annotations

import torch

from .mode import Round


def plain_step(state) -> Round:
    """One round without drafts on a :class:`~eedecode.engine.state.DecodingState`."""
    runner = state.runner
    h = runner.run_layers(runner.embed(state.pending[:, None]), 0, runner.num_layers, state.cache)
    token = state.chooser.choose(state, runner.logits(h[:, 0]))  # [B]
    return Round(token[:, None], torch.ones_like(token))
