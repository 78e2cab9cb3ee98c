"""The cost model: what a draft step and a verification cost, in plain decoding steps, and what a
round of drafting is therefore worth. The adaptive mode plans with it, the benchmark reports its
ideal speed-up with it, and the agreement study predicts speed with it.

* **Measured**: :func:`block_costs` (and, from two points, :func:`linear_block_costs`) times a
  full-depth pass (layers ``[0, L)`` and the logits) over
  ``T`` tokens per row on a scratch cache, relative to one token, once per model, batch size and
  length (the minimum of a few passes: the work is deterministic, interference only adds). It is
  what verifying ``T - 1`` drafts costs. While decoding is bandwidth-bound that is about one step
  whatever ``T``; on a CPU the products are not free (which library serves how many rows:
  :mod:`eedecode.kernels.cpu_matmul`), and at large batches every extra token costs compute.
* **By the weights a step reads**: :func:`layer_cost`, a draft step from exit layer ``E`` as the
  share of the weights it reads (its layers and the LM head), before any draft step was timed.
* **The round**: :func:`expected_tokens_per_round` (i.i.d. acceptance, Leviathan et al. 2023) and
  :func:`ideal_speedup`, ``mean(n) / (mean(d)·c + v)``.

Tables are kept in the model's :class:`~eedecode.model.memory.ModelMemory`.
"""

from __future__ import annotations

import time

import torch

from ..kernels.cpu_matmul import LIBRARY_ROWS, ONEDNN_NEVER, library_before_timing
from .memory import memory_of

#: Positions already in the scratch cache when a block is timed.
CONTEXT = 32


@torch.no_grad()
def _time_blocks(runner, batch_size: int, sizes: list[int], reps: int) -> list[float]:
    """Seconds of a full-depth pass over ``T`` tokens per row, for each ``T`` in ``sizes``
    (relative to the first): the minimum of ``reps + 1`` passes (the work is deterministic,
    interference only adds)."""
    timed = _scratch_passes(runner, batch_size, sizes)
    best = [float("inf")] * len(sizes)
    for _ in range(reps + 1):  # the sizes take turns, so that drifts of the machine touch them alike
        for i in range(len(sizes)):
            best[i] = min(best[i], timed(i))
    return [t / best[0] for t in best]


#: oneDNN serves blocks only if it is at least this much faster than MKL (the rule that does not
#: depend on a noisy difference is MKL's: its one-row kernel serves every decoding step).
ONEDNN_MARGIN = 0.97


def block_library(model, weights: list[torch.Tensor]) -> tuple[int, bool]:
    """A new runner's threshold (from how many rows oneDNN serves products) and whether it still
    has to be timed: what :func:`choose_block_library` measured on ``model`` at this thread count,
    else :func:`~eedecode.kernels.cpu_matmul.library_before_timing` of its ``weights``."""
    known = memory_of(model).onednn_from_rows.get(torch.get_num_threads())
    return (known, False) if known is not None else library_before_timing(weights)


@torch.no_grad()
def choose_block_library(runner, reps: int = 2) -> int:
    """From how many rows oneDNN should serve the products of a model's blocks (a verification of
    drafts, a batch, a prompt), measured: a full-depth pass over each of :data:`LIBRARY_ROWS`
    tokens with each library, taking turns, the minimum of ``reps`` after a warm-up turn. The
    threshold is the smallest of those row counts from which oneDNN was faster by
    :data:`ONEDNN_MARGIN` at every larger one; :data:`~eedecode.kernels.cpu_matmul.ONEDNN_NEVER`
    if it was not faster at the largest. Which is faster depends on the CPU and the shapes: on an
    Intel Xeon MKL was faster at every row count, on the demo model and SmolLM2; on an AMD EPYC
    oneDNN was 2x faster at 16-48 rows. Larger blocks (long prompts) follow the 16-row choice.
    Measured once per model and thread count (the runner asks before its first block of 2 to 16
    rows, a short prompt's included: one scratch prefill and 3 x 2 passes per row count)
    and kept in the model's memory; sets ``runner.onednn_from``. A runner without packed matrices
    has nothing to choose."""
    runner._choose_library = False  # asked once per runner
    if all(p is None for p in runner.packed) and runner.head_t is None:
        return runner.onednn_from  # its products do not read the threshold
    chosen = memory_of(runner.model).onednn_from_rows
    threads = torch.get_num_threads()
    if threads not in chosen:
        before = runner.onednn_from
        best = {(T, lib): float("inf") for T in LIBRARY_ROWS for lib in (True, False)}
        try:
            timed = _scratch_passes(runner, 1, list(LIBRARY_ROWS))
            for turn in range(reps + 1):  # the first turn warms both libraries up
                for i, T in enumerate(LIBRARY_ROWS):
                    for onednn in (True, False):
                        runner.onednn_from = 2 if onednn else ONEDNN_NEVER
                        seconds = timed(i)
                        if turn:
                            best[T, onednn] = min(best[T, onednn], seconds)
        except BaseException:
            runner.onednn_from, runner._choose_library = before, True  # as it was: ask again next time
            raise
        threshold = ONEDNN_NEVER
        for T in reversed(LIBRARY_ROWS):
            if best[T, True] >= ONEDNN_MARGIN * best[T, False]:
                break
            threshold = T
        chosen[threads] = threshold
    runner.onednn_from = chosen[threads]
    return runner.onednn_from


