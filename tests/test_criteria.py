"""Exit criteria on hand-made statistics and hidden states, each with a known answer."""

from __future__ import annotations

import pytest
import torch

from eedecode.kernels import ExitHeadStats
from eedecode.model.exit_criteria import (
    CRITERIA,
    Cosine,
    Entropy,
    ExitPoint,
    Margin,
    MaxProb,
    Patience,
    parse_criterion,
    update_unchanged,
)


def point_from_probs(probs, hidden=None, prev=None, unchanged=None, layer=3):
    """An exit point whose statistics are those of the given distributions ``[B, V]``."""
    p = torch.tensor(probs, dtype=torch.float32)
    top2 = p.topk(2, -1).values
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
    stats = ExitHeadStats(p.argmax(-1), top2[:, 0], entropy, torch.zeros(len(p)), top2[:, 0] - top2[:, 1])
    h = torch.zeros(len(p), 2) if hidden is None else torch.tensor(hidden, dtype=torch.float32)
    prev = None if prev is None else torch.tensor(prev, dtype=torch.float32)
    unchanged = None if unchanged is None else torch.tensor(unchanged)
    return ExitPoint(layer, stats, h, prev, unchanged)


PROBS = [[0.9, 0.05, 0.05], [0.5, 0.4, 0.1], [1 / 3, 1 / 3, 1 / 3]]


def test_max_prob():
    assert MaxProb(0.6)(point_from_probs(PROBS)).tolist() == [True, False, False]
    assert MaxProb(0.5)(point_from_probs(PROBS)).tolist() == [True, True, False]


def test_entropy():
    # entropies: 0.394, 0.943, log 3 = 1.099 nats
    assert Entropy(0.5)(point_from_probs(PROBS)).tolist() == [True, False, False]
    assert Entropy(1.0)(point_from_probs(PROBS)).tolist() == [True, True, False]
    assert Entropy(1.1)(point_from_probs(PROBS)).tolist() == [True, True, True]


def test_margin():
    # margins: 0.85, 0.1, 0
    assert Margin(0.09)(point_from_probs(PROBS)).tolist() == [True, True, False]
    assert Margin(0.2)(point_from_probs(PROBS)).tolist() == [True, False, False]


def test_patience():
    pt = point_from_probs(PROBS, unchanged=[0, 2, 3])
    assert Patience(2)(pt).tolist() == [False, True, True]
    assert Patience(3)(pt).tolist() == [False, False, True]
    with pytest.raises(ValueError, match="track `unchanged`"):
        Patience(1)(point_from_probs(PROBS))


def test_unchanged_counts_consecutive_agreeing_exit_points():
    top1s = [torch.tensor([4, 4]), torch.tensor([4, 5]), torch.tensor([4, 5]), torch.tensor([7, 5])]
    unchanged, prev, seen = None, None, []
    for t in top1s:
        unchanged = update_unchanged(unchanged, prev, t)
        prev = t
        seen.append(unchanged.tolist())
    assert seen == [[0, 0], [1, 0], [2, 1], [0, 2]]


def test_cosine():
    hidden = [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    prev = [[1.0, 0.0], [1.0, 0.0], [0.0, -1.0]]
    pt = point_from_probs(PROBS, hidden=hidden, prev=prev)
    # cosines: 1, 0.707, -1
    assert Cosine(0.7)(pt).tolist() == [True, True, False]
    assert Cosine(0.99)(pt).tolist() == [True, False, False]
    assert Cosine(-1.0)(point_from_probs(PROBS, hidden=hidden)).tolist() == [True] * 3  # no previous layer


def test_parse_and_errors():
    assert parse_criterion("max-prob:0.9") == MaxProb(0.9)
    assert parse_criterion("patience:2") == Patience(2)
    custom = lambda point: point.stats.max_prob > 0  # noqa: E731
    assert parse_criterion(custom) is custom
    for spec, words in [
        ("max-prob", "NAME:THRESHOLD"),
        ("speed:3", "unknown name 'speed'"),
        ("max-prob:1.5", r"max-prob: threshold must be a number in \[0.0, 1.0\]"),
        ("entropy:-1", "entropy: threshold must be a number in"),
        ("patience:1.5", "patience: threshold must be an int"),
        ("patience:0", r"patience: threshold must be an int in \[1, inf\]"),
        ("cosine:x", "cosine: threshold must be a number"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_criterion(spec)
    assert set(CRITERIA) == {"max-prob", "entropy", "margin", "patience", "cosine"}
