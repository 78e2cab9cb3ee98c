"""The agreement study's measures: pure functions of the per-token records of the pass
(:mod:`eedecode.study.collect`), each unit-tested on hand-computed cases.

- **Oracle exit** (the saturation point): the earliest studied depth from which the exit head's
  top-1 equals the final layer's and stays equal up to the last layer (arXiv 2412.01455 calls the
  depth at which tokens match the final output the optimal early-exit layer).
- **Gates**: :mod:`eedecode.study.gates`.
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
EARLY_HALF = 0.5  # the confidence categories look at the first half of the layers
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


# -- confidence categories --------------------------------------------------------------------------
def category_masks(
    rec: LensRecords, final_top1: Tensor, depths: list[int], num_layers: int, prob: float = 0.5
) -> tuple[list[int], dict[str, Tensor]]:
    """The early depths' row indices (the first half of the layers) and each category's ``[N]``
    mask."""
    early = [j for j, d in enumerate(depths) if d <= EARLY_HALF * num_layers]
    agree, sure = rec.agree(final_top1)[early], rec.max_prob[early] >= prob
    fake = (sure & ~agree).any(0)
    confident = ~fake & (sure & agree).any(0)
    return early, {"confident": confident, "confused": ~fake & ~confident, "fake_confident": fake}


def categories(
    rec: LensRecords, final_top1: Tensor, depths: list[int], num_layers: int, prob: float = 0.5
) -> dict:
    """Counts and mean curves (probability of the final top-1 per depth) of the three categories."""
    early, groups = category_masks(rec, final_top1, depths, num_layers, prob)
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
