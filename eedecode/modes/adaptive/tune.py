"""``eedecode tune``: prepare the adaptive mode for one model, offline, in a few minutes.

It does three things and writes them to one policy file (JSON), which ``generate(policy_in=...)``
and ``eedecode generate --policy-in`` read:

1. **A layer set to draft through** (Draft & Verify, Zhang et al. 2024; SWIFT, Xia et al. 2024):
   starting from every layer, layers are dropped one at a time, greedily, while the predicted
   speed-up of drafting through the rest improves. The speed-up is predicted from the
   teacher-forced agreement of the reduced model's top-1 with the full model's, on the tuning
   text. The adaptive mode offers the result as an extra arm.
2. **A draft vocabulary**: the tuning text's tokens ranked by frequency. ``draft_vocab=N`` scores
   drafts over the first N of them. Verification keeps the full head.
3. **A warm policy**: the adaptive mode generates from the tuning prompts, so the bandit's
   estimates for this model and machine are already in the file.
"""

from __future__ import annotations

from collections import Counter

import torch

from ...drafting.skip import segments
from ...model.costs import expected_tokens_per_round, ideal_speedup

#: Drafts per round assumed when predicting the speed-up of a layer set.
PREDICT_DRAFTS = 4


def predicted_speedup(agreement: float, layers: int, num_layers: int, k: int = PREDICT_DRAFTS) -> float:
    """The ideal speed-up (:func:`~eedecode.model.costs.ideal_speedup`) of ``k`` drafts per round
    through ``layers`` of ``num_layers`` layers (a draft step costing ``layers / num_layers`` of a
    step, a verification about one) accepted i.i.d. with probability ``agreement``."""
    a = min(agreement, 1.0)
    return ideal_speedup(expected_tokens_per_round(a, k), k, layers / num_layers, 1.0)


@torch.no_grad()
def layer_set_agreement(runner, blocks: torch.Tensor, layers, final: torch.Tensor) -> float:
    """Top-1 agreement of the model reduced to ``layers`` with the full model's top-1 ``final``
    on token blocks ``[N, T]`` (teacher-forced, no cache)."""
    h = runner.embed(blocks)
    for a, b in segments(layers):
        h = runner.run_layers(h, a, b)
    return float((runner.exit_head(h, stats={"argmax"}).argmax == final).float().mean())


@torch.no_grad()
def search_skip_layers(runner, blocks: torch.Tensor, progress=None) -> tuple[list[int], float, float]:
    """Greedy layer removal (see the module docstring). Returns the layer set, its agreement and
    its predicted speed-up; the set is empty when no removal pays (then no skip arm is offered)."""
    L = runner.num_layers
    final = runner.exit_head(runner.run_layers(runner.embed(blocks), 0, L), stats={"argmax"}).argmax
    current = list(range(L))
    best_a, best_s = 1.0, predicted_speedup(1.0, L, L)
    while len(current) > 1:
        trials = []
        for layer in current:
            rest = [i for i in current if i != layer]
            a = layer_set_agreement(runner, blocks, rest, final)
            trials.append((predicted_speedup(a, len(rest), L), a, rest))
            if progress is not None:
                progress.update(1)
        speed, a, rest = max(trials, key=lambda t: t[0])
        if speed <= best_s:
            break
        current, best_a, best_s = rest, a, speed
    return (current if len(current) < L else []), best_a, best_s


def token_ranking(tokenizer, texts: list[str]) -> list[int]:
    """Token ids of ``texts``, most frequent first."""
    counts = Counter()
    for text in texts:
        counts.update(tokenizer(text).input_ids)
    return [token for token, _ in counts.most_common()]


def blocks_from(tokenizer, texts: list[str], length: int, device) -> torch.Tensor:
    """Non-overlapping ``[N, length]`` blocks of the texts' tokens."""
    ids = [t for text in texts for t in tokenizer(text).input_ids]
    n = max(1, len(ids) // length)
    ids = (ids + ids[:1] * length)[: n * length]
    return torch.tensor(ids, device=device).view(n, length)
