"""When to draft, and from where, inside vLLM: lookup drafts, early-exit drafts, or none.

A draft pays when the tokens it is expected to add are worth more than it costs. A lookup draft
(prompt lookup, Saxena 2023) costs almost nothing to make, only its share of verification, which
is small while a step is bound by bandwidth or per-step overhead (small batches) and grows once
the verification pass becomes compute-bound (large batches). An early-exit draft costs a pass
through layers ``[0, E)`` and the LM head besides. Hence, per call of the proposer:

1. above ``max_batch`` rows nothing is drafted;
2. a row takes lookup drafts when its context has a match of at least ``lookup_ngram_min``
   tokens (``batch_lookup_ngram_min`` above ``max_batch_exit`` rows, where a wrong draft costs
   verification compute);
3. rows without a match take early-exit drafts, at most ``max_batch_exit`` rows per batch, and
   only as many as pay: the ``j``-th draft of a round is made while the measured acceptance rate
   of ``j``-th exit drafts times the measured time of a vLLM step exceeds the measured time of a
   draft pass (the speed-up model of Leviathan et al. 2023, applied one draft at a time); a row
   also stops when the exit head's probability falls below ``draft_confidence``.

Rates are moving averages of each row's accepted count, fed back on the next call. With tensor
parallelism every rank must make the same decisions (the draft pass's collectives must match),
so there the clock-based rule 3 is replaced by a fixed budget of ``num_speculative_tokens`` and
the count-based gate ``min_acceptance``. (eedecode's own adaptive mode, docs/adaptive.md, weighs
costs in the same spirit.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: An interval between two calls of the proposer this many times the usual step is an idle gap.
GAP = 5.0


@dataclass(frozen=True)
class DraftOptions:
    """Settings of eedecode's vLLM drafter (``additional_config={"eedecode": {...}}``)."""

    exit_layer: int | None = None  # None: the checkpoint's eedecode.json, else a quarter of the layers
    exit_drafts: bool = True  # draft from the exit layer
    lookup: bool = True  # draft by prompt lookup where the context has a match
    lookup_ngram: int = 3  # longest n-gram looked up
    lookup_ngram_min: int = 1  # shortest match used; shorter contexts get exit drafts
    batch_lookup_ngram_min: int = 2  # the same above max_batch_exit rows
    draft_confidence: float = 0.03  # stop early-exit drafting below this probability
    max_batch_exit: int = 2  # no early-exit drafts above this many rows
    max_batch: int = 32  # no drafts at all above this many rows
    cost_aware: bool = True  # draft from the exit layer only while it pays (measured; not under TP)
    min_acceptance: float = 0.2  # under TP / cost_aware off: no exit drafts below this acceptance
    probe_every: int = 32  # while exit drafting does not pay, try one draft every this many calls
    smoothing: float = 0.05  # weight of one observation in the moving averages

    @classmethod
    def from_dict(cls, values: dict) -> DraftOptions:
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            known = sorted(cls.__dataclass_fields__)
            raise ValueError(f"eedecode options: unknown {sorted(unknown)}; known: {known}")
        options = cls(**values)
        if not 0.0 <= options.draft_confidence <= 1.0:
            raise ValueError(f"draft_confidence: must be in [0, 1], got {options.draft_confidence}")
        for name in ("lookup_ngram_min", "batch_lookup_ngram_min"):
            if not 1 <= getattr(options, name) <= options.lookup_ngram <= 8:
                raise ValueError(f"{name}: must be in [1, lookup_ngram], and lookup_ngram at most 8")
        return options


def _average(value: float | None, sample: float, weight: float) -> float:
    return sample if value is None else value + weight * (sample - value)


@dataclass
class DraftPolicy:
    """Per call: which drafters may run (:meth:`sources`) and how many exit drafts pay
    (:meth:`exit_budget`); fed back each row's accepted count (:meth:`record`) and the measured
    times (:meth:`observe_step`, :meth:`observe_pass`). ``counts`` holds the drafts proposed and
    accepted per drafter (what a benchmark reports); ``exit_rates[j]`` the moving acceptance rate
    of ``j``-th exit drafts; ``step_s`` and ``pass_s`` the moving times of a vLLM step and of one
    draft pass."""

    options: DraftOptions
    timed: bool = True  # False under tensor parallelism: decide from counts only
    counts: dict[str, list[int]] = field(default_factory=lambda: {"lookup": [0, 0], "exit": [0, 0]})
    exit_rates: list[float] = field(default_factory=list)
    step_s: float | None = None
    pass_s: float | None = None
    calls: int = 0

    def sources(self, batch_size: int) -> tuple[int | None, bool]:
        """``(ngram_min, exit)`` for this call: the shortest lookup match worth drafting from
        (``None``: no lookup drafts) and whether early-exit drafts may be proposed."""
        self.calls += 1
        o = self.options
        if batch_size > o.max_batch:
            return None, False
        small = batch_size <= o.max_batch_exit
        ngram_min = (o.lookup_ngram_min if small else o.batch_lookup_ngram_min) if o.lookup else None
        return ngram_min, o.exit_drafts and small

    def exit_budget(self, k: int) -> int:
        """How many exit drafts per row are worth making this call (at most ``k``)."""
        o = self.options
        rates = self.exit_rates + [1.0] * (k - len(self.exit_rates))  # untried positions: optimistic
        if o.cost_aware and self.timed and self.step_s is not None and self.pass_s is not None:
            budget = next((j for j in range(k) if rates[j] * self.step_s <= self.pass_s), k)
        else:
            overall = self.counts["exit"][1] / max(1, self.counts["exit"][0])
            budget = k if self.counts["exit"][0] < 16 or overall >= o.min_acceptance else 0
        if budget == 0 and self.calls % o.probe_every == 0:
            return 1  # keep the acceptance estimate of the first draft fresh
        return budget

    def record(self, source: str, proposed: int, accepted: int) -> None:
        """A row's outcome: ``accepted`` of the ``proposed`` drafts from ``source`` were taken."""
        if source not in self.counts or proposed == 0:
            return
        accepted = min(accepted, proposed)
        self.counts[source][0] += proposed
        self.counts[source][1] += accepted
        if source == "exit":
            self.exit_rates += [1.0] * (proposed - len(self.exit_rates))
            for j in range(proposed):
                self.exit_rates[j] = _average(self.exit_rates[j], float(j < accepted), self.options.smoothing)

    def observe_step(self, seconds: float) -> None:
        """The time vLLM took between two calls of the proposer: one step, or an idle gap."""
        if self.step_s is None or seconds * GAP < self.step_s:  # the first, or the last was a gap
            self.step_s = seconds
        elif seconds < GAP * self.step_s:
            self.step_s = _average(self.step_s, seconds, self.options.smoothing)

    def observe_pass(self, seconds: float) -> None:
        """The time of one draft pass (layers ``[0, E)`` and the exit head, all rows)."""
        self.pass_s = _average(self.pass_s, seconds, self.options.smoothing)
