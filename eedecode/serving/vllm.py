"""eedecode's drafter inside vLLM: early-exit drafts from the target model's own first layers and
LM head, lookup drafts, or none, chosen per call; vLLM verifies them with its own rejection sampler.

Use it through vLLM's ``custom_class`` speculative method::

    LLM(model, speculative_config={"method": "custom_class", "num_speculative_tokens": 4,
                                   "model": "eedecode.serving.vllm.EarlyExitProposer"},
        additional_config={"eedecode": {"exit_layer": 2}})

vLLM builds the proposer with its ``VllmConfig``, hands it the loaded target model
(:meth:`EarlyExitProposer.load_model`) and, after each step, the rows' newly sampled tokens and
full token ids (:meth:`EarlyExitProposer.propose`). The drafter runs layers ``[0, E)``, the final
norm and the LM head of that very model (:mod:`.shallow`; LayerSkip, Elhoushi et al. 2024), so it
holds no second copy of any weight; it keeps the keys and values of those layers in a private
cache, because vLLM gives a custom proposer neither its block tables nor hidden states. The
target then verifies all drafts at full depth, layers ``< E`` included: vLLM has no seam for
LayerSkip's exit query cache. Rows are matched to their state by token prefix (:mod:`.rows`);
:mod:`.policy` decides where to draft from. Options come from ``additional_config["eedecode"]``
(:class:`~.policy.DraftOptions`), and the exit layer, if not given, from the checkpoint's
``eedecode.json``.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..model.loading import recommended_settings
from .policy import DraftOptions, DraftPolicy
from .rows import RowState, RowTracker
from .shallow import ShallowRunner

#: A row whose first draft pass covers more tokens than this (a new prompt) runs on its own,
#: so that short rows are not padded to its length.
BATCHED_CATCH_UP = 8


def resolve_options(vllm_config) -> DraftOptions:
    """:class:`DraftOptions` from ``additional_config["eedecode"]``; the exit layer, when absent,
    from the checkpoint's ``eedecode.json``, else a quarter of the model's layers."""
    extra = vllm_config.additional_config
    values = dict(extra.get("eedecode", {})) if isinstance(extra, dict) else {}
    options = DraftOptions.from_dict(values)
    if options.exit_layer is None:
        layers = vllm_config.model_config.hf_config.num_hidden_layers
        settings = recommended_settings(vllm_config.model_config.model)
        exit_layer = settings.get("exit_layer") or max(1, layers // 4)
        options = DraftOptions.from_dict({**values, "exit_layer": int(exit_layer)})
    return options


class EarlyExitProposer:
    """A vLLM ``custom_class`` proposer: per row, lookup drafts where the context has a match,
    else up to ``num_speculative_tokens`` greedy drafts from the exit layer (stopped below
    ``draft_confidence``), or none where :class:`~.policy.DraftPolicy` says drafting does not pay."""

    def __init__(self, vllm_config, options: DraftOptions | None = None):
        spec = vllm_config.speculative_config
        if vllm_config.parallel_config.pipeline_parallel_size > 1:
            raise ValueError(
                "eedecode's drafter needs the first layers on this rank: no pipeline parallelism"
            )
        self.k = spec.num_speculative_tokens
        self.max_model_len = vllm_config.model_config.max_model_len
        self.options = options or resolve_options(vllm_config)
        self.policy = DraftPolicy(self.options, timed=vllm_config.parallel_config.tensor_parallel_size == 1)
        self.rows = RowTracker()
        self.runner: ShallowRunner | None = None
        self._returned_at: float | None = None  # when the last call returned: vLLM's step follows

    def load_model(self, target_model: torch.nn.Module) -> None:
        """Called by vLLM with the loaded target model, whose modules the drafter runs."""
        if self.options.exit_drafts:
            self.runner = ShallowRunner(target_model, self.options.exit_layer)

    def propose(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu, slot_mappings=None):
        """Drafts per row (``[]``: none) after a step that sampled ``sampled_token_ids[i]`` for
        row ``i``, whose tokens are now ``token_ids_cpu[i, :num_tokens_no_spec[i]]``."""
        if self._returned_at is not None:
            self.policy.observe_step(time.perf_counter() - self._returned_at)
        drafts = self._propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu)
        self._returned_at = time.perf_counter()
        return drafts

    def _propose(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu) -> list[list[int]]:
        drafts: list[list[int]] = [[] for _ in sampled_token_ids]
        rows = [
            i for i, s in enumerate(sampled_token_ids) if s and num_tokens_no_spec[i] < self.max_model_len
        ]
        if not rows:
            return drafts
        # 1) whose row is whose, and how its last drafts fared
        seqs = [token_ids_cpu[i, : num_tokens_no_spec[i]] for i in rows]
        states = self.rows.match(rows, seqs)
        for i, (state, continuing) in zip(rows, states, strict=True):
            if continuing:
                self.policy.record(state.last_source, state.last_drafts, len(sampled_token_ids[i]) - 1)
        # 2) lookup drafts where the context has a match
        ngram_min, use_exit = self.policy.sources(len(rows))
        budget = [min(self.k, self.max_model_len - len(seq) - 1) for seq in seqs]
        for j, (state, _) in enumerate(states):
            found = [] if ngram_min is None else state.lookup(budget[j], self.options.lookup_ngram, ngram_min)
            drafts[rows[j]] = found
            state.last_source, state.last_drafts = ("lookup" if found else "none"), len(found)
        # 3) early-exit drafts for the rest
        most = self.policy.exit_budget(self.k) if use_exit and self.runner is not None else 0
        pending = [j for j in range(len(rows)) if not drafts[rows[j]] and budget[j] > 0]
        if most > 0 and pending:
            found = self._exit_drafts(
                [states[j][0] for j in pending], [min(most, budget[j]) for j in pending]
            )
            for j, row_drafts in zip(pending, found, strict=True):
                drafts[rows[j]] = row_drafts
                states[j][0].last_source, states[j][0].last_drafts = "exit", len(row_drafts)
        return drafts

    def _exit_drafts(self, states: list[RowState], budget: list[int]) -> list[list[int]]:
        """Greedy drafts from the exit layer for each state: one pass over the tokens not yet in
        its cache, then one token per pass while the draft's probability stays above the bar."""
        token, confidence = self._catch_up(states)
        drafts: list[list[int]] = [[] for _ in states]
        live = list(range(len(states)))
        bar = self.options.draft_confidence
        while live:
            keep = confidence[live] >= bar
            live = [b for b, ok in zip(live, keep.tolist(), strict=True) if ok]
            for b in live:
                drafts[b].append(int(token[b]))
            live = [b for b in live if len(drafts[b]) < budget[b]]
            if not live:
                break
            token[live], confidence[live] = self._step([states[b] for b in live], token[live])
        return drafts

    def _step(self, states: list[RowState], tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One draft pass: each state's newest draft ``tokens`` ``[B]`` at its next position."""
        starts = [s.cached for s in states]
        for s, t in zip(states, tokens.tolist(), strict=True):
            s.write(s.cached, [t])
            s.cached += 1
        rows = [s.cache_row for s in states]
        began = time.perf_counter()
        hidden = self.runner.forward(tokens[:, None].to(self.runner.device), starts, rows, [1] * len(states))
        token, confidence = (t.cpu() for t in self.runner.exit_head(hidden[:, -1]))
        self.policy.observe_pass(time.perf_counter() - began)
        return token, confidence

    def _catch_up(self, states: list[RowState]) -> tuple[torch.Tensor, torch.Tensor]:
        """The first draft of each state: run its tokens ``[cached, seen)`` (short ones batched)."""
        token = torch.zeros(len(states), dtype=torch.long)
        confidence = torch.zeros(len(states))
        short = [b for b, s in enumerate(states) if s.seen - s.cached <= BATCHED_CATCH_UP]
        groups = [short] if short else []
        groups += [[b] for b, s in enumerate(states) if s.seen - s.cached > BATCHED_CATCH_UP]
        for group in groups:
            chosen = [states[b] for b in group]
            counts = [s.seen - s.cached for s in chosen]
            ids = np.zeros((len(chosen), max(counts)), dtype=np.int64)
            for b, (s, n) in enumerate(zip(chosen, counts, strict=True)):
                ids[b, :n] = s.tokens[s.cached : s.seen]
            starts, rows = [s.cached for s in chosen], [s.cache_row for s in chosen]
            began = time.perf_counter()
            hidden = self.runner.forward(torch.from_numpy(ids).to(self.runner.device), starts, rows, counts)
            last = torch.tensor(counts, device=hidden.device) - 1
            t, c = self.runner.exit_head(hidden[torch.arange(len(group), device=hidden.device), last])
            token[group], confidence[group] = t.cpu(), c.cpu()
            self.policy.observe_pass(time.perf_counter() - began)
            for s in chosen:
                s.cached = s.seen
        return token, confidence
