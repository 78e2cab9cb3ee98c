"""The oracle bound: early-exit drafting that stops exactly when a draft would be rejected.

The oracle knows the greedy continuation in advance (plain decoding's, computed first and not
timed). Each row drafts from exit layer ``E`` until its draft differs from that continuation. The
wrong draft is kept, as every stop rule keeps the draft it stops at, because it has already been
computed. No stop rule that looks only at the drafts can waste fewer draft steps, so the oracle's
speed bounds every policy that drafts from layer ``E``. Every benchmark reads its policies against
this bound. The mode is registered only while the benchmark runs it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..strategies import Strategy, option, register, unregister
from ..strategies.drafting import draft_from_exit, verify

ORACLE = "oracle"


class ReferenceStop:
    """Keep a row drafting while its draft equals the reference token at that position."""

    def __init__(self, reference: torch.Tensor, out_len: torch.Tensor):
        self.reference, self.out_len, self.i = reference, out_len, 0

    def start(self, active):
        self.i = 0
        return active.clone()

    def keep(self, alive, confidence, token):
        pos = (self.out_len + self.i).clamp(max=self.reference.shape[1] - 1)
        self.i += 1
        return alive & (token == self.reference.gather(1, pos[:, None])[:, 0])


@dataclass(frozen=True)
class OracleOptions:
    exit_layer: int = option(1, "draft from layers [0, E)", cli=False)
    max_drafts: int = option(8, "the most drafts per round", cli=False)
    reference: object = option(None, "the greedy continuation [B, new] (plain decoding's)", cli=False)

    def validate(self, num_layers: int) -> None:
        if not isinstance(self.reference, torch.Tensor):
            raise ValueError("reference: the oracle needs plain decoding's continuation as a tensor")


class Oracle(Strategy):
    name, short = ORACLE, "oracle"
    description = "early-exit drafts that stop exactly where they would be rejected (a bound)"
    Options = OracleOptions
    benchmark_settings = ("exit_layer",)

    @property
    def max_drafts(self) -> int:
        return self.options.max_drafts

    def round(self, state, max_tokens: int):
        k = min(self.options.max_drafts, max_tokens - 1)
        reference = self.options.reference.to(state.out.device)
        stop = ReferenceStop(reference, state.out_len)
        return verify(state, draft_from_exit(state, self.options.exit_layer, k, stop))

    def describe(self) -> str:
        return f"oracle E={self.options.exit_layer}"


@contextlib.contextmanager
def oracle_registered():
    """The oracle as a registered mode, for as long as the block runs."""
    register(Oracle)
    try:
        yield Oracle
    finally:
        unregister(ORACLE)
