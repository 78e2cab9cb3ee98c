"""Plain decoding: one token per round through all layers, on the same runner and cache as every
other mode (the honest baseline the speculative modes are measured against)."""

from __future__ import annotations

from ..engine.mode import Mode, Round, register
from ..engine.steps import plain_step


@register
class Autoregressive(Mode):
    name, short = "autoregressive", "ar"
    description = "one token per step through every layer (the baseline)"
    rolls_back = False  # every running row advances by exactly one token in every layer

    def round(self, state, max_tokens: int) -> Round:
        return plain_step(state)

    def describe(self) -> str:
        return "autoregressive"

    def speedup_over_plain(self, stats, decode_rate: float):
        return 1.0, "this is plain decoding"
