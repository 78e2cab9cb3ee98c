"""The decoding loop: one generation's rounds, with one host synchronisation each.

A :class:`Decoder` owns the generation's :class:`~eedecode.engine.state.DecodingState` (the
cache and, per batch row, the *pending* token: the newest emitted token, not yet written to the
cache). Each round a mode (:mod:`eedecode.modes`) proposes and verifies tokens on that state;
:meth:`Decoder.step` then applies EOS and ``max_new_tokens`` per row without a Python loop over
rows, rolls the cache back to each row's accepted length when the mode asks for it, and
synchronises with the host exactly once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..model.runner import ModelRunner
from .chooser import TokenChooser
from .mode import Mode, RoundView
from .state import DecodingState

Tensor = torch.Tensor


@dataclass
class DecodeStats:
    """Engine counters, read once at the end. A *row-round* is one round of one running row."""

    rounds: int = 0
    row_rounds: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    accepted_length_histogram: list[int] = field(default_factory=list)  # [a] = row-rounds accepting a
    prefill_time_s: float = 0.0


class Decoder:
    """State of one generation, all on the device: the prompt, the cache, each row's pending token
    (the newest emitted token, not yet in the cache), cache length and activity, the output
    buffer, and the statistics. A round ends in :meth:`_emit`, which applies EOS and
    ``max_new_tokens`` per row without a Python loop over rows, then reads a few numbers in one
    synchronisation (:meth:`_sync`)."""

    def __init__(
        self,
        runner: ModelRunner,
        chooser: TokenChooser,
        mode: Mode,
        input_ids: Tensor,
        max_new_tokens: int,
        eos_token_id: tuple[int, ...] = (),
        pad_token_id: int | None = None,
    ):
        B, P = input_ids.shape
        max_drafts = min(mode.max_drafts, max_new_tokens)  # a round never emits more than that
        self.runner, self.chooser, self.mode = runner, chooser, mode
        self.state = DecodingState(runner, chooser, input_ids, max_new_tokens, max_drafts, pad_token_id)
        dev = self.state.cache.device
        self.eos = torch.tensor(eos_token_id, dtype=torch.long, device=dev)
        self.positions = torch.arange(max_drafts + 1, device=dev)
        # statistics, accumulated on the device
        self.hist = torch.zeros(max_drafts + 1, dtype=torch.long, device=dev)
        self.drafted = torch.zeros((), dtype=torch.long, device=dev)
        self.rounds = 0
        self.prefill_time_s = 0.0
        # Each row's count comes back with the sync only for modes that learn from it.
        self.wants_counts = mode.observes_counts
        self.records: list[tuple[Tensor, Tensor, Tensor]] = []  # (logits, scores, kept) per block

    def prefill(
        self, input_ids: Tensor, attention_mask: Tensor | None, want_tokens: bool = False
    ) -> RoundView:
        """Write the prompt ``[B, P]`` to every layer and emit each row's first new token."""
        t0 = time.perf_counter()
        if attention_mask is not None:
            self.state.cache.set_padding(attention_mask)
        last = self.mode.prefill(self.state, input_ids)  # [B, H]
        token = self.chooser.choose(self.state, self.runner.logits(last))  # [B]
        view = self._emit(token[:, None], torch.ones_like(token), want_tokens, first=True)
        self.prefill_time_s = time.perf_counter() - t0
        return view

    def step(self, max_tokens: int, want_tokens: bool = False) -> RoundView:
        """One round of the mode: at most ``max_tokens`` new tokens per row."""
        rnd = self.mode.round(self.state, max_tokens)
        self.drafted += rnd.drafted
        view = self._emit(rnd.tokens, rnd.counts, want_tokens)
        self._rollback(view)
        self.mode.observe(rnd, view)
        return view

    def _emit(self, tokens: Tensor, counts: Tensor, want_tokens: bool, first: bool = False) -> RoundView:
        """Rows emit ``tokens[b, :counts[b]]`` ``[B, m]``, cut after their first EOS and at
        ``max_new_tokens``; running rows move past what they emitted (the newest becomes pending;
        the cache holds the rest), stopping rows are rewound to an empty cache (what they hold no
        longer matters). ``first``: the prefill's token, which adds nothing to the cache and is not
        a round. One host synchronisation."""
        st, m = self.state, tokens.shape[1]
        running = st.active
        counts = counts * running  # stopped rows emit nothing
        pos = self.positions[:m]
        keep = counts
        hit_eos = None
        if self.eos.numel():  # cut after the first EOS among the emitted tokens
            is_eos = torch.isin(tokens, self.eos) & (pos < counts[:, None])  # [B, m]
            hit_eos = is_eos.any(1)
            keep = torch.where(hit_eos, is_eos.int().argmax(1) + 1, counts)
        room = st.max_new - st.out_len
        keep = torch.minimum(keep, room)  # [B]
        st.out.scatter_(1, st.out_len[:, None] + pos, tokens)  # past `keep`: overwritten later
        st.out_len += keep
        remaining = room - keep
        st.active = (remaining > 0).logical_and_(running)
        if hit_eos is not None:
            st.active &= ~hit_eos
        # The newest token becomes pending (a stopped row's is never used: its outputs are discarded).
        last = (counts - 1).clamp_min(0)
        st.pending = tokens[:, 0] if m == 1 else tokens.gather(1, last[:, None])[:, 0]
        if not first:
            if self.mode.rolls_back:  # stopping rows are rewound to an empty cache
                st.seq_len = (st.seq_len + counts).mul_(st.active)
            self.hist.scatter_add_(0, last, running.long())
            self.rounds += 1
        if self.chooser.recorded is not None:
            self.records.append((*self.chooser.recorded, keep))
            self.chooser.recorded = None
        return self._sync(remaining, counts, keep if want_tokens else None, tokens)

    def _sync(self, remaining: Tensor, counts=None, keep=None, tokens=None) -> RoundView:
        """The round's one host synchronisation: one tensor, laid out as
        ``[max remaining of a running row | (min, max) cache length | (output length, running) per
        row | count per row | (kept count per row, tokens)]``, each part present only when needed: the
        lengths when the mode rolls back, the output lengths for processors that read the
        context, the counts for modes that learn from them, the tokens when asked for."""
        st = self.state
        B = st.out_len.shape[0]
        parts = [(remaining * st.active).amax(0, keepdim=True)]
        rolls_back = self.mode.rolls_back
        if rolls_back:
            parts.append(torch.stack(torch.aminmax(st.seq_len)))  # min, max
        if st.host_out_len is not None:
            parts += [st.out_len, st.active.long()]
        with_counts = self.wants_counts and counts is not None
        if with_counts:
            parts.append(counts)
        if keep is not None:
            parts += [keep, tokens.flatten()]
        host = (parts[0] if len(parts) == 1 else torch.cat(parts)).tolist()
        view = RoundView(host[0] > 0, host[0])
        i = 1
        if rolls_back:
            view.cache_lengths, i = (host[2], host[1]), 3  # (max, min)
        if st.host_out_len is not None:
            st.host_out_len, st.host_active = host[i : i + B], [a == 1 for a in host[i + B : i + 2 * B]]
            i += 2 * B
        if with_counts:
            view.counts, i = host[i : i + B], i + B
        if keep is not None:
            m = tokens.shape[1]
            kept_counts, toks = host[i : i + B], host[i + B :]
            view.kept = [toks[b * m : b * m + n] for b, n in enumerate(kept_counts)]
        return view

    def truncate(self, row: int, length: int) -> RoundView:
        """Stop ``row`` with ``length`` new tokens (a user stopping criterion fired; host path)."""
        self.state.out_len[row] = length
        self.state.active[row] = False
        self.state.seq_len[row] = 0
        view = self._sync(self.state.max_new - self.state.out_len)
        self._rollback(view)
        return view

    def _rollback(self, view: RoundView) -> None:
        """Move every layer of the cache to ``seq_len``, for modes that may leave rejected
        tokens behind (plain decoding never does)."""
        if view.cache_lengths is not None:
            hi, lo = self.state.cache_bounds = view.cache_lengths
            self.state.cache.rollback(self.state.seq_len, hi, uniform=hi == lo)

    def output(self, prompt: Tensor, pad_token_id: int | None) -> Tensor:
        """``[B, P + new]``: each row's new tokens, padded after its end with ``pad_token_id``."""
        width = int(self.state.out_len.max())
        new = self.state.out[:, :width]
        if pad_token_id is not None:
            past_end = torch.arange(width, device=new.device)[None, :] >= self.state.out_len[:, None]
            new = new.masked_fill(past_end, pad_token_id)
        return torch.cat([prompt, new.to(prompt.device)], dim=1)

    def stats(self) -> DecodeStats:
        hist = self.hist.tolist()
        while len(hist) > 1 and hist[-1] == 0:
            hist.pop()
        return DecodeStats(
            rounds=self.rounds,
            row_rounds=sum(hist),
            drafted_tokens=int(self.drafted),
            accepted_tokens=sum(a * n for a, n in enumerate(hist)),
            accepted_length_histogram=hist if self.rounds else [],
            prefill_time_s=self.prefill_time_s,
        )


__all__ = ["DecodeStats", "Decoder", "RoundView"]
