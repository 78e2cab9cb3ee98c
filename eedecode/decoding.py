"""Decoding loops on the model runner: the autoregressive baseline and self-speculative decoding.

A decoder holds the cache and, per batch row, the *pending* token: the newest emitted token, not
yet written to the cache. ``step()`` runs one round and returns, on the host, the tokens each row
emits; it synchronises with the device exactly once.

Self-speculative round (LayerSkip, Elhoushi et al. 2024), exit layer ``E`` of ``L``, ``k`` drafts:

1. draft: the pending token and each new draft go through layers ``[0, E)`` and the exit head;
   the layer-E states are kept (the *exit query cache*);
2. verify: the last draft goes through ``[0, E)``, then all ``k + 1`` exit states go through
   ``[E, L)`` in one pass — layers ``< E`` never see a draft token twice;
3. accept: a pure rule (greedy or speculative sampling, :mod:`eedecode.sampling`);
4. roll back: every layer's length moves to the accepted length.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .runner import ModelRunner
from .sampling import SamplingParams, greedy_accept, probabilities, sample, speculative_accept

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


class TokenChooser:
    """Picks tokens: argmax (greedy) or a draw after temperature/top-k/top-p.

    Drafts come from the exit head (:meth:`ModelRunner.exit_stats`, the fused kernel): its argmax
    when greedy; when sampling with a temperature only (on CUDA), its Gumbel-max sample, and the
    draft distribution q is then rebuilt at verification from the exit query cache. Otherwise
    (top-k, top-p, or the CPU) the draft step materialises the exit logits and keeps q.
    """

    def __init__(self, params: SamplingParams, generator: torch.Generator | None = None, accept_rule=None,
                 gumbel_drafts: bool | None = None):  # fmt: skip
        self.params = params
        self.generator = generator
        self.accept_rule = accept_rule or speculative_accept
        p = params
        self.gumbel_eligible = p.do_sample and not p.top_k and (p.top_p is None or p.top_p >= 1.0)
        # None: on CUDA only. The CPU reference hashes a noise value per vocabulary entry, which
        # costs more there than materialising the logits and drawing with torch.multinomial.
        self.gumbel_drafts = gumbel_drafts

    def choose(self, logits: Tensor) -> Tensor:
        """Full-model logits ``[B, V]`` -> token ``[B]``."""
        if not self.params.do_sample:
            return logits.argmax(-1)
        return sample(probabilities(logits, self.params), self.generator)

    def draft(self, runner: ModelRunner, h: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """Exit-layer states ``[B, H]`` -> draft token ``[B]``, q ``[B, V]`` if already computed,
        and the draft's confidence ``[B]`` (the probability of the likeliest token)."""
        if not self.params.do_sample:
            stats = runner.exit_stats(h, minimal=True)
            return stats.argmax, None, stats.max_prob
        use_gumbel = self.gumbel_drafts if self.gumbel_drafts is not None else h.is_cuda
        if self.gumbel_eligible and use_gumbel:
            seed = torch.randint(-(2**62), 2**62, (1,), generator=self.generator, device=h.device)
            stats = runner.exit_stats(h, temperature=self.params.temperature, seed=seed, minimal=True)
            return stats.sample, None, stats.max_prob
        q = probabilities(runner.exit_logits(h), self.params)
        return sample(q, self.generator), q, q.max(-1).values

    def accept(self, runner, drafts: Tensor, states: Tensor, qs: list[Tensor], target_logits: Tensor):
        """drafts ``[B, k]`` made from exit states ``[B, k, H]``; target logits ``[B, k + 1, V]``."""
        if not self.params.do_sample:
            return greedy_accept(drafts, target_logits)
        # Gumbel-max drafts were samples of softmax(exit logits / temperature): rebuild q from the states.
        q = torch.stack(qs, 1) if qs else probabilities(runner.exit_logits(states), self.params)
        return self.accept_rule(drafts, q, probabilities(target_logits, self.params), self.generator)


@dataclass
class RoundView:
    """What the host learns from a round's one synchronisation."""

    running: bool  # some row goes on
    max_remaining: int  # new tokens the furthest-behind running row may still emit
    kept: list[list[int]] | None = None  # tokens each row emitted this round (when asked for)


