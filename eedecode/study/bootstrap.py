"""Bootstrap confidence intervals for the agreement study, over blocks of text.

A block is ``block_len`` consecutive tokens of the data; the positions of one block share a text
and a context, so they are not independent draws, while blocks spread over the data nearly are.
Each resample draws the study's ``B`` blocks with replacement (Efron's nonparametric bootstrap;
Efron and Tibshirani 1993, ch. 6 and 13): a resample is a weight per block, the number of times
it was drawn (``[R, B]``, seeded). Every measure is a ratio of sums over positions, so a
resample's value is ``(W @ numerator per block) / (W @ denominator per block)``, and measures that
choose something (the cheapest gate threshold, the best gate) choose again in every resample.
The interval is the percentile interval of the resamples' values.

Two studies run with the same seed, resample count and blocks (the same data, block length,
positions and tokenizer) have the same weights, resample by resample, so the difference of
their replicates is a *paired* bootstrap of the difference (:mod:`eedecode.study.compare`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class BootstrapConfig:
    resamples: int = 1000  # 0: no intervals
    seed: int = 0
    level: float = 0.95

    def validate(self) -> None:
        if not isinstance(self.resamples, int) or self.resamples < 0:
            raise ValueError(f"bootstrap resamples: must be an int >= 0, got {self.resamples!r}")
        if not 0 < self.level < 1:
            raise ValueError(f"bootstrap level: must lie in (0, 1), got {self.level!r}")


def block_weights(blocks: int, resamples: int, seed: int) -> Tensor:
    """``[R, B]`` float64: how often each of ``blocks`` blocks is drawn in each resample."""
    g = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, blocks, (resamples, blocks), generator=g)
    return torch.zeros(resamples, blocks, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(resamples, blocks, dtype=torch.float64)
    )


def per_block(x: Tensor, positions: int) -> Tensor:
    """Sums per block: ``[..., B * positions]`` -> ``[..., B]`` float64 (positions are block-major)."""
    x = x.double()
    return x.reshape(*x.shape[:-1], -1, positions).sum(-1)


def ratio(weights: Tensor, num: Tensor, den: Tensor | float) -> Tensor:
    """Replicates of ``sum(num) / sum(den)``: ``num [B]`` or ``[K, B]`` -> ``[R]`` or ``[R, K]``."""

    def total(x: Tensor) -> Tensor:
        t = x.double() @ weights.T  # [R] or [K, R]
        return t.T if t.dim() > 1 else t

    bottom = total(den) if isinstance(den, Tensor) else weights.sum(1, keepdim=num.dim() > 1) * den
    return total(num) / bottom


def interval(replicates: Tensor, level: float = 0.95) -> list:
    """The percentile interval ``[lo, hi]`` of ``[R]`` replicates (NaN replicates are left out;
    ``[None, None]`` without any)."""
    r = replicates.double().flatten()
    r = r[~torch.isnan(r)]
    if r.numel() == 0:
        return [None, None]
    q = torch.quantile(r, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return [float(q[0]), float(q[1])]


def verdict(ci: list, reference: float = 0.0) -> str:
    """``"above"`` or ``"below"`` when the whole interval lies on one side of ``reference``, else
    ``"not resolved"`` (the interval straddles it)."""
    lo, hi = ci
    if lo is None:
        return "not resolved"
    if lo > reference:
        return "above"
    if hi < reference:
        return "below"
    return "not resolved"


def blocks_hash(blocks: Tensor) -> str:
    """A short fingerprint of the evaluation blocks: equal hashes make replicates pairable."""
    return hashlib.sha256(blocks.to(torch.int64).cpu().numpy().tobytes()).hexdigest()[:16]


class Intervals:
    """Collects named replicates during a study: ``add(key, replicates)`` returns the interval,
    and :meth:`record` the plain-data record (settings and every replicate)."""

    def __init__(self, config: BootstrapConfig, blocks: int, fingerprint: str = ""):
        self.config = config
        self.blocks = blocks
        self.fingerprint = fingerprint
        self.weights = block_weights(blocks, config.resamples, config.seed) if config.resamples else None
        self.replicates: dict[str, list[float]] = {}

    @property
    def active(self) -> bool:
        return self.weights is not None

    def add(self, key: str, replicates: Tensor) -> list:
        if not self.active:
            return [None, None]
        r = replicates.double().flatten()
        self.replicates[key] = [float(f"{v:.7g}") for v in r.tolist()]
        return interval(r, self.config.level)

    def ratio(self, key: str, num: Tensor, den: Tensor | float) -> list:
        """:func:`ratio`'s replicates of one measure (``num [B]``), kept under ``key``."""
        if not self.active:
            return [None, None]
        return self.add(key, ratio(self.weights, num, den))

    def record(self) -> dict:
        return {
            "unit": "block",
            "blocks": self.blocks,
            "blocks_hash": self.fingerprint,
            "resamples": self.config.resamples,
            "seed": self.config.seed,
            "level": self.config.level,
            "method": "percentile",
            "replicates": self.replicates,
        }