def _scratch_passes(runner, batch_size: int, sizes: list[int]):
    """A scratch cache holding a random context of :data:`CONTEXT` tokens, and ``timed(i)``: the
    seconds of one full-depth pass over ``sizes[i]`` tokens per row after it (the cache rolled
    back before each)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, runner.vocab_size, (batch_size, CONTEXT), generator=g).to(runner.device)
    cache = runner.new_cache(batch_size, CONTEXT + max(sizes))
    runner.prefill(ids, cache)
    base = torch.full((batch_size,), CONTEXT, dtype=torch.long, device=cache.device)
    blocks = [runner.embed(ids[:, :T]) for T in sizes]

    @torch.no_grad()
    def timed(i: int) -> float:
        hidden = blocks[i]
        cache.rollback(base, CONTEXT, uniform=True)
        if hidden.is_cuda:
            torch.cuda.synchronize(hidden.device)
        t0 = time.perf_counter()
        runner.logits(runner.run_layers(hidden, 0, runner.num_layers, cache))
        if hidden.is_cuda:
            torch.cuda.synchronize(hidden.device)
        return time.perf_counter() - t0

    return timed


def block_costs(runner, batch_size: int, max_tokens: int, reps: int = 3) -> list[float]:
    """``costs[T - 1]``: a pass of layers ``[0, L)`` and the LM head over ``T`` tokens per row at
    ``batch_size`` rows, relative to one token, for ``T = 1 .. max_tokens`` (measured once per
    model, batch size and ``max_tokens``)."""
    tables = memory_of(runner.model).block_costs
    key = (batch_size, max_tokens)
    if key not in tables:
        tables[key] = _time_blocks(runner, batch_size, list(range(1, max_tokens + 1)), reps)
    return tables[key]


def linear_block_costs(runner, batch_size: int, max_tokens: int, reps: int = 2) -> list[float]:
    """:func:`block_costs` from two measured points (one token, ``max_tokens`` tokens), in
    between a straight line: cheap enough to measure inside a call (a few passes, once per
    model, batch size and length)."""
    tables = memory_of(runner.model).block_costs
    key = (batch_size, max_tokens, "linear")
    if key not in tables:
        one, last = _time_blocks(runner, batch_size, [1, max_tokens], reps) if max_tokens > 1 else (1.0, 1.0)
        slope = (last - one) / max(max_tokens - 1, 1)
        tables[key] = [1.0 + slope * (T - 1) for T in range(1, max_tokens + 1)]
    return tables[key]


def measured_block_costs(runner, batch_size: int, max_tokens: int) -> list[float] | None:
    """A verification table of at least ``max_tokens`` already measured for this model and batch
    size (nothing is measured here), or None."""
    tables = memory_of(runner.model).block_costs
    found = [t for (b, n, *_), t in tables.items() if b == batch_size and n >= max_tokens]
    return found[0] if found else None


def preferred_block_sizes(costs: list[float]) -> list[int]:
    """The block sizes worth verifying: ``T`` such that every larger block costs more. (If a larger
    block costs no more, verifying fewer tokens saves nothing.)"""
    return [T for T in range(1, len(costs) + 1) if all(c > costs[T - 1] for c in costs[T:])]


def layer_cost(runner, layers: int) -> float:
    """A draft step through ``layers`` layers and the exit head, in full steps, by the weights it
    reads against every layer and the head: a decoding step reads each weight once."""
    memory = memory_of(runner.model)
    if memory.weight_counts is None:
        memory.weight_counts = (
            sum(p.numel() for p in runner.layers[0].parameters()),
            runner.lm_head.weight.numel(),
        )
    per_layer, head = memory.weight_counts
    return (layers * per_layer + head) / (runner.num_layers * per_layer + head)


def expected_tokens_per_round(acceptance: float, k: int) -> float:
    """Mean tokens per round for i.i.d. acceptance α and k drafts: (1 − α^(k+1)) / (1 − α)."""
    if acceptance >= 1.0:
        return k + 1.0
    return (1 - acceptance ** (k + 1)) / (1 - acceptance)


def ideal_speedup(
    mean_tokens_per_round: float, mean_drafts_per_round: float, draft_cost: float, verify_cost: float
) -> float:
    """``mean(n) / (mean(d)·c + v)``: tokens per round over the round's cost in plain steps."""
    return mean_tokens_per_round / (mean_drafts_per_round * draft_cost + verify_cost)