class Decoder:
    """State shared by both loops, all on the device: the cache, each row's pending token (the
    newest emitted token, not yet in the cache), cache length and activity, the output buffer,
    and the statistics. A round ends in :meth:`_emit`, which applies EOS and ``max_new_tokens``
    per row without a Python loop over rows, then reads a few flags in one synchronisation."""

    def __init__(self, runner: ModelRunner, chooser: TokenChooser, input_ids: Tensor, max_new_tokens: int,
                 eos_token_id: tuple[int, ...] = (), max_drafts: int = 0):  # fmt: skip
        B, P = input_ids.shape
        self.runner, self.chooser = runner, chooser
        self.cache = runner.new_cache(B, P + max_new_tokens + max_drafts + 2)
        dev = self.cache.device
        self.max_new = max_new_tokens
        self.eos = torch.tensor(eos_token_id, dtype=torch.long, device=dev)
        self.out = torch.zeros(B, max_new_tokens + max_drafts + 1, dtype=torch.long, device=dev)  # [B, W]
        self.out_len = torch.zeros(B, dtype=torch.long, device=dev)
        self.active = torch.ones(B, dtype=torch.bool, device=dev)
        self.seq_len = torch.full((B,), P, dtype=torch.long, device=dev)  # cache length, between rounds
        self.pending = torch.zeros(B, dtype=torch.long, device=dev)
        self.positions = torch.arange(max_drafts + 1, device=dev)
        # statistics, accumulated on the device
        self.hist = torch.zeros(max_drafts + 1, dtype=torch.long, device=dev)
        self.drafted = torch.zeros((), dtype=torch.long, device=dev)
        self.rounds = 0
        self.prefill_time_s = 0.0
        self.rolls_back = False  # the self-speculative loop moves the cache to seq_len each round

    def prefill(
        self, input_ids: Tensor, attention_mask: Tensor | None, want_tokens: bool = False
    ) -> RoundView:
        """Write the prompt ``[B, P]`` to every layer and emit each row's first new token."""
        t0 = time.perf_counter()
        if attention_mask is not None:
            self.cache.set_padding(attention_mask)
        last = self.runner.prefill(input_ids, self.cache)  # [B, H]
        token = self.chooser.choose(self.runner.logits(last))  # [B]
        view = self._emit(token[:, None], torch.ones_like(token), want_tokens, first=True)
        self.prefill_time_s = time.perf_counter() - t0
        return view

    def _emit(self, tokens: Tensor, counts: Tensor, want_tokens: bool, first: bool = False) -> RoundView:
        """Rows emit ``tokens[b, :counts[b]]`` ``[B, m]``, cut after their first EOS and at
        ``max_new_tokens``; running rows move past what they emitted (the newest becomes pending;
        the cache holds the rest), stopping rows are rewound to an empty cache (what they hold no
        longer matters). ``first``: the prefill's token, which adds nothing to the cache and is not
        a round. One host synchronisation."""
        m = tokens.shape[1]
        running = self.active
        counts = counts * running  # stopped rows emit nothing
        pos = self.positions[:m]
        keep = counts
        hit_eos = None
        if self.eos.numel():  # cut after the first EOS among the emitted tokens
            is_eos = torch.isin(tokens, self.eos) & (pos < counts[:, None])  # [B, m]
            hit_eos = is_eos.any(1)
            keep = torch.where(hit_eos, is_eos.int().argmax(1) + 1, counts)
        keep = torch.minimum(keep, self.max_new - self.out_len)  # [B]
        self.out.scatter_(1, self.out_len[:, None] + pos, tokens)  # past `keep`: overwritten later
        self.out_len += keep
        remaining = self.max_new - self.out_len
        stop = remaining <= 0 if hit_eos is None else hit_eos | (remaining <= 0)
        stop &= running
        last = (counts - 1).clamp_min(0)
        self.pending = torch.where(running, tokens.gather(1, last[:, None])[:, 0], self.pending)
        self.active = running & ~stop
        if not first:
            self.seq_len = torch.where(stop, 0, self.seq_len + counts)
            self.hist.scatter_add_(0, last, running.long())
            self.rounds += 1
        flags = self._flags(remaining)
        if want_tokens:
            host = torch.cat([flags, keep, tokens.flatten()]).tolist()
            B = len(keep)
            toks = host[len(flags) + B :]
            kept = [toks[b * m : b * m + n] for b, n in enumerate(host[len(flags) : len(flags) + B])]
        else:
            host, kept = flags.tolist(), None
        return self._view(host, kept)

    def _flags(self, remaining: Tensor) -> Tensor:
        """[most new tokens a running row may still emit (0: none runs)] and, where the cache rolls
        back, [max and min cache length]."""
        left = (remaining * self.active).max()
        if not self.rolls_back:
            return left[None]
        return torch.stack([left, self.seq_len.max(), self.seq_len.min()])

    def _view(self, host: list[int], kept) -> RoundView:
        if self.rolls_back:
            self._host_lengths = (host[1], host[2])
        return RoundView(host[0] > 0, host[0], kept)

    def truncate(self, row: int, length: int) -> RoundView:
        """Stop ``row`` with ``length`` new tokens (a user stopping criterion fired; host path)."""
        self.out_len[row] = length
        self.active[row] = False
        self.seq_len[row] = 0
        view = self._view(self._flags(self.max_new - self.out_len).tolist(), None)
        self._rollback()
        return view

    def _rollback(self) -> None:
        """Move the cache to ``seq_len`` (the self-speculative loop; plain decoding never rolls back)."""

    def sequences(self, prompt: Tensor, pad_token_id: int | None) -> Tensor:
        """``[B, P + new]``: each row's new tokens, padded after its end with ``pad_token_id``."""
        width = int(self.out_len.max())
        new = self.out[:, :width]
        if pad_token_id is not None:
            past_end = torch.arange(width, device=new.device)[None, :] >= self.out_len[:, None]
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


