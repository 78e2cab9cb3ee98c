"""Lookup drafts on hand-made contexts with known answers."""

from __future__ import annotations

import torch

from eedecode.drafting.lookup import NgramIndex, lookup_drafts


def run(rows, k=3, ngram_max=3, starts=None, width=None):
    width = width or max(len(r) for r in rows)
    ctx = torch.full((len(rows), width), 99, dtype=torch.long)
    for b, r in enumerate(rows):
        ctx[b, : len(r)] = torch.tensor(r)
    start = torch.tensor(starts or [0] * len(rows))
    end = torch.tensor([len(r) for r in rows])
    d, c = lookup_drafts(ctx, start, end, k, ngram_max)
    return [d[b, : c[b]].tolist() for b in range(len(rows))]


def test_continues_the_latest_occurrence_of_the_longest_ngram():
    #          0  1  2  3  4  5  6  7  8  9 10
    row = [1, 2, 3, 9, 1, 2, 4, 7, 5, 1, 2]  # "1 2" occurs at 0 and 4: the latest (4) continues 4 7 5
    assert run([row]) == [[4, 7, 5]]
    row = [5, 1, 2, 3, 8, 8, 1, 2, 6, 7, 1, 2, 3]  # "1 2 3" at 1 beats the later "1 2" at 6
    assert run([row]) == [[8, 8, 1]]


def test_fewer_drafts_when_the_context_ends_and_none_without_a_match():
    assert run([[4, 5, 6, 4, 5]], k=5) == [[6, 4, 5]]  # "4 5" at 0 continues 6 4 5, then the end
    assert run([[1, 2, 3, 4]]) == [[]]
    assert run([[7]]) == [[]]


def test_rows_are_independent_and_padding_and_stale_slots_are_ignored():
    rows = [[0, 0, 3, 4, 3], [3, 4, 5, 3, 4]]
    # row 0: padding 0 0 is outside [start, end); "3" occurs at 2 -> continues 4 3
    # row 1: "3 4" at 0 -> 5 3 4
    assert run(rows, starts=[2, 0]) == [[4, 3], [5, 3, 4]]
    # stale tokens after a row's end never match or get proposed
    assert run([[3, 4, 3]], width=6) == [[4, 3]]


def test_zero_drafts_asked():
    d, c = lookup_drafts(torch.tensor([[1, 2, 1]]), torch.tensor([0]), torch.tensor([3]), 0)
    assert d.shape == (1, 0) and c.tolist() == [0]


def _reference(tokens: list[int], k: int, ngram_max: int, ngram_min: int) -> list[int]:
    """Plain Python: the latest earlier occurrence of the longest matching tail n-gram."""
    for n in range(ngram_max, ngram_min - 1, -1):
        if len(tokens) <= n:
            continue
        tail = tokens[-n:]
        for i in range(len(tokens) - n - 1, -1, -1):
            if tokens[i : i + n] == tail:
                return tokens[i + n : i + n + k]
    return []


def random_cases(seed: int, n: int, max_batch: int, max_len: int, max_vocab: int, min_k: int):
    """``n`` random (context, start, end, k, ngram_max, ngram_min) cases, padding and stale slots
    included."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        B, T, V = (
            int(torch.randint(lo, hi, (1,), generator=g))
            for lo, hi in ((1, max_batch), (1, max_len), (2, max_vocab))
        )
        ctx = torch.randint(0, V, (B, T), generator=g)
        start = torch.randint(0, T, (B,), generator=g)
        end = torch.minimum(start + torch.randint(0, T + 1, (B,), generator=g), torch.tensor(T))
        k, nmax = int(torch.randint(min_k, 7, (1,), generator=g)), int(torch.randint(1, 5, (1,), generator=g))
        yield ctx, start, end, k, nmax, int(torch.randint(1, nmax + 1, (1,), generator=g))


def test_matches_a_plain_python_search_on_random_contexts():
    for ctx, start, end, k, nmax, nmin in random_cases(0, 500, 4, 30, 5, min_k=1):
        drafts, counts = lookup_drafts(ctx, start, end, k, nmax, nmin)
        for b in range(ctx.shape[0]):
            want = _reference(ctx[b, start[b] : end[b]].tolist(), k, nmax, nmin)
            assert drafts[b, : counts[b]].tolist() == want


def test_the_host_index_gives_the_batched_search_drafts_as_rows_grow():
    """On a CPU an index of each row's n-grams, kept up to date as the output grows, answers
    instead of the batched search: the same drafts and counts after every round."""
    g = torch.Generator().manual_seed(2)
    for ctx, start, _, k, nmax, nmin in random_cases(1, 200, 5, 40, 6, min_k=0):
        B, T = ctx.shape
        P = int(torch.randint(0, T + 1, (1,), generator=g))  # prompt columns; the rest is output
        pad = torch.minimum(start, torch.tensor(P))
        prompt, out = ctx[:, :P].clone(), ctx[:, P:]
        index = NgramIndex(prompt, pad, nmax, nmin)
        length = [0] * B
        while True:  # rounds: each row takes in a few more output tokens (or none)
            grow = torch.randint(0, 4, (B,), generator=g).tolist()
            length = [min(n + d, T - P) for n, d in zip(length, grow, strict=True)]
            index.update(out, length)
            drafts, counts = index.drafts(k)
            want, want_counts = lookup_drafts(ctx, pad, torch.tensor(length) + P, k, nmax, nmin)
            assert counts == want_counts.tolist()
            for b in range(B):
                assert len(drafts[b]) == k and drafts[b][: counts[b]] == want[b, : counts[b]].tolist()
            if all(n == T - P for n in length):
                break
