"""Lookup drafts: continue the current n-gram from its latest earlier occurrence in the context.

Prompt-lookup decoding (Saxena 2023; Hugging Face's ``prompt_lookup_num_tokens``) drafts for free:
when the last ``n`` tokens of a row also occur earlier in its prompt or output, the tokens that
followed that occurrence are proposed as drafts. On code, where names and whole lines repeat,
such drafts are often long and right. On an accelerator the search is batched on the device, one
row per batch row, with no host synchronisation; on a CPU, where the host is the device, each row
is searched with a few NumPy operations (a tenth of the batched search's time at batch size 1:
tens of operator dispatches cost more than the search). Both give the same drafts. Longer
n-grams are tried first. For each n, the latest
occurrence wins, which continues the most recent repetition. (HF takes the earliest.)
"""

from __future__ import annotations

import numpy as np
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
    if context.device.type == "cpu":
        return _lookup_host(context, start, end, k, ngram_max, ngram_min)
    return _lookup_batched(context, start, end, k, ngram_max, ngram_min)


def _lookup_host(context: Tensor, start: Tensor, end: Tensor, k: int, ngram_max: int, ngram_min: int):
    """:func:`lookup_drafts` row by row in NumPy (a CPU tensor's memory, no copy)."""
    B, T = context.shape
    ctx = context.numpy()
    drafts = np.zeros((B, k), dtype=np.int64)
    counts = np.zeros(B, dtype=np.int64)
    if k > 0:
        for b, (s, e) in enumerate(zip(start.tolist(), end.tolist(), strict=True)):
            row = ctx[b]
            for n in range(min(ngram_max, T - 1), ngram_min - 1, -1):
                if e - n <= s:  # the tail and an earlier occurrence do not fit in the row
                    continue
                # the n-gram ending at j (s + n - 1 <= j <= e - 2) equals the row's last n tokens
                hit = row[s + n - 1 : e - 1] == row[e - 1]
                for i in range(1, n):
                    hit &= row[s + n - 1 - i : e - 1 - i] == row[e - 1 - i]
                found = np.flatnonzero(hit)
                if found.size:
                    first = s + n + int(found[-1])  # the continuation's first slot
                    drafts[b] = row[np.minimum(np.arange(first, first + k), T - 1)]
                    counts[b] = min(e - first, k)
                    break
    return torch.from_numpy(drafts), torch.from_numpy(counts)


def _lookup_batched(context: Tensor, start: Tensor, end: Tensor, k: int, ngram_max: int, ngram_min: int):
    """:func:`lookup_drafts` for every row at once, on the context's device."""
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
