"""Which request is which, for a vLLM custom proposer that is told no request ids.

vLLM calls ``propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu)`` with one row per
running request, in an order that changes when requests finish (the last row moves into the
hole) or arrive. The drafter keeps per-request state (a row of its private KV cache, the tokens
in it, a lookup index, the drafts it proposed last), so each row is matched to its state by its
tokens: a request's verified tokens only grow, so its state is the one whose verified tokens are a
prefix of the row's. Correctness never depends on the match: cached keys and values are reused
only up to the longest common prefix of the cached tokens and the row's tokens (a wrong or
missing match only costs recomputation), so identical prompts and shared system prompts are safe,
and share the cached prefix. Lookup drafts come from :class:`eedecode.drafting.lookup.NgramIndex`
(prompt-lookup decoding, Saxena 2023).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..drafting.lookup import NgramIndex


@dataclass(eq=False)
class RowState:
    """One request's drafter state. ``tokens[:cached]`` have keys and values in cache row
    ``cache_row``; ``tokens[:seen]`` are the request's verified tokens as of the last call (the
    rest of ``tokens[:cached]`` are drafts written while drafting)."""

    cache_row: int
    tokens: np.ndarray = field(default_factory=lambda: np.zeros(64, dtype=np.int64))
    seen: int = 0
    cached: int = 0
    prompt_len: int = 0
    index: NgramIndex | None = None
    last_source: str = "none"
    last_drafts: int = 0

    def continues(self, seq: np.ndarray) -> bool:
        """Whether ``seq`` is this request's tokens, grown since the last call."""
        return 0 < self.seen <= len(seq) and np.array_equal(self.tokens[: self.seen], seq[: self.seen])

    def shared_prefix(self, seq: np.ndarray) -> int:
        """How many leading positions of ``seq`` have valid keys and values here."""
        n = min(self.cached, len(seq))
        differ = np.flatnonzero(self.tokens[:n] != seq[:n])
        return int(differ[0]) if len(differ) else n

    def write(self, start: int, tokens: np.ndarray | list[int]) -> None:
        end = start + len(tokens)
        if end > len(self.tokens):
            grown = np.zeros(max(end, 2 * len(self.tokens)), dtype=np.int64)
            grown[: len(self.tokens)] = self.tokens
            self.tokens = grown
        self.tokens[start:end] = tokens

    def take(self, seq: np.ndarray, continuing: bool) -> None:
        """Adopt ``seq`` as this request's verified tokens. The last token's keys are never
        counted as cached, so a draft pass always starts from a token whose hidden state it needs."""
        self.cached = min(self.shared_prefix(seq), len(seq) - 1)
        if not continuing:
            self.index, self.prompt_len, self.last_drafts, self.last_source = None, len(seq), 0, "none"
        self.write(self.cached, seq[self.cached :])
        self.seen = len(seq)

    def lookup(self, k: int, ngram_max: int, ngram_min: int) -> list[int]:
        """Up to ``k`` drafts that continue the latest earlier occurrence of the longest n-gram
        (``ngram_max`` down to ``ngram_min`` tokens) that ends the context."""
        verified = self.tokens[: self.seen]
        if self.index is None:
            prompt = torch.from_numpy(verified[: self.prompt_len].copy())[None]
            self.index = NgramIndex(prompt, torch.zeros(1, dtype=torch.long), ngram_max, 1)
        out = torch.from_numpy(verified[self.prompt_len :].copy())[None]
        self.index.update(out, [self.seen - self.prompt_len])
        row, ends = self.index.rows[0], self.index.ends[0]
        for n in range(min(ngram_max, len(row) - 1), ngram_min - 1, -1):
            j = ends.get(tuple(row[-n:]))
            if j is not None:
                return row[j + 1 : j + 1 + k]
        return []


class RowTracker:
    """Matches the rows of each ``propose`` call to :class:`RowState` objects and hands out cache
    rows. States of finished requests are reused for new ones (keeping any shared prefix)."""

    def __init__(self) -> None:
        self.states: list[RowState] = []
        self.by_row: dict[int, RowState] = {}

    def match(self, rows: list[int], seqs: list[np.ndarray]) -> list[tuple[RowState, bool]]:
        """``(state, continuing)`` for each row, ``continuing`` being False for a new request."""
        found: dict[int, RowState] = {}
        for row, seq in zip(rows, seqs, strict=True):  # 1) a request that kept its row
            state = self.by_row.get(row)
            if state is not None and state.continues(seq):
                found[row] = state
        claimed = {id(s) for s in found.values()}
        for row, seq in zip(rows, seqs, strict=True):  # 2) a request that moved
            if row not in found:
                state = next((s for s in self.states if id(s) not in claimed and s.continues(seq)), None)
                if state is not None:
                    found[row] = state
                    claimed.add(id(state))
        out = []
        for row, seq in zip(rows, seqs, strict=True):  # 3) a new request
            continuing = row in found
            if not continuing:
                found[row] = self._free_state(seq, claimed)
                claimed.add(id(found[row]))
            found[row].take(seq, continuing)
            out.append((found[row], continuing))
        self.by_row = found
        return out

    def _free_state(self, seq: np.ndarray, claimed: set[int]) -> RowState:
        """An unclaimed state, the one sharing the longest cached prefix with ``seq``; or a new one."""
        free = [s for s in self.states if id(s) not in claimed]
        if not free:
            self.states.append(RowState(cache_row=len(self.states)))
            return self.states[-1]
        best = max(free, key=lambda s: s.shared_prefix(seq))
        best.seen = 0
        return best
