"""Latency of a timed run: time to first token and per-token latency, read from the times at which a
method's run hands its new tokens to a streamer (:class:`TokenClock`, batch size 1).

A run hands the streamer the prompt, then new tokens as they come (one per step for HF
``generate``, autoregressive decoding and llama.cpp; a round's accepted tokens at once for a mode
that drafts), then ``end()``. *Time to first token* is the time from the start of the timed call to
the first new token (the prompt's forward pass included). *Per-token latency* is the time between
two deliveries divided by the tokens the later one brought: a round that yields n tokens after
t ms counts n tokens of t/n ms (the first token is not counted: it is the time to first token).
Recording a delivery costs one clock read: the tokens reach the host in the step's one existing
synchronisation.
"""

from __future__ import annotations

import time

#: The percentiles of the per-token latency every result reports.
PERCENTILES = (50, 95, 99)


class TokenClock:
    """A streamer that records when new tokens arrive: ``(time, count)`` per delivery after the
    prompt. ``start`` is the start of the timed call (set by the caller just before it)."""

    def __init__(self, clock=time.perf_counter) -> None:
        self.clock = clock
        self.start: float | None = None
        self.deliveries: list[tuple[float, int]] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        now = self.clock()
        if not self._prompt_seen:  # the first put is the prompt, as in transformers' streamers
            self._prompt_seen = True
            if self.start is None:
                self.start = now
            return
        n = int(value.numel()) if hasattr(value, "numel") else len(value)
        if n:
            self.deliveries.append((now, n))

    def end(self) -> None:
        pass

    def first_token_s(self) -> float | None:
        """Seconds from the start to the first new token (None: no token came)."""
        if not self.deliveries or self.start is None:
            return None
        return self.deliveries[0][0] - self.start

    def token_gaps_s(self) -> list[float]:
        """Per-token latencies in seconds, one per new token after the first."""
        gaps = []
        first_count = self.deliveries[0][1] if self.deliveries else 0
        gaps += [0.0] * max(first_count - 1, 0)  # tokens delivered with the first one came with it
        for (t0, _), (t1, n) in zip(self.deliveries, self.deliveries[1:], strict=False):
            gaps += [(t1 - t0) / n] * n
        return gaps


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between the closest ranks."""
    if not values:
        raise ValueError("percentile: no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(clocks: list[TokenClock]) -> dict | None:
    """The latency of a method's timed runs in milliseconds: ``ttft_ms`` (median over runs,
    with ``ttft_ms_p95``) and ``token_ms_p50/p95/p99`` (over every token of every run); None
    when no run recorded a token."""
    firsts = [t for c in clocks if (t := c.first_token_s()) is not None]
    if not firsts:
        return None
    gaps = [g for c in clocks for g in c.token_gaps_s()]
    out = {"ttft_ms": 1e3 * percentile(firsts, 50), "ttft_ms_p95": 1e3 * percentile(firsts, 95)}
    for q in PERCENTILES:
        out[f"token_ms_p{q}"] = 1e3 * percentile(gaps, q) if gaps else None
    return out
