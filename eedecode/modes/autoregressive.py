"""Plain decoding: one token per round through all layers, on the same runner and cache as every
other mode (the honest baseline the speculative modes are measured against)."""

from __future__ import annotations

import torch

from ..engine.mode import Mode, Round, register


@register
class Autoregressive(Mode):
    name, short = "autoregressive", "ar"
    description = "one token per step through every layer (the baseline)"
    rolls_back = False  # every running row advances by exactly one token in every layer

    def round(self, state, max_tokens: int) -> Round:
        runner = self.runner
        h = runner.run_layers(runner.embed(state.pending[:, None]), 0, runner.num_layers, state.cache)
        token = state.chooser.choose(state, runner.logits(h[:, 0]))  # [B]
        return Round(token[:, None], torch.ones_like(token))

    def describe(self) -> str:
        return "autoregressive"
