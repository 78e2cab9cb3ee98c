"""Lookup drafts: continue the current n-gram from its latest earlier occurrence in the context.

Prompt-lookup decoding (Saxena 2023; Hugging Face's ``prompt_lookup_num_tokens``) drafts for free:
when the last ``n`` tokens of a row also occur earlier in its prompt or output, the tokens that
followed that occurrence are proposed as drafts. On code, where names and whole lines repeat,
such drafts are often long and right. On an accelerator the search is batched on the device, one
row per batch row, with no host synchronisation (:func:`lookup_drafts`); on a CPU, where the
host is the device, an index of each row's n-grams kept on the host answers with a few
dictionary reads (:class:`NgramIndex`). Both give the same drafts and counts (the host index
can also look in a memory of earlier calls, :class:`LookupMemory`, which the device search has
not). Longer n-grams are tried first. For each n, the latest occurrence wins, which continues the most recent
repetition. (HF takes the earliest.)
"""

from __future__ import annotations

import itertools

import torch

from ..engine.mode import Round
from ..model.memory import memory_of
from .base import Drafter, DraftStats, Proposal

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


#: Where a model's memory of earlier calls is kept (``memory_of(model).modes``).
MEMORY = "lookup_memory"


def forget_calls(model) -> None:
    """Drop ``model``'s memory of earlier calls (``lookup_memory``), if it has one."""
    memory_of(model).modes.pop(MEMORY, None)


class LookupMemory:
    """What earlier calls on a model wrote and were given, for lookup drafts across calls (suffix
    decoding's idea: requests repeat each other). For every n-gram of at least ``ngram_min``
    tokens in the rows taken in, the ``span`` tokens that followed its latest occurrence; the
    oldest n-grams are forgotten past ``capacity``. A row's own context is searched first, at
    each n-gram length (:meth:`NgramIndex.drafts`)."""

    def __init__(self, capacity: int = 1 << 17, span: int = 16, ngram_min: int = 2):
        self.capacity, self.span, self.ngram_min = capacity, span, ngram_min
        self.next: dict[tuple[int, ...], list[int]] = {}

    def __len__(self) -> int:
        return len(self.next)

    def add(self, rows: list[list[int]], ngram_max: int) -> None:
        """Take in finished rows (tokens, no padding); the latest occurrence of an n-gram wins."""
        ngrams = range(self.ngram_min, ngram_max + 1)
        table = self.next
        for row in rows:
            for j in range(len(row) - 1):
                follows = row[j + 1 : j + 1 + self.span]
                for n in ngrams:
                    if j + 1 >= n:
                        key = tuple(row[j + 1 - n : j + 1])
                        table.pop(key, None)  # re-inserted: the newest, the last to be forgotten
                        table[key] = follows
        excess = len(table) - self.capacity
        if excess > 0:
            for key in list(itertools.islice(table, excess)):
                del table[key]

    def get(self, key: tuple[int, ...]) -> list[int] | None:
        return self.next.get(key) if len(key) >= self.ngram_min else None


class NgramIndex:
    """:func:`lookup_drafts` on the host, kept up to date as rows grow (for a CPU, where a round's
    bookkeeping runs right after a forward pass has pushed the interpreter's code and data out
    of the caches, so each operation costs several times its usual time; a few dictionary reads
    are cheaper than any search).

    Per row: its tokens (the prompt without padding, then the output) and, for every n-gram of
    ``ngram_min .. ngram_max`` tokens that is followed by a token, where its latest occurrence
    ends. Drafts are the same as :func:`lookup_drafts`' (past a row's drafts, the filler is 0),
    unless a ``memory`` of earlier calls is given: then, at each n-gram length, a row with no
    match of its own takes the memory's continuation."""

    def __init__(
        self,
        prompt: Tensor,
        pad: Tensor,
        ngram_max: int = 3,
        ngram_min: int = 1,
        memory: LookupMemory | None = None,
    ):
        self.ngrams = range(ngram_min, ngram_max + 1)
        self.memory = memory  # earlier calls' n-grams, searched after the row's own at each length
        self.rows = [row[p:] for row, p in zip(prompt.tolist(), pad.tolist(), strict=True)]
        self.ends: list[dict[tuple[int, ...], int]] = [{} for _ in self.rows]
        self.indexed = [0] * len(self.rows)  # per row: n-grams ending before this are indexed
        self.emitted = [0] * len(self.rows)  # per row: output tokens taken in
        for b in range(len(self.rows)):
            self._index(b)

    def _index(self, b: int) -> None:
        """Index row ``b``'s n-grams that now have a continuation (the latest end wins)."""
        row, ends = self.rows[b], self.ends[b]
        for j in range(self.indexed[b], len(row) - 1):
            for n in self.ngrams:
                if j + 1 >= n:
                    ends[tuple(row[j + 1 - n : j + 1])] = j
        self.indexed[b] = max(self.indexed[b], len(row) - 1)

    def update(self, out: Tensor, out_len: list[int]) -> None:
        """Take in each row's new output tokens, ``out[b, :out_len[b]]`` (``[B, W]``)."""
        for b, n in enumerate(out_len):
            if n > self.emitted[b]:
                self.rows[b] += out[b, self.emitted[b] : n].tolist()
                self.emitted[b] = n
                self._index(b)

    def drafts(self, k: int) -> tuple[list[list[int]], list[int]]:
        """Each row's drafts (``k`` each, filler past its count) and count (0: no match)."""
        drafts, counts = [], []
        memory = self.memory
        for row, ends in zip(self.rows, self.ends, strict=True):
            found = []
            for n in reversed(self.ngrams):
                j = ends.get(tuple(row[-n:])) if len(row) > n else None
                if j is not None:
                    found = row[j + 1 : j + 1 + k]
                    break
                if memory is not None and len(row) >= n:
                    found = memory.get(tuple(row[-n:])) or []
                    if found:
                        found = found[:k]
                        break
            counts.append(len(found))
            drafts.append(found + [0] * (k - len(found)))
        return drafts, counts