class AutoregressiveDecoder(Decoder):
    """The honest baseline: one token per round through all layers, on the same runner. Every row
    advances by one in every layer, so the cache never needs a rollback."""

    def step(self, num_drafts: int = 0, want_tokens: bool = False) -> RoundView:
        runner = self.runner
        h = runner.run_layers(runner.embed(self.pending[:, None]), 0, runner.num_layers, self.cache)
        token = self.chooser.choose(runner.logits(h[:, 0]))  # [B]
        return self._emit(token[:, None], torch.ones_like(token), want_tokens)


class SelfSpeculativeDecoder(Decoder):
    """Draft with layers ``[0, exit_layer)``, verify with ``[exit_layer, L)`` over the exit query cache."""

    def __init__(self, runner, chooser, input_ids, max_new_tokens, eos_token_id, *, exit_layer: int,
                 num_speculations: int, confidence_threshold: float | None = None):  # fmt: skip
        super().__init__(
            runner, chooser, input_ids, max_new_tokens, eos_token_id, max_drafts=num_speculations
        )
        self.exit_layer = exit_layer
        self.rolls_back = True
        # Stop drafting once no running row's draft is at least this likely (HF's assistant_
        # confidence_threshold). It reads the confidence on the host: one synchronisation per draft.
        self.confidence_threshold = confidence_threshold

    def step(self, num_drafts: int, want_tokens: bool = False) -> RoundView:
        runner, cache, E = self.runner, self.cache, self.exit_layer
        # 1) draft: layers [0, E) and the exit head, keeping the layer-E states.
        x = self.pending[:, None]  # [B, 1]
        exit_states, drafts, qs = [], [], []
        for i in range(num_drafts):
            h = runner.run_layers(runner.embed(x), 0, E, cache)  # [B, 1, H]
            exit_states.append(h)
            token, q, confidence = self.chooser.draft(runner, h[:, 0])
            x = token[:, None]
            drafts.append(x)
            if q is not None:
                qs.append(q)
            t = self.confidence_threshold
            if t is not None and i + 1 < num_drafts and not bool(((confidence >= t) & self.active).any()):
                break
        k = len(drafts)
        # 2) verify: the last draft through [0, E), then every unverified token through [E, L).
        exit_states.append(runner.run_layers(runner.embed(x), 0, E, cache))
        states = torch.cat(exit_states, 1)  # [B, k+1, H]: the exit query cache
        h = runner.run_layers(states, E, runner.num_layers, cache)  # [B, k+1, H]
        # 3) accept.
        drafts_t = torch.cat(drafts, 1) if drafts else x.new_zeros(x.shape[0], 0)
        tokens, counts = self.chooser.accept(runner, drafts_t, states[:, :k], qs, runner.logits(h))
        # 4) emit, and roll every layer back to the accepted length (a length move, no copy).
        self.drafted += k * self.active.sum()
        view = self._emit(tokens, counts, want_tokens)
        self._rollback()
        return view

    def _rollback(self) -> None:
        hi, lo = self._host_lengths
        self.cache.rollback(self.seq_len, hi, uniform=hi == lo)
