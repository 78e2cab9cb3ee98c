"""The KV cache of the layers an early-exited token skipped: copy or recompute.

A token that leaves at depth ``d`` of ``L`` has no keys and values in layers ``[d, L)``, yet later
tokens that go deeper attend to it there. Two policies fill the gap:

* :class:`CopyKV`, state propagation (CALM: Schuster et al. 2022, "Confident Adaptive Language
  Modeling"). The exit hidden state stands in as the input of every skipped layer, and each
  layer's own input norm, k/v projections and RoPE give the token's K/V there
  (:meth:`~eedecode.model.runner.ModelRunner.write_kv`). It is cheap (two projections a layer) but
  approximate: deeper layers attend to states the full model would not have produced.
* :class:`DeferredKV`, deferred recomputation (FREE: Bae et al. 2023, "Fast and Robust
  Early-Exiting Framework for Autoregressive Language Models with Synchronized Parallel
  Decoding"; SkipDecode: Del Corro et al. 2023). The skipped layers of exited tokens run later,
  batched with the next token that goes deeper: a token entering layer ``l`` takes along every
  earlier token that has not been through ``l`` yet. So each layer's KV equals the full model's
  before any deeper layer reads it. It is exact, and pays for the deferred work when a token goes
  deep.

Both walk one round's new token up the layers (``run``) and settle the cache at the depth where
the round stops (``finish``). In a batch the round stops where its last row exits, so every row's
cache keeps the same per-layer lengths. A row that exited earlier keeps running: under
``DeferredKV`` with its true state, which writes the exact KV at once; under ``CopyKV`` frozen at
its exit state, which writes the copied KV.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..model.cache import KVCache
from ..model.runner import ModelRunner

Tensor = torch.Tensor


class SkippedKV:
    """A policy for the skipped layers' KV. ``layer_tokens`` counts token-layers run through
    attention and MLP, ``kv_tokens`` token-layers that only had K/V written (statistics)."""

    name: ClassVar[str]

    def __init__(self, runner: ModelRunner):
        self.runner = runner
        self.cache: KVCache | None = None
        self.depth = 0  # layers the round's new token has been through
        self.layer_tokens = 0
        self.kv_tokens = 0

    def begin(self, cache: KVCache, x: Tensor) -> None:
        """A new round: ``x`` ``[B, 1, H]`` is the embedded pending token."""
        raise NotImplementedError

    def run(self, to: int, exited: Tensor | None = None, exit_hidden: Tensor | None = None) -> Tensor:
        """Run layers ``[depth, to)``; return the new token's state at depth ``to``, ``[B, H]``.
        ``exited`` ``[B]`` and ``exit_hidden`` ``[B, H]``: the rows already exited and their states."""
        raise NotImplementedError

    def finish(self, final_hidden: Tensor) -> None:
        """The round stopped at ``depth``; ``final_hidden`` ``[B, H]`` is each row's exit state."""
        raise NotImplementedError

    def flush(self) -> None:
        """Bring every layer's KV up to date now (nothing to do unless work was deferred)."""

    @property
    def deferred_tokens(self) -> int:
        return 0


class CopyKV(SkippedKV):
    """The exit state's own K/V in every skipped layer (CALM's state propagation)."""

    name = "copy"

    def begin(self, cache, x):
        self.cache, self.h, self.depth = cache, x, 0

    def run(self, to, exited=None, exit_hidden=None):
        runner, n = self.runner, to - self.depth
        if n > 0 and exited is None:
            self.h = runner.run_layers(self.h, self.depth, to, self.cache)
        elif n > 0:  # rows that exited go on with their exit state as every layer's input
            frozen = exit_hidden[:, None]
            for i in range(self.depth, to):
                x = torch.where(exited[:, None, None], frozen, self.h)
                self.h = runner.run_layers(x, i, i + 1, self.cache)
        self.layer_tokens += max(n, 0)
        self.depth = max(self.depth, to)
        return self.h[:, 0]

    def finish(self, final_hidden):
        L = self.runner.num_layers
        if self.depth < L:
            self.runner.write_kv(final_hidden[:, None], self.depth, L, self.cache)
            self.kv_tokens += L - self.depth


class DeferredKV(SkippedKV):
    """Skipped layers run later, together with the next token that goes through them (FREE,
    SkipDecode). ``groups``: the tokens still owed layers, oldest first, as ``(depth, states
    [B, n, H])``. Depths strictly decrease along the list, because a token that goes deeper
    takes every waiting token it passes along with it."""

    name = "recompute"

    def __init__(self, runner):
        super().__init__(runner)
        self.groups: list[tuple[int, Tensor]] = []

    @property
    def deferred_tokens(self) -> int:
        return sum(states.shape[1] for _, states in self.groups)

    def begin(self, cache, x):
        self.cache, self.block, self.depth = cache, x, 0

    def run(self, to, exited=None, exit_hidden=None):
        while self.depth < to:
            if self.groups and self.groups[-1][0] == self.depth:  # waiting tokens join: older first
                self.block = torch.cat([self.groups.pop()[1], self.block], 1)
            stop = min(to, self.groups[-1][0]) if self.groups else to
            self.block = self.runner.run_layers(self.block, self.depth, stop, self.cache)
            self.layer_tokens += self.block.shape[1] * (stop - self.depth)
            self.depth = stop
        return self.block[:, -1]

    def finish(self, final_hidden):
        if self.depth < self.runner.num_layers:  # the block waits at this depth
            block = self.block
            if self.groups and self.groups[-1][0] == self.depth:
                block = torch.cat([self.groups.pop()[1], block], 1)
            self.groups.append((self.depth, block))
        self.block = None

    def flush(self):
        """Run every waiting token through the layers it still owes (after this, every layer holds
        every token's exact KV)."""
        if self.groups:
            self.depth, self.block = self.groups.pop()
            self.run(self.runner.num_layers)
            self.block = None


KV_STRATEGIES: dict[str, type[SkippedKV]] = {c.name: c for c in (CopyKV, DeferredKV)}
