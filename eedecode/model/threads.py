"""How many CPU threads a call runs on.

A small model's matrix products are too short to gain from splitting across cores, and threads
that wait on cores busy with other work make every step slower (measured on the demo models:
the quickstart pasted verbatim on a busy 2-core machine ran at a small fraction of its one-thread
speed). So on a CPU a call on a model of at most :data:`SMALL_MODEL_BYTES` of weights runs on one
thread, and torch's own setting is restored afterwards; a larger model keeps torch's setting.
``num_threads=`` chooses for the call.
"""

from __future__ import annotations

import contextlib

import torch

#: Weights up to this size run on one thread by default (the demo models have 26-30 MB).
SMALL_MODEL_BYTES = 64 << 20


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def auto_threads(model, device) -> int | None:
    """The thread count a call chooses by itself: 1 for a small model on a CPU, else None (torch's)."""
    if torch.device(device).type != "cpu":
        return None
    return 1 if weight_bytes(model) <= SMALL_MODEL_BYTES else None


def check_num_threads(num_threads) -> None:
    if num_threads is not None and (
        not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1
    ):
        raise ValueError(
            f"num_threads: must be an int >= 1 or None (chosen by model size), got {num_threads!r}"
        )


@contextlib.contextmanager
def threads(count: int | None):
    """torch's intra-op threads set to ``count`` for the block (None: unchanged), then restored."""
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
