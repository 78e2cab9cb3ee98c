"""Hugging Face logits processors applied where speculative decoding needs them.

``generate()`` builds its processors with transformers' own code (``repetition_penalty``,
``no_repeat_ngram_size``, ``min_new_tokens``, ``bad_words_ids``, the sampling warpers
``temperature`` / ``top_k`` / ``top_p`` / ``min_p`` / ``typical_p``, ...), in transformers' order.
This module applies them to a *block* of positions. Position ``i`` of a verification block scores
the token after the row's sequence so far *and the drafts before position i*, so every processor
sees exactly the ``input_ids`` that Hugging Face's one-token-at-a-time loop would show it. That is
what keeps verification lossless under processors that read the context.

Processors that ignore ``input_ids`` (the warpers) run once over the whole block. The others run
per position, and per group of rows whose sequences have the same length. That is a host loop,
taken only when such a processor is present.
"""

from __future__ import annotations

import copy

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


#: Processors that keep a tensor per batch row: sliced to the rows of a group when called on one.
ROW_STATE = {"RepetitionPenaltyLogitsProcessor": ("prompt_ignore_length",)}
#: Processors that update internal state on every call: they cannot score positions that may be
#: rejected afterwards (a speculative round scores drafts that verification throws away).
STATEFUL = ("SynthIDTextWatermarkLogitsProcessor",)


def _for_rows(processors, rows: Tensor, batch_size: int):
    """The processors as they apply to ``rows`` of the batch (per-row state sliced)."""
    if rows.numel() == batch_size:
        return processors
    out = lp.LogitsProcessorList()
    for p in processors:
        attrs = [a for a in ROW_STATE.get(type(p).__name__, ()) if isinstance(getattr(p, a, None), Tensor)]
        if attrs:
            p = copy.copy(p)
            for a in attrs:
                setattr(p, a, getattr(p, a).to(rows.device)[rows])
        out.append(p)
    return out


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

        ``context``: an object whose ``sequences_so_far()`` yields ``(ids [G, n], rows [G])`` for each group
        of rows with equal length: the tokens each row has so far (needed unless every processor is
        context-free). Position ``j`` of the block scores the token after those tokens and
        ``drafts[:, :offset + j]`` (``drafts`` ``[B, >= offset + m - 1]``).
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
            processors = _for_rows(self.processors, rows, B)
            for j in range(m):
                n = offset + j
                ids = base if n == 0 else torch.cat([base, drafts[rows, :n]], 1)
                scores[rows, j] = processors(ids, logits[rows, j].clone())
        return scores