class LookupDrafter(Drafter):
    """Lookup drafts: up to ``k`` per row, continuing its latest earlier occurrence of its last
    n-gram (at most ``ngram_max`` tokens). Their draft distribution is a point mass, which
    sampling needs once they are verified (:func:`~eedecode.drafting.verify.with_point_masses`).

    A mode that adapts looks for them every round, whoever drafts it (:meth:`look`): whether rows
    found a match says what kind of text the round is in, and the drafts are judged against the
    round's tokens afterwards (:meth:`judge`), played or not. On a CPU they come from the host's
    n-gram index (:class:`NgramIndex`, :meth:`start`), as lists, with no tensor arithmetic: there
    a round's bookkeeping runs right after a forward pass, with cold caches, where each operation
    costs several times its usual time. Elsewhere: the batched search on the device
    (:func:`lookup_drafts`) and one host read."""

    name = "lookup"

    def __init__(self, ngram_max: int = 3, stats: DraftStats | None = None):
        super().__init__(stats)
        self.ngram_max = ngram_max
        self.index: NgramIndex | None = None
        self.found = None  # this round's drafts: (drafts, counts) lists, or a Proposal
        self.judged = None  # this round's (drafts, drafts per running row), for judge

    def start(self, state, input_ids: Tensor, on_cpu: bool, memory: LookupMemory | None = None) -> None:
        """At the prefill: keep each row's n-grams on the host (``on_cpu``), or search on the
        device. ``memory``: earlier calls' n-grams, searched after each row's own (host only)."""
        self.index = NgramIndex(input_ids, state.cache.pad, self.ngram_max, memory=memory) if on_cpu else None
        self.found = self.judged = None

    def remember(self, state, memory: LookupMemory) -> None:
        """Give ``memory`` this call's rows: each prompt (no padding) and what it was given."""
        pads, lengths = state.cache.pad.tolist(), state.out_len.tolist()
        prompts, outs = state.prompt.tolist(), state.out.tolist()
        rows = [p[pad:] + o[:n] for p, pad, o, n in zip(prompts, pads, outs, lengths, strict=True)]
        memory.add(rows, self.ngram_max)

    def catch_up(self, state) -> None:
        """Index the rows' tokens emitted since the last look (on the host; nothing on a device)."""
        if self.index is not None:
            self.index.update(state.out, state.out_len.tolist())

    def search(self, state, k: int) -> Proposal:
        """The batched search over each row's context, on the device (no host read)."""
        context = torch.cat([state.prompt, state.out], 1)  # [B, P + W]
        end = state.prompt.shape[1] + state.out_len
        drafts, counts = lookup_drafts(context, state.cache.pad, end, k, self.ngram_max)
        return Proposal(drafts, counts, [], 0, None)

    def look(self, state, k: int, laggards: list[int]) -> tuple[bool, bool, bool]:
        """Find up to ``k`` drafts per row for this round; whether some running row found a
        match, whether every one did, whether the ``laggards`` did (one host read)."""
        if self.index is None:
            found = self.search(state, k)
            matched = (found.counts > 0) & state.active
            done = matched | ~state.active
            self.found, self.judged = found, (found.drafts, found.per_row(state.active))
            some, every, behind = torch.stack([matched.any(), done.all(), done[laggards].all()]).tolist()
            return some, every, behind
        self.index.update(state.out, state.out_len.tolist())
        drafts, counts = self.index.drafts(k)
        active = state.active.tolist()
        matched = [c > 0 and a for c, a in zip(counts, active, strict=True)]
        done = [m or not a for m, a in zip(matched, active, strict=True)]
        self.found = (drafts, counts)
        self.judged = (drafts, [c * a for c, a in zip(counts, active, strict=True)])
        return any(matched), all(done), all(done[b] for b in laggards)

    def propose(self, state, k: int, stop=None) -> Proposal:
        """This round's drafts (those :meth:`look` found, else a search now; no stop rule)."""
        if self.found is None:
            self.found = self.search(state, k)
        if not isinstance(self.found, Proposal):  # the host's lists
            drafts, counts = self.found
            self.found = Proposal(torch.tensor(drafts), torch.tensor(counts), [], 0, None)
        return self.found

    def observe(self, state, proposal: Proposal, counts: Tensor) -> None:
        """Nothing: lookup drafts are judged after every round, played or not (:meth:`judge`)."""

    def judge(self, rnd: Round, counts: list[int]) -> None:
        """Tell the draft-length model how far this round's drafts would have run, against the
        tokens the round emitted (``rnd.tokens`` ``[B, m]``; ``counts``: ``rnd.counts`` on the host)."""
        if self.judged is None:
            return
        (drafts, per_row), self.judged, self.found = self.judged, None, None
        if self.stats is None:
            return
        runs = self.stats.runs
        if isinstance(drafts, list):
            runs.judge_rows(drafts, per_row, rnd.tokens.tolist(), counts)
        else:
            runs.judge(drafts, per_row, rnd.tokens, rnd.counts, runs.judged.device)
