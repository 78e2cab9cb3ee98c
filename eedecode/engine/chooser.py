"""Token choice: argmax or a draw after the call's logits processors, for the full model's
logits, for drafts from an exit state, and for the acceptance of a round's drafts
(:mod:`eedecode.engine.acceptance`)."""

from __future__ import annotations

import torch

from ..kernels import DRAFT_STATS
from .acceptance import greedy_accept, sample, speculative_accept
from .processors import LogitsPipeline

Tensor = torch.Tensor

#: Gumbel-max draft seeds are drawn uniformly from [-2^62, 2^62): any int64 the kernel's hash takes.
_SEED_BOUND = 2**62


class TokenChooser:
    """Picks tokens: argmax (greedy) or a draw, after the call's logits processors (Hugging Face's,
    warpers included: :class:`~eedecode.engine.processors.LogitsPipeline`).

    Drafts come from the exit head (:meth:`ModelRunner.exit_head`, the fused kernel): its argmax
    when greedy without processors; when sampling with a temperature only (on CUDA), its
    Gumbel-max sample, and the draft distribution q is then rebuilt at verification from the exit
    query cache. Otherwise the draft step materialises the exit logits, processes them with the
    draft context, and keeps q.
    """

    def __init__(
        self,
        do_sample: bool = False,
        pipeline: LogitsPipeline | None = None,
        generator: torch.Generator | None = None,
        accept_rule=None,
        gumbel_drafts: bool | None = None,
    ):
        self.do_sample = do_sample
        self.pipeline = pipeline or LogitsPipeline()
        self.generator = generator
        self.accept_rule = accept_rule or speculative_accept
        self.gumbel_eligible = do_sample and self.pipeline.only_temperature
        # None: on CUDA only. The CPU reference hashes a noise value per vocabulary entry, which
        # costs more there than materialising the logits and drawing with torch.multinomial.
        self.gumbel_drafts = gumbel_drafts
        self.record = False  # keep each block's logits and scores (output_scores / output_logits)
        self.recorded: tuple[Tensor, Tensor] | None = None

    @property
    def temperature(self) -> float | None:
        procs = self.pipeline.processors
        return float(procs[0].temperature) if len(procs) else None

    def _scores(self, logits: Tensor, state, drafts=None, offset: int = 0) -> Tensor:
        return self.pipeline(logits, state, drafts, offset)

    def choose(self, state, logits: Tensor) -> Tensor:
        """Full-model logits ``[B, V]`` -> token ``[B]`` (the prefill's and plain decoding's)."""
        if self.pipeline.empty and not self.do_sample and not self.record:
            return logits.argmax(-1)  # the plain greedy step: nothing to process or keep
        scores = self._scores(logits[:, None], state)[:, 0]
        if self.record:
            self.recorded = (logits[:, None].float(), scores[:, None])
        if not self.do_sample:
            return scores.argmax(-1)
        return sample(scores.softmax(-1), self.generator)

    def draft(
        self,
        state,
        h: Tensor,
        drafts: Tensor | None = None,
        i: int = 0,
        confidence: bool = True,
        head=None,
    ):
        """Exit-layer states ``[B, H]`` -> draft token ``[B]``, q ``[B, V]`` if already computed,
        and the draft's confidence ``[B]`` (the probability of the likeliest token; None from a
        greedy draft when ``confidence`` is False). ``drafts`` ``[B, >= i]``: the round's earlier
        drafts (the context of draft ``i``). ``head``: a draft head in front of the model's own
        (a translator, a smaller vocabulary: :class:`~eedecode.drafting.head.DraftHead`)."""
        runner = state.runner
        if head is not None:
            h = head.translate(h)
        if not self.do_sample and self.pipeline.empty:
            if head is None or head.vocab is None:
                stats = runner.exit_head(h, stats=DRAFT_STATS if confidence else {"argmax"})
                return stats.argmax, None, stats.max_prob
            stats = head.subset_stats(h, DRAFT_STATS)
            if stats is not None:
                return stats.argmax, None, stats.max_prob
        use_gumbel = self.gumbel_drafts if self.gumbel_drafts is not None else h.is_cuda
        # a Gumbel draft's q is rebuilt at verification from the untranslated exit states
        if self.gumbel_eligible and use_gumbel and head is None:
            seed = torch.randint(-_SEED_BOUND, _SEED_BOUND, (1,), generator=self.generator, device=h.device)
            stats = runner.exit_head(
                h, temperature=self.temperature, seed=seed, stats=DRAFT_STATS | {"sample"}
            )
            return stats.sample, None, stats.max_prob
        logits = runner.exit_head_logits(h)
        if head is not None:
            logits = head.mask(logits)
        scores = self._scores(logits[:, None], state, drafts, offset=i)[:, 0]
        if not self.do_sample:
            return scores.argmax(-1), None, scores.softmax(-1).max(-1).values
        q = scores.softmax(-1)
        return sample(q, self.generator), q, q.max(-1).values

    def accept(
        self,
        state,
        drafts: Tensor,
        states: Tensor | None,
        qs: list[Tensor],
        target_logits: Tensor,
        num_drafts: Tensor | None = None,
    ):
        """drafts ``[B, k]`` (made from exit states ``[B, k, H]``, or with ``qs`` their draft
        distributions) and the full model's logits ``[B, k + 1, V]`` -> tokens ``[B, k + 1]`` and
        counts ``[B]`` (:mod:`eedecode.engine.acceptance`). ``num_drafts`` ``[B]``: row b proposed only its
        first ``num_drafts[b]`` drafts (None: all k)."""
        scores = self._scores(target_logits, state, drafts)
        if self.record:
            self.recorded = (target_logits.float(), scores)
        if not self.do_sample:
            return greedy_accept(drafts, scores, num_drafts)
        B, k = drafts.shape
        if qs:
            q = torch.stack(qs, 1)  # [B, k, V]
        elif k == 0:
            q = scores.new_zeros(B, 0, scores.shape[-1])
        else:  # Gumbel-max drafts were samples of softmax(exit logits / temperature): rebuild q
            q = self._scores(state.runner.exit_head_logits(states), state, drafts).softmax(-1)
        if num_drafts is None:
            return self.accept_rule(drafts, q, scores.softmax(-1), self.generator)
        return self.accept_rule(drafts, q, scores.softmax(-1), self.generator, num_drafts)
