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
    """Engine counters. A *row-round* is one round of one active batch row."""

    rounds: int = 0
    row_rounds: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    emitted_tokens: int = 0  # tokens the engine produced, before stop conditions trim them
    accepted_length_histogram: list[int] = field(default_factory=list)  # [a] = row-rounds accepting a
    prefill_time_s: float = 0.0

    def record(self, drafted: int, accepted: list[int]) -> None:
        self.rounds += 1
        self.row_rounds += len(accepted)
        self.drafted_tokens += drafted * len(accepted)
        for a in accepted:
            self.accepted_tokens += a
            self.emitted_tokens += a + 1
            if a >= len(self.accepted_length_histogram):
                self.accepted_length_histogram.extend([0] * (a + 1 - len(self.accepted_length_histogram)))
            self.accepted_length_histogram[a] += 1


class TokenChooser:
    """Picks tokens: argmax (greedy) or a draw after temperature/top-k/top-p.

    Drafts come from the exit head (:meth:`ModelRunner.exit_stats`, the fused kernel): its argmax
    when greedy, its Gumbel-max sample when sampling with a temperature only; then the draft
    distribution q is rebuilt at verification from the exit query cache. With top-k or top-p the
    draft step materialises the logits and keeps q.
    """

    def __init__(self, params: SamplingParams, generator: torch.Generator | None = None, accept_rule=None):
        self.params = params
        self.generator = generator
        self.accept_rule = accept_rule or speculative_accept
        p = params
        self.gumbel_drafts = p.do_sample and not p.top_k and (p.top_p is None or p.top_p >= 1.0)

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
        if self.gumbel_drafts:
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


class Decoder:
    """State shared by both loops: the cache, each row's length, pending token and activity."""

    def __init__(self, runner: ModelRunner, chooser: TokenChooser, batch_size: int, max_len: int):
        self.runner = runner
        self.chooser = chooser
        self.cache = runner.new_cache(batch_size, max_len)
        self.stats = DecodeStats()
        self.pending: Tensor | None = None  # [B] newest emitted token, not yet in the cache
        self.seq_len: Tensor | None = None  # [B] tokens in the cache (every layer, between rounds)
        self.host_len: list[int] = []
        self.active = torch.ones(batch_size, dtype=torch.bool, device=runner.device)
        self.host_active = [True] * batch_size

    def prefill(self, input_ids: Tensor, attention_mask: Tensor | None) -> list[int]:
        """Write the prompt ``[B, P]`` to every layer; return each row's first new token."""
        t0 = time.perf_counter()
        B, P = input_ids.shape
        if attention_mask is not None:
            self.cache.set_padding(attention_mask)
        last = self.runner.prefill(input_ids, self.cache)  # [B, H]
        token = self.chooser.choose(self.runner.logits(last))
        self.pending = token
        self.seq_len = torch.full((B,), P, dtype=torch.long, device=self.cache.device)
        self.host_len = [P] * B
        first = token.tolist()  # the one synchronisation of the prefill
        self.stats.prefill_time_s = time.perf_counter() - t0
        return first

    def deactivate(self, rows: list[int]) -> None:
        """Rows that stopped: they keep their cache length and emit nothing more."""
        for b in rows:
            self.host_active[b] = False
        self.active = torch.tensor(self.host_active, device=self.cache.device)

    def _commit(self, tokens: Tensor, counts: Tensor, drafted: int) -> list[list[int]]:
        """Move every row past its emitted tokens; the round's single host synchronisation."""
        counts = counts * self.active  # stopped rows do not advance
        last = (counts - 1).clamp_min(0)
        self.pending = torch.where(self.active, tokens.gather(1, last[:, None])[:, 0], self.pending)
        self.seq_len = self.seq_len + counts
        host = torch.cat([tokens, counts[:, None]], dim=1).tolist()
        emitted = []
        for b, row in enumerate(host):
            n = row[-1]
            self.host_len[b] += n
            emitted.append(row[:n])
        self.stats.record(drafted, [len(e) - 1 for e, a in zip(emitted, self.host_active, strict=True) if a])
        return emitted


class AutoregressiveDecoder(Decoder):
    """The honest baseline: one token per round through all layers, on the same runner."""

    def step(self, num_drafts: int = 0) -> list[list[int]]:
        runner = self.runner
        h = runner.run_layers(runner.embed(self.pending[:, None]), 0, runner.num_layers, self.cache)
        token = self.chooser.choose(runner.logits(h[:, 0]))  # [B]
        # Every row advanced by one in every layer: the cache needs no rollback.
        self.pending = torch.where(self.active, token, self.pending)
        host = token.tolist()
        self.stats.record(0, [0 for a in self.host_active if a])
        return [[t] if a else [] for t, a in zip(host, self.host_active, strict=True)]


class SelfSpeculativeDecoder(Decoder):
    """Draft with layers ``[0, exit_layer)``, verify with ``[exit_layer, L)`` over the exit query cache."""

    def __init__(self, runner, chooser, batch_size, max_len, exit_layer: int, confidence_threshold=None):
        super().__init__(runner, chooser, batch_size, max_len)
        self.exit_layer = exit_layer
        # Stop drafting once no row's draft is at least this likely (HF's assistant_confidence_
        # threshold). It reads the confidence on the host: one synchronisation per draft step.
        self.confidence_threshold = confidence_threshold

    def deactivate(self, rows: list[int]) -> None:
        """Stopped rows are rewound to an empty cache: what they hold no longer matters, and the
        attention extent of the batch then follows the rows still running."""
        super().deactivate(rows)
        for b in rows:
            self.host_len[b] = 0
        self.seq_len = self.seq_len * self.active
        self.cache.rollback(self.seq_len, self.host_len)

    def step(self, num_drafts: int) -> list[list[int]]:
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
            threshold = self.confidence_threshold
            if threshold is not None and i + 1 < num_drafts and not bool((confidence >= threshold).any()):
                break
        num_drafts = len(drafts)
        # 2) verify: the last draft through [0, E), then every unverified token through [E, L).
        exit_states.append(runner.run_layers(runner.embed(x), 0, E, cache))
        states = torch.cat(exit_states, 1)  # [B, k+1, H]: the exit query cache
        h = runner.run_layers(states, E, runner.num_layers, cache)  # [B, k+1, H]
        # 3) accept.
        drafts_t = torch.cat(drafts, 1) if drafts else x.new_zeros(x.shape[0], 0)
        tokens, counts = self.chooser.accept(runner, drafts_t, states[:, :num_drafts], qs, runner.logits(h))
        # 4) roll back every layer to the accepted length (a length move, no copy).
        emitted = self._commit(tokens, counts, num_drafts)
        cache.rollback(self.seq_len, self.host_len)
        return emitted
