"""Exit criteria: when is an intermediate layer's prediction good enough to stop at?

The same objects serve early-exit decoding (a token leaves at the first exit point whose
criterion fires), confidence-stopped drafting (stop drafting when it does not) and the
agreement study's gates (how often each fires too early, exactly or too late). They need no
training (seeds: Teerapittayanon et al.'s BranchyNet entropy gate, Schwartz et al.'s max-probability
gate, PABEE's patience (Zhou et al. 2020), CALM's hidden-state saturation (Schuster et al. 2022)).

A criterion is a small object with one method: ``criterion(point) -> bool [B]``, where
``point`` (:class:`ExitPoint`) holds the exit head's statistics on the layer's state and what
the caller tracked across exit points. Built-in criteria also expose ``score(point)``: a number
per row that is larger when the layer is more confident, firing when ``score >= score_threshold``.
A threshold sweep over stored scores gives the whole trade-off curve without re-running the model.
Any callable with the same signature works as a user criterion; set its ``stats`` attribute to
the exit-head statistics it reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..kernels import ExitHeadStats

Tensor = torch.Tensor


@dataclass
class ExitPoint:
    """What a criterion sees at one exit point, for ``B`` rows."""

    layer: int  # the exit depth: the state after this many layers
    stats: ExitHeadStats  # the exit head on that state
    hidden: Tensor  # [B, H] the state after `layer` layers
    prev_hidden: Tensor | None = None  # [B, H] the state one layer earlier (None at depth 0)
    unchanged: Tensor | None = None  # [B] consecutive earlier exit points with this top-1 (0 at the first)


class Criterion:
    """A threshold on a confidence score. Subclasses set ``name``, ``stats`` and ``score``."""

    name: ClassVar[str]
    stats: ClassVar[frozenset[str]] = frozenset({"argmax", "max_prob"})
    #: allowed thresholds, inclusive, and what they mean (for error messages)
    low: ClassVar[float] = -math.inf
    high: ClassVar[float] = math.inf
    integer: ClassVar[bool] = False

    def __init__(self, threshold: float):
        ok_type = isinstance(threshold, int) if self.integer else isinstance(threshold, (int, float))
        if isinstance(threshold, bool) or not ok_type or not self.low <= threshold <= self.high:
            kind = "an int" if self.integer else "a number"
            allowed = f"[{self.low}, {self.high}]"
            raise ValueError(
                f"criterion {self.name}: threshold must be {kind} in {allowed}, got {threshold!r}"
            )
        self.threshold = threshold

    @property
    def score_threshold(self) -> float:
        return float(self.threshold)

    def score(self, point: ExitPoint) -> Tensor:
        raise NotImplementedError

    def __call__(self, point: ExitPoint) -> Tensor:
        return self.score(point) >= self.score_threshold

    def __repr__(self) -> str:
        return f"{self.name}:{self.threshold}"

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.threshold == self.threshold

    def __hash__(self) -> int:
        return hash((self.name, self.threshold))


class MaxProb(Criterion):
    """Exit when the likeliest token's probability is at least ``threshold`` (in [0, 1])."""

    name, low, high = "max-prob", 0.0, 1.0

    def score(self, point):
        return point.stats.max_prob


class Entropy(Criterion):
    """Exit when the entropy of the exit distribution (nats) is at most ``threshold`` (>= 0)."""

    name, low = "entropy", 0.0
    stats = frozenset({"argmax", "max_prob", "entropy"})

    @property
    def score_threshold(self) -> float:
        return -float(self.threshold)

    def score(self, point):
        return -point.stats.entropy


class Margin(Criterion):
    """Exit when p(top-1) - p(top-2) is at least ``threshold`` (in [0, 1])."""

    name, low, high = "margin", 0.0, 1.0
    stats = frozenset({"argmax", "max_prob", "margin"})

    def score(self, point):
        return point.stats.margin


class Patience(Criterion):
    """Exit when the top-1 token has not changed over the last ``threshold`` exit points (an
    int >= 1; PABEE's patience)."""

    name, low, integer = "patience", 1, True

    def score(self, point):
        if point.unchanged is None:
            raise ValueError("criterion patience: the caller must track `unchanged` across exit points")
        return point.unchanged.to(torch.float32)


class Cosine(Criterion):
    """Exit when the cosine similarity of this layer's state and the previous layer's is at least
    ``threshold`` (in [-1, 1]): the residual stream has stopped turning."""

    name, low, high = "cosine", -1.0, 1.0

    def score(self, point):
        if point.prev_hidden is None:
            return torch.full(point.hidden.shape[:-1], -1.0, device=point.hidden.device)
        a, b = point.hidden.float(), point.prev_hidden.float()
        return torch.nn.functional.cosine_similarity(a, b, dim=-1)


CRITERIA: dict[str, type[Criterion]] = {c.name: c for c in (MaxProb, Entropy, Margin, Patience, Cosine)}


def parse_criterion(spec) -> Criterion:
    """``"max-prob:0.9"``, ``"entropy:0.5"``, ``"margin:0.3"``, ``"patience:2"``, ``"cosine:0.95"``
    -> a criterion; a criterion object (or any callable) is returned as it is."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(
            f"criterion: expected NAME:THRESHOLD with NAME in {', '.join(CRITERIA)}, got {spec!r}"
        )
    name, _, value = spec.partition(":")
    if name not in CRITERIA:
        raise ValueError(f"criterion: unknown name {name!r}; choose from {', '.join(CRITERIA)}")
    cls = CRITERIA[name]
    try:
        threshold = int(value) if cls.integer else float(value)
    except ValueError:
        kind = "an int" if cls.integer else "a number"
        raise ValueError(f"criterion {name}: threshold must be {kind}, got {value!r}") from None
    return cls(threshold)


def stats_needed(criterion) -> frozenset[str]:
    """The exit-head statistics a criterion reads (the argmax is always computed)."""
    return frozenset(getattr(criterion, "stats", None) or {"argmax", "max_prob", "entropy", "margin"}) | {
        "argmax"
    }


def update_unchanged(unchanged: Tensor | None, prev_top1: Tensor | None, top1: Tensor) -> Tensor:
    """Consecutive exit points with the same top-1, carried from one exit point to the next."""
    if unchanged is None or prev_top1 is None:
        return torch.zeros_like(top1)
    return torch.where(top1 == prev_top1, unchanged + 1, torch.zeros_like(unchanged))
