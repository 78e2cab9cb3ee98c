"""The agreement study's measures: pure functions of the per-token records of the pass
(:mod:`eedecode.study.collect`), each unit-tested on hand-computed cases.

- **Oracle exit** (the saturation point): the earliest studied depth from which the exit head's
  top-1 equals the final layer's and stays equal up to the last layer (arXiv 2412.01455 calls the
  depth at which tokens match the final output the optimal early-exit layer).
- **Gates**: each exit criterion of :mod:`eedecode.model.exit_criteria` over a threshold sweep: a token exits
  at the first studied depth whose score reaches ``criterion.score_threshold`` (else at the last
  layer); too early / exact / too late against the oracle, agreement with the final layer, mean
  exit depth. One curve per criterion; the thresholds are quantiles of the observed scores.
- **Confidence categories** (the survey of early-exit networks, arXiv 2501.07670, Figure 2):
  *fake-confident* tokens have, somewhere in the first half of the layers, a top-1 other than the
  final one with probability >= ``prob``; *confident* ones (the rest) have the final top-1 there
  with probability >= ``prob``; *confused* are all others.
- **Sub-words**: the oracle exit of word-initial pieces, continuation pieces and pieces that are
  no word at all (punctuation, whitespace).
"""

from __future__ import annotations

import math
import re

import torch

from .collect import LensRecords

Tensor = torch.Tensor

EARLY_LAYERS = 10  # arXiv 2412.01455: tokens match the final output at least this many layers early
EARLY_FRACTION = 0.25  # ... or at least this share of the depth early
AGREEMENT_TARGETS = (0.9, 0.95, 0.99)
GROUPS = ("word_initial", "continuation", "other")
CATEGORIES = ("confident", "confused", "fake_confident")
_WORD = re.compile(r"\w")


def _mean(x: Tensor) -> float:
    return float(x.float().mean()) if x.numel() else float("nan")


# -- per layer --------------------------------------------------------------------------------------
def layer_table(
    rec: LensRecords, final_top1: Tensor, depths: list[int], inputs: Tensor | None = None
) -> list[dict]:
    """Per studied depth: agreement with the final top-1 and with the true next token, top-5
    overlap, KL to the final distribution, entropy, max probability, probability of the final
    top-1, and (given the input tokens) how often the top-1 is the token just read: a lens that
    reads the residual stream too close to the embedding predicts its own input."""
    agree = rec.agree(final_top1)
    return [
        {
            "depth": d,
            "agreement": _mean(agree[j]),
            "accuracy": _mean(rec.correct[j]),
            "copies_input": _mean(rec.top1[j] == inputs) if inputs is not None else float("nan"),
            "top5_overlap": _mean(rec.top5[j]),
            "kl": _mean(rec.kl[j]),
            "entropy": _mean(rec.entropy[j]),
            "max_prob": _mean(rec.max_prob[j]),
            "p_final": _mean(rec.p_final[j]),
        }
        for j, d in enumerate(depths)
    ]


# -- oracle exit ------------------------------------------------------------------------------------
def oracle_exit(agree: Tensor) -> Tensor:
    """``agree [D, N]`` (bool, the last row all True) -> ``[N]`` index of the earliest exit point
    from which every later one agrees."""
    stays = agree.flip(0).int().cumprod(0).flip(0).bool()  # stays[j] = all(agree[j:])
    return (~stays).sum(0).clamp_max(agree.shape[0] - 1)


def early_shares(depth: Tensor, num_layers: int) -> dict:
    """Shares of tokens whose exit depth is at least 10 layers, and at least 25% of the depth,
    before the end."""
    before = num_layers - depth
    return {
        "share_10_layers_early": _mean(before >= EARLY_LAYERS),
        "share_quarter_early": _mean(before >= math.ceil(EARLY_FRACTION * num_layers)),
    }


def oracle_summary(oracle_idx: Tensor, depths: list[int], num_layers: int) -> dict:
    depth = torch.tensor(depths)[oracle_idx]
    counts = torch.bincount(oracle_idx, minlength=len(depths))
    n = max(depth.numel(), 1)
    return {
        "mean_depth": _mean(depth),
        "median_depth": float(depth.median()) if depth.numel() else float("nan"),
        "share_before_last": _mean(depth < num_layers),
        **early_shares(depth, num_layers),
        "histogram": [
            {"depth": d, "tokens": int(c), "share": int(c) / n} for d, c in zip(depths, counts, strict=True)
        ],
    }


# -- gates ------------------------------------------------------------------------------------------
def exit_index(fire: Tensor) -> Tensor:
    """``fire [D, N]`` -> ``[N]`` the first exit point that fires (the last one always does)."""
    fire = fire.clone()
    fire[-1] = True
    return fire.int().argmax(0)  # torch.argmax returns the first of equal maxima


def to_threshold(cls, score: float) -> float:
    """The threshold of criterion class ``cls`` whose ``score_threshold`` is ``score`` (criteria
    threshold their score directly or its negative, like the entropy)."""
    lo = cls.low if math.isfinite(cls.low) else cls.high - 1
    hi = lo + (min(1.0, cls.high - lo) / 2 if math.isfinite(cls.high) else 1.0)
    sign = 1.0 if cls(hi).score_threshold > cls(lo).score_threshold else -1.0
    return min(max(sign * score, cls.low), cls.high)


