"""Gates without joint training: each exit criterion of :mod:`eedecode.model.exit_criteria` as a
trade-off curve between agreement with the final layer and the mean exit depth.

A token exits at the first studied depth whose score reaches the criterion's score threshold
(else at the last layer), and is then too early, exact or too late against its oracle exit.

**The exact curve** (:func:`exact_curve`). As the threshold falls, a token's exit depth changes
only where the threshold passes one of its *record* scores (a score higher than every score at
shallower depths): from there on it exits at that record's depth. Sorting every token's record
scores gives every distinct operating point of the criterion on the data, with no grid, so no
reported figure can sit on a grid step or between two points. Integer criteria (patience) and
thresholds outside a criterion's allowed range keep only the points the criterion can express.

**Resampled** (:func:`bootstrap_depths`): the same events weighted by the bootstrap's block
weights (:mod:`eedecode.study.bootstrap`) give each resample's whole curve, and its cheapest
point at each agreement target is chosen again in every resample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Tensor = torch.Tensor

AGREEMENT_TARGETS = (0.9, 0.95, 0.99)
STORED_POINTS = 400  # curve points kept in the record (the summary uses every point)
_CHUNK = 16  # resamples per pass of the weighted sweep


def _mean(x: Tensor) -> float:
    return float(x.float().mean()) if x.numel() else float("nan")


def exit_index(fire: Tensor) -> Tensor:
    """``fire [D, N]`` -> ``[N]`` the first exit point that fires (the last one always does)."""
    fire = fire.clone()
    fire[-1] = True
    return fire.int().argmax(0)  # torch.argmax returns the first of equal maxima


def to_threshold(cls, score: float) -> float:
    """The threshold of criterion class ``cls`` whose ``score_threshold`` is ``score`` (criteria
    threshold their score directly or its negative, like the entropy)."""
    return min(max(_sign(cls) * score, cls.low), cls.high)


def _sign(cls) -> float:
    """+1 if the criterion fires on ``score >= threshold``, -1 on ``-score >= -threshold``."""
    lo = cls.low if math.isfinite(cls.low) else cls.high - 1
    hi = lo + (1 if cls.integer else min(1.0, cls.high - lo) / 2 if math.isfinite(cls.high) else 1.0)
    if cls.integer:
        lo, hi = int(lo), int(hi)
    return 1.0 if cls(hi).score_threshold > cls(lo).score_threshold else -1.0


def gate_point(exit_idx: Tensor, oracle_idx: Tensor, agree: Tensor, depths: list[int]) -> dict:
    depth = torch.tensor(depths)[exit_idx]
    return {
        "too_early": _mean(exit_idx < oracle_idx),
        "exact": _mean(exit_idx == oracle_idx),
        "too_late": _mean(exit_idx > oracle_idx),
        "agreement": _mean(agree.gather(0, exit_idx[None])[0]),
        "mean_depth": _mean(depth),
    }


def gate_sweep(cls, scores: Tensor, agree: Tensor, oracle_idx: Tensor, depths: list[int], thresholds):
    """The operating points of one criterion class at the given ``thresholds``, one at a time."""
    curve = []
    for t in thresholds:
        fire = scores >= cls(t).score_threshold
        curve.append({"threshold": t, **gate_point(exit_index(fire), oracle_idx, agree, depths)})
    return curve


@dataclass
class Events:
    """Every token's record scores, sorted from the highest: passing ``value[e]`` moves token
    ``token[e]`` to an earlier exit, changing each total by ``delta[:, e]``."""

    value: Tensor  # [E] float64, descending
    token: Tensor  # [E] int64
    delta: Tensor  # [5, E] float64: agreement, depth, too early, exact, too late
    base: Tensor  # [5, N] float64: each token's totals when it exits at the last layer
    ends: Tensor  # [G] the last event of each realisable distinct value
    thresholds: list  # [G] the criterion's threshold at each of them


def events(cls, scores: Tensor, agree: Tensor, oracle_idx: Tensor, depths: list[int]) -> Events:
    """The record events of ``scores [D, N]`` (NaN never fires) for criterion class ``cls``."""
    D, N = scores.shape
    s = scores.double().nan_to_num(nan=-math.inf)
    before = torch.cat([torch.full((1, N), -math.inf, dtype=s.dtype), s.cummax(0).values[:-1]])
    record = (s > before) & torch.isfinite(s)
    record[-1] = False  # the last layer always fires: its records change nothing
    following = torch.empty(D, N, dtype=torch.long)  # the next record's depth index, else the last
    running = torch.full((N,), D - 1, dtype=torch.long)
    for j in range(D - 1, -1, -1):
        following[j] = running
        running = torch.where(record[j], j, running)
    j, n = record.nonzero(as_tuple=True)
    k = following[j, n]
    depth, o = torch.tensor(depths, dtype=torch.float64), oracle_idx
    a = agree.double()

    def totals(idx, tok):  # agreement, depth, too early, exact, too late of exiting at idx
        oo = o[tok]
        return torch.stack(
            [a[idx, tok], depth[idx], (idx < oo).double(), (idx == oo).double(), (idx > oo).double()]
        )

    value = s[j, n]
    order = torch.argsort(value, descending=True, stable=True)
    value, j, n, k = value[order], j[order], n[order], k[order]
    last = torch.full((N,), D - 1, dtype=torch.long)
    ev = Events(value, n, totals(j, n) - totals(k, n), totals(last, torch.arange(N)), None, [])
    ends = torch.nonzero(torch.cat([value[1:] != value[:-1], torch.tensor([True])]))[:, 0]
    keep, sign = [], _sign(cls)
    for e in ends.tolist() if value.numel() else []:
        t = sign * float(value[e])
        if cls.low - 1e-6 <= t <= cls.high + 1e-6 and (not cls.integer or t == int(t)):
            keep.append(e)
            ev.thresholds.append(int(t) if cls.integer else min(max(t, cls.low), cls.high))
    ev.ends = torch.tensor(keep, dtype=torch.long)
    return ev


def exact_curve(ev: Events) -> list[dict]:
    """Every realisable operating point, from "never before the last layer" (threshold None) to
    the lowest threshold."""
    n = ev.base.shape[1]
    base = ev.base.sum(1)
    totals = torch.cat([base[:, None], base[:, None] + ev.delta.cumsum(1)[:, ev.ends]], 1) / n
    names = ("agreement", "mean_depth", "too_early", "exact", "too_late")
    cols = [[None, *ev.thresholds], *totals.tolist()]
    return [{"threshold": t, **dict(zip(names, vals, strict=True))} for t, *vals in zip(*cols, strict=True)]


def cheapest_point(curve: list[dict], target: float) -> dict | None:
    """The point of a curve with the lowest mean exit depth among those with at least ``target``
    agreement."""
    ok = [p for p in curve if p["agreement"] >= target - 1e-12]
    return min(ok, key=lambda p: p["mean_depth"]) if ok else None


def gate_summary(curve: list[dict]) -> dict:
    """The best exact share over the curve, and per agreement target the cheapest point."""
    best = max(curve, key=lambda p: p["exact"])
    at = {str(t): cheapest_point(curve, t) for t in AGREEMENT_TARGETS}
    return {
        "points": len(curve),
        "best_exact": best["exact"],
        "best_exact_threshold": best["threshold"],
        "depth_for_agreement": {t: (p or {}).get("mean_depth") for t, p in at.items()},
        "at_agreement": at,
    }


def thin(curve: list[dict], keep: list[dict], at_most: int = STORED_POINTS) -> list[dict]:
    """About ``at_most`` points evenly spread over the curve's mean depth, with ``keep`` (the
    reported points) and both ends."""
    if len(curve) <= at_most:
        return curve
    lo, hi = curve[-1]["mean_depth"], curve[0]["mean_depth"]
    step, out, last = (hi - lo) / at_most, [curve[0]], curve[0]["mean_depth"]
    ids = {id(p) for p in keep}
    for p in curve[1:-1]:
        if id(p) in ids or last - p["mean_depth"] >= step:
            out.append(p)
            last = p["mean_depth"]
    return [*out, curve[-1]]


def bootstrap_depths(ev: Events, weights: Tensor, positions: int, targets=AGREEMENT_TARGETS) -> Tensor:
    """``[R, len(targets)]``: each resample's lowest mean exit depth at each agreement target
    (``weights [R, B]``, blocks of ``positions`` tokens; NaN where no point reaches it)."""
    n, block = ev.base.shape[1], ev.token // positions
    base = (ev.base[:2].reshape(2, -1, positions).sum(-1) @ weights.T).T  # [R, 2]
    out = torch.empty(weights.shape[0], len(targets), dtype=torch.float64)
    for start in range(0, weights.shape[0], _CHUNK):
        w = weights[start : start + _CHUNK]  # [r, B]
        we = w[:, block]  # [r, E]
        agree = base[start : start + _CHUNK, :1] + (we * ev.delta[0]).cumsum(1)[:, ev.ends]
        depth = base[start : start + _CHUNK, 1:] + (we * ev.delta[1]).cumsum(1)[:, ev.ends]
        agree = torch.cat([base[start : start + _CHUNK, :1], agree], 1) / n  # with the base point
        depth = torch.cat([base[start : start + _CHUNK, 1:], depth], 1) / n
        for i, t in enumerate(targets):
            masked = torch.where(agree >= t - 1e-12, depth, torch.full_like(depth, math.inf))
            best = masked.min(1).values
            out[start : start + _CHUNK, i] = torch.where(torch.isinf(best), math.nan, best)
    return out
