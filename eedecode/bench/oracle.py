"""The oracle bound: early-exit drafting that drafts exactly the tokens that will be accepted.

The oracle knows, before the timed run, plain decoding's greedy continuation and, at every
position of it, whether the exit layer's top-1 (teacher-forced on that continuation) equals the
next token: :func:`accepted_runs` turns that into, per position, how many consecutive drafts
from there would be accepted. Each round, every row drafts exactly that many (at most
``max_drafts``); when no row has a draft worth making, the round is one plain step. No draft is
ever rejected (up to floating-point near-ties between the teacher-forced and the incremental exit
states), so no policy that drafts from layer ``E`` wastes fewer draft steps or makes longer
accepted runs: the oracle's speed bounds every such policy, and every benchmark reads its
policies against it. Reading how far to draft costs one extra host read per round. The mode is
registered only while the benchmark runs it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..drafting.exit import ExitDrafter
from ..drafting.verify import verify
from ..engine.steps import plain_step
from ..modes import Mode, option, register, unregister

ORACLE = "oracle"


@torch.no_grad()
def accepted_runs(model, ids: torch.Tensor, mask, reference: torch.Tensor, exit_layer: int) -> torch.Tensor:
    """``[B, new + 1]``: at new-token position ``j``, how many drafts in a row from layer
    ``exit_layer`` would be accepted (teacher-forced on ``reference [B, new]``, plain decoding's
    continuation of the left-padded prompts ``ids [B, P]``); 0 at ``new``. Each row runs alone,
    without its padding, through the engine's own layers and exit head."""
    from ..model.runner import ModelRunner

    runner = ModelRunner(model)
    new = reference.shape[1]
    good = torch.zeros(reference.shape, dtype=torch.bool, device=reference.device)
    for b in range(ids.shape[0]):
        real = ids[b] if mask is None else ids[b][mask[b].bool()]
        row = torch.cat([real, reference[b]])[None]  # [1, P_b + new]
        h = runner.run_layers(runner.embed(row), 0, exit_layer)
        predicted = runner.exit_head(h[0], stats={"argmax"}).argmax  # [P_b + new]
        # draft j is made from the state at P_b - 1 + j and accepted when it is reference[j]
        good[b] = predicted[len(real) - 1 : len(real) - 1 + new] == reference[b]
    runs = torch.zeros(reference.shape[0], new + 1, dtype=torch.long, device=reference.device)
    for j in range(new - 1, -1, -1):
        runs[:, j] = good[:, j] * (1 + runs[:, j + 1])
    return runs


class RunStop:
    """Keep row ``b`` drafting while it has made fewer than ``n[b]`` drafts."""

    def __init__(self, n: torch.Tensor):
        self.n, self.i = n, 0

    def start(self, active):
        self.i = 0
        return active & (self.n > 0)

    def keep(self, alive, confidence, token):
        self.i += 1
        return alive & (self.n > self.i)


@dataclass(frozen=True)
class OracleOptions:
    exit_layer: int = option(1, "draft from layers [0, E)", cli=False)
    max_drafts: int = option(8, "the most drafts per round", cli=False)
    runs: object = option(None, "accepted_runs(...) of this batch at this exit layer [B, new + 1]", cli=False)

    def validate(self, num_layers: int) -> None:
        if not isinstance(self.runs, torch.Tensor):
            raise ValueError("runs: the oracle needs accepted_runs(...) of the batch as a tensor")


class Oracle(Mode):
    name, short = ORACLE, "oracle"
    description = "early-exit drafts of exactly the tokens that will be accepted (a bound)"
    Options = OracleOptions
    benchmark_settings = ("exit_layer",)

    @property
    def max_drafts(self) -> int:
        return self.options.max_drafts

    def round(self, state, max_tokens: int):
        runs = self.options.runs.to(state.out.device)
        at = state.out_len.clamp(max=runs.shape[1] - 1)[:, None]
        n = runs.gather(1, at)[:, 0] * state.active
        k = min(self.options.max_drafts, max_tokens - 1, int(n.max()))  # the oracle's host read
        if k <= 0:
            return plain_step(state)
        drafter = ExitDrafter(self.options.exit_layer)
        return verify(state, drafter.propose(state, k, RunStop(n.clamp(max=k))))

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
