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
    top = min(ngram_max, T - 1)  # an n-gram needs an earlier occurrence and one more token
    if k == 0 or top < ngram_min:
        return drafts, counts
    # All n at once. tail[b, t] = the row's t-th token from the end; eq[b, t, j] = whether
    # context[b, j - t] is that token; so an n-gram ends at j where eq[b, :n, j] are all true.
    t = torch.arange(top, device=device)
    tail = context.gather(1, (end[:, None] - 1 - t[None, :]).clamp(0, T - 1))  # [B, top]
    padded = torch.nn.functional.pad(context, (top, 0), value=-1)
    shifted = padded.unfold(1, T, 1).flip(1)[:, :top]  # [B, top, T]: shifted[b, t, j] = context[b, j - t]
    run = (shifted == tail[:, :, None]).cumprod(1).bool()  # [B, top, T]: the last t + 1 tokens match
    j = torch.arange(T, device=device)
    n = t + 1
    valid = (
        (j[None, None, :] - t[None, :, None] >= start[:, None, None])  # the occurrence is in the row
        & (j[None, None, :] + 1 < end[:, None, None])  # and continues before the row's end
        & ((end[:, None] - n[None, :]) >= start[:, None])[:, :, None]  # the tail itself is in the row
        & (n >= ngram_min)[None, :, None]
    )
    latest = torch.where(run & valid, j, -1).amax(-1)  # [B, top]: the latest end of each n-gram
    best = (latest >= 0).long() * n[None, :]  # the longest n that matched (0: none)
    longest = best.amax(1)  # [B]
    at = latest.gather(1, (longest - 1).clamp(min=0)[:, None])[:, 0]
    first = at + 1  # the continuation's first slot
    cont = context.gather(1, (first[:, None] + torch.arange(k, device=device)[None, :]).clamp(0, T - 1))
    found = longest > 0
    drafts = torch.where(found[:, None], cont, drafts)
    counts = torch.where(found, (end - first).clamp(0, k), counts)
    return drafts, counts