def threshold_grid(cls, scores: Tensor, points: int = 41) -> list:
    """Thresholds to sweep: 1..D-1 for integer criteria (patience), else the criterion's thresholds
    at evenly spaced quantiles of the observed scores."""
    if cls.integer:
        return list(range(max(1, int(cls.low)), scores.shape[0]))
    flat = scores[torch.isfinite(scores)].flatten().double()
    if flat.numel() > 200_000:  # an even subsample: quick, and under torch.quantile's size limit
        flat = flat[torch.linspace(0, flat.numel() - 1, 200_000).long()]
    qs = torch.quantile(flat, torch.linspace(0, 1, points, dtype=torch.float64)).tolist()
    return sorted({to_threshold(cls, q) for q in qs})


def gate_point(exit_idx: Tensor, oracle_idx: Tensor, agree: Tensor, depths: list[int]) -> dict:
    depth = torch.tensor(depths)[exit_idx]
    return {
        "too_early": _mean(exit_idx < oracle_idx),
        "exact": _mean(exit_idx == oracle_idx),
        "too_late": _mean(exit_idx > oracle_idx),
        "agreement": _mean(agree.gather(0, exit_idx[None])[0]),
        "mean_depth": _mean(depth),
    }


def gate_sweep(
    cls, scores: Tensor, agree: Tensor, oracle_idx: Tensor, depths: list[int], thresholds=None
) -> list[dict]:
    """The trade-off curve of one criterion class over ``thresholds`` (default :func:`threshold_grid`)."""
    curve = []
    for t in threshold_grid(cls, scores) if thresholds is None else thresholds:
        crit = cls(t)
        fire = scores >= crit.score_threshold
        curve.append({"threshold": t, **gate_point(exit_index(fire), oracle_idx, agree, depths)})
    return curve


def cheapest_point(curve: list[dict], target: float) -> dict | None:
    """The point of a curve with the lowest mean exit depth among those with at least ``target``
    agreement."""
    ok = [p for p in curve if p["agreement"] >= target - 1e-12]
    return min(ok, key=lambda p: p["mean_depth"]) if ok else None


def gate_summary(curve: list[dict]) -> dict:
    """The best exact share over the sweep, and per agreement target the cheapest point."""
    best = max(curve, key=lambda p: p["exact"])
    at = {str(t): cheapest_point(curve, t) for t in AGREEMENT_TARGETS}
    return {
        "best_exact": best["exact"],
        "best_exact_threshold": best["threshold"],
        "depth_for_agreement": {t: (p or {}).get("mean_depth") for t, p in at.items()},
        "at_agreement": at,
    }


def static_curve(table: list[dict]) -> list[dict]:
    """Every token exits at the same depth: agreement of each depth, as a trade-off curve."""
    return [{"threshold": r["depth"], "agreement": r["agreement"], "mean_depth": r["depth"]} for r in table]


# -- confidence categories --------------------------------------------------------------------------
def categories(
    rec: LensRecords,
    final_top1: Tensor,
    depths: list[int],
    num_layers: int,
    prob: float = 0.5,
    early_fraction: float = 0.5,
) -> dict:
    """Counts and mean curves (probability of the final top-1 per depth) of the three categories."""
    early = [j for j, d in enumerate(depths) if d <= early_fraction * num_layers]
    agree, sure = rec.agree(final_top1)[early], rec.max_prob[early] >= prob
    fake = (sure & ~agree).any(0)
    confident = ~fake & (sure & agree).any(0)
    groups = {"confident": confident, "confused": ~fake & ~confident, "fake_confident": fake}
    n = max(final_top1.numel(), 1)
    out = {"prob": prob, "early_depths": [depths[j] for j in early]}
    for name, mask in groups.items():
        out[name] = {
            "tokens": int(mask.sum()),
            "share": int(mask.sum()) / n,
            "p_final": [_mean(rec.p_final[j][mask]) for j in range(len(depths))],
            "max_prob": [_mean(rec.max_prob[j][mask]) for j in range(len(depths))],
        }
    return out


# -- sub-words --------------------------------------------------------------------------------------
def piece_table(tokenizer, vocab_size: int) -> dict[str, Tensor]:
    """Per vocabulary id: does its text start with a space marker, start with a word character,
    end with one (special tokens and ids the tokenizer lacks: none of these)."""
    n = min(vocab_size, len(tokenizer))
    texts = tokenizer.batch_decode([[i] for i in range(n)])
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = set(tokenizer.all_special_ids)
    table = {k: torch.zeros(vocab_size, dtype=torch.bool) for k in ("marker", "starts_word", "ends_word")}
    for i, (text, piece) in enumerate(zip(texts, pieces, strict=True)):
        if i in special or not text:
            continue
        table["marker"][i] = text[0] == " " or (piece or "")[:1] in ("▁", "Ġ")
        table["starts_word"][i] = bool(_WORD.match(text.lstrip()))
        table["ends_word"][i] = bool(_WORD.match(text[-1]))
    return table


def subword_groups(tokens: Tensor, previous: Tensor, table: dict[str, Tensor]) -> Tensor:
    """Group of each token (0 word-initial, 1 continuation, 2 other). A piece that starts with a
    word character is word-initial when it carries the space marker or the piece before it does
    not end in a word character (``(self``, a new line), and a continuation otherwise."""
    word = table["starts_word"][tokens]
    initial = word & (table["marker"][tokens] | ~table["ends_word"][previous])
    return torch.where(word, torch.where(initial, 0, 1), 2)


def subword_summary(groups: Tensor, oracle_depth: Tensor, num_layers: int) -> dict:
    n = max(groups.numel(), 1)
    out = {}
    for g, name in enumerate(GROUPS):
        mask = groups == g
        out[name] = {
            "tokens": int(mask.sum()),
            "share": int(mask.sum()) / n,
            "mean_oracle_depth": _mean(oracle_depth[mask]),
            **early_shares(oracle_depth[mask], num_layers),
        }
    return out
