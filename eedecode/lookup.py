"""Lookup drafts: continue the current n-gram from its latest earlier occurrence in the context.

Prompt-lookup decoding (Saxena 2023; Hugging Face's ``prompt_lookup_num_tokens``) drafts for free:
when the last ``n`` tokens of a row also occur earlier in its prompt or output, the tokens that
followed that occurrence are proposed as drafts. On code, where names and whole lines repeat,
such drafts are often long and right. Here the search is batched on the device, one row per batch
row, with no host synchronisation. Longer n-grams are tried first. For each n, the latest
occurrence wins, which continues the most recent repetition. (HF takes the earliest.)
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def lookup_drafts(
    context: Tensor, start: Tensor, end: Tensor, k: int, ngram_max: int = 3, ngram_min: int = 1
) -> tuple[Tensor, Tensor]:
    """Drafts ``[B, k]`` and their counts ``[B]`` (0: no match) for rows of ``context`` ``[B, T]``
    whose tokens are ``context[b, start[b]:end[b]]`` (left padding before ``start``, stale slots
    after ``end``).

    For n from ``ngram_max`` down to ``ngram_min``: the last n tokens of each row are searched in
    its earlier tokens; the latest earlier occurrence whose continuation starts before ``end``
    gives up to ``k`` drafts (fewer when the context ends first). A row keeps the longest n that
    matched.
    """
    B, T = context.shape
    device = context.device
    drafts = torch.zeros(B, k, dtype=torch.long, device=device)
    counts = torch.zeros(B, dtype=torch.long, device=device)
    if k == 0:
        return drafts, counts
    found = torch.zeros(B, dtype=torch.bool, device=device)
    positions = torch.arange(T, device=device)
    for n in range(ngram_max, ngram_min - 1, -1):
        if n >= T:
            continue
        # the row's last n tokens: context[b, end[b] - n : end[b]]
        tail_idx = (end[:, None] - n + torch.arange(n, device=device)[None, :]).clamp(0, T - 1)
        tail = context.gather(1, tail_idx)  # [B, n]
        windows = context.unfold(1, n, 1)  # [B, T - n + 1, n]; window i covers i .. i + n - 1
        match = (windows == tail[:, None, :]).all(-1)  # [B, T - n + 1]
        i = positions[: T - n + 1][None, :]
        # inside the row's tokens, and followed by at least one token before the tail itself
        match &= (i >= start[:, None]) & (i + n < end[:, None]) & (end[:, None] - n >= start[:, None])
        latest = torch.where(match, i, -1).amax(1)  # [B]; -1: none
        take = (latest >= 0) & ~found
        first = latest + n  # the continuation's first slot
        cont_idx = (first[:, None] + torch.arange(k, device=device)[None, :]).clamp(0, T - 1)
        cont = context.gather(1, cont_idx)
        n_cont = (end - first).clamp(0, k)
        drafts = torch.where(take[:, None], cont, drafts)
        counts = torch.where(take, n_cont, counts)
        found |= take
    return drafts, counts
