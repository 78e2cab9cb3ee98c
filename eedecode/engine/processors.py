"""Hugging Face logits processors applied where speculative decoding needs them.

``generate()`` builds its processors with transformers' own code (``repetition_penalty``,
``no_repeat_ngram_size``, ``min_new_tokens``, ``bad_words_ids``, the sampling warpers
``temperature`` / ``top_k`` / ``top_p`` / ``min_p`` / ``typical_p``, ...), in transformers' order.
This module applies them to a *block* of positions. Position ``i`` of a verification block scores
the token after the row's sequence so far *and the drafts before position i*, so every processor
sees exactly the ``input_ids`` that Hugging Face's one-token-at-a-time loop would show it. That is
what keeps verification lossless under processors that read the context.

Processors that ignore ``input_ids`` (the warpers) run once over the whole block. The others run
per position of the block, and per group of running rows whose sequences have the same length,
each call with the whole batch in its row order (``batch_id`` in ``prefix_allowed_tokens_fn``,
a bias indexed by row, per-row state: all as in Hugging Face's loop); only the group's rows'
scores are kept. In autoregressive decoding every running row has the same length, so a
processor is called once per step, as HF calls it; in a speculative round it is called once per
position and length group. That is a host loop, taken only when such a processor is present.
"""

from __future__ import annotations

import torch
from transformers.generation import logits_process as lp

Tensor = torch.Tensor

#: Processors whose output does not depend on ``input_ids``: applied to all positions at once.
CONTEXT_FREE = tuple(
    getattr(lp, name)
    for name in (
        "TemperatureLogitsWarper",
        "TopKLogitsWarper",
        "TopPLogitsWarper",
        "TopHLogitsWarper",
        "MinPLogitsWarper",
        "TypicalLogitsWarper",
        "EpsilonLogitsWarper",
        "EtaLogitsWarper",
        "InfNanRemoveLogitsProcessor",
        "LogitNormalization",
        "SuppressTokensLogitsProcessor",
        "EncoderRepetitionPenaltyLogitsProcessor",
    )
    if hasattr(lp, name)
)


#: Processors that update internal state on every call: they cannot score positions that may be
#: rejected afterwards (a speculative round scores drafts that verification throws away).
STATEFUL = ("SynthIDTextWatermarkLogitsProcessor",)


class LogitsPipeline:
    """A ``LogitsProcessorList`` applied to ``[B, m, V]`` blocks of logits (see the module doc)."""

    def __init__(self, processors=None):
        self.processors = lp.LogitsProcessorList(processors or [])
        self.empty = len(self.processors) == 0
        self.context_free = all(type(p) in CONTEXT_FREE for p in self.processors)

    @property
    def stateful(self) -> list[str]:
        """Names of processors that cannot score positions a round may reject."""
        return [type(p).__name__ for p in self.processors if type(p).__name__ in STATEFUL]

    @property
    def only_temperature(self) -> bool:
        """No processor, or a single temperature warper (what a Gumbel-max draft can sample)."""
        return self.empty or (
            len(self.processors) == 1 and type(self.processors[0]) is lp.TemperatureLogitsWarper
        )

    def __call__(self, logits: Tensor, context=None, drafts: Tensor | None = None, offset: int = 0) -> Tensor:
        """Processed fp32 scores ``[B, m, V]`` of ``logits`` ``[B, m, V]``.

        ``context``: an object whose ``sequences_so_far()`` yields ``(ids [B, n], rows [G])`` for
        each group of running rows with equal length: the whole batch's tokens so far, of which the
        group's rows are kept (needed unless every processor is context-free). Position ``j`` of
        the block scores the token after those tokens and ``drafts[:, :offset + j]`` (``drafts``
        ``[B, >= offset + m - 1]``).
        """
        logits = logits.float()
        if self.empty:
            return logits
        B, m, V = logits.shape
        if self.context_free:
            dummy = torch.zeros(B * m, 1, dtype=torch.long, device=logits.device)
            return self.processors(dummy, logits.reshape(B * m, V).clone()).view(B, m, V)
        scores = torch.empty_like(logits)
        for base, rows in context.sequences_so_far():
            for j in range(m):
                n = offset + j
                ids = base if n == 0 else torch.cat([base, drafts[:, :n].to(base.device)], 1)
                scores[rows, j] = self.processors(ids, logits[:, j].clone())[rows]
        return scores
