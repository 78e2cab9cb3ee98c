"""What a full-depth pass over ``T`` tokens per row costs relative to one token, measured on this
machine: the table a mode needs to choose how many drafts to verify at once.

Verifying ``k`` drafts is a pass over ``k + 1`` tokens. While decoding is bandwidth-bound that
costs about one step whatever ``k``, but on a CPU the products are not free: MKL's
kernel for 1 to 3 rows grows with the rows, oneDNN serves 4 rows and more at a fixed cost per call
(:mod:`eedecode.kernels.cpu_matmul`). Measured at one thread on the demo model, batch 1: ~1.15 for
2 tokens, ~1.35 for 3, ~1.45 for 4 to 8 (docs/benchmarks.md). At large batches the products
become compute-bound and the cost grows with every token, which is why speculation stops paying
there.

:func:`block_costs` times ``runner.run_layers`` over ``[0, L)`` and the logits on a scratch cache
(the minimum of a few passes: the work is deterministic, interference only adds), once per model,
batch size and length, and keeps the table while the model lives.
"""

from __future__ import annotations

import time
import weakref

import torch

#: Positions already in the scratch cache when a block is timed.
CONTEXT = 32
_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(B, T): costs}


@torch.no_grad()
def _time_blocks(runner, batch_size: int, max_tokens: int, reps: int) -> list[float]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, runner.vocab_size, (batch_size, CONTEXT), generator=g).to(runner.device)
    cache = runner.new_cache(batch_size, CONTEXT + max_tokens)
    runner.prefill(ids, cache)
    base = torch.full((batch_size,), CONTEXT, dtype=torch.long, device=cache.device)
    blocks = [runner.embed(ids[:, :T]) for T in range(1, max_tokens + 1)]
    best = [float("inf")] * max_tokens
    for _ in range(reps + 1):  # the first pass warms up
        for T, hidden in enumerate(blocks, start=1):
            cache.rollback(base, CONTEXT, uniform=True)
            t0 = time.perf_counter()
            runner.logits(runner.run_layers(hidden, 0, runner.num_layers, cache))
            best[T - 1] = min(best[T - 1], time.perf_counter() - t0)
    return [t / best[0] for t in best]


def block_costs(runner, batch_size: int, max_tokens: int, reps: int = 3) -> list[float]:
    """``costs[T - 1]``: a pass of layers ``[0, L)`` and the LM head over ``T`` tokens per row at
    ``batch_size`` rows, relative to one token, for ``T = 1 .. max_tokens`` (measured once per
    model, batch size and ``max_tokens``; on a GPU the times are those the host sees)."""
    tables = _TABLES.setdefault(runner.model, {})
    key = (batch_size, max_tokens)
    if key not in tables:
        tables[key] = _time_blocks(runner, batch_size, max_tokens, reps)
    return tables[key]


def preferred_block_sizes(costs: list[float]) -> list[int]:
    """The block sizes worth verifying: ``T`` such that every larger block costs more. (If a larger
    block costs no more, verifying fewer tokens saves nothing.)"""
    return [T for T in range(1, len(costs) + 1) if all(c > costs[T - 1] for c in costs[T:])]
