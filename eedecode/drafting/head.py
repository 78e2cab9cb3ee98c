"""A draft's exit head other than the model's own: a translator in front of the final norm (a
tuned lens, :mod:`eedecode.model.translator`; the model itself is unchanged) and/or scores over a
subset of the vocabulary (the tokens a corpus uses most). Verification keeps the model's full
head, so drafts made this way stay lossless: only their acceptance changes. The token chooser
(:meth:`~eedecode.engine.chooser.TokenChooser.draft`) picks the draft through it."""

from __future__ import annotations

import torch

from ..kernels import exit_head

Tensor = torch.Tensor


class DraftHead:
    """``translator`` (at the drafter's depth, when it has one there) and/or ``vocab`` ``[V']``."""

    def __init__(self, runner, vocab: Tensor | None = None, translator=None, depth: int | None = None):
        self.runner, self.translator, self.depth = runner, translator, depth
        self.vocab = None if vocab is None else vocab.to(runner.head_device, torch.long)
        self.weight = None
        if self.vocab is not None and runner.fused_head:
            self.weight = runner.lm_head.weight[self.vocab].contiguous()  # [V', H], made once

    def with_depth(self, depth: int) -> DraftHead:
        """The same head for drafts from layer ``depth`` (the translator's layer to use)."""
        head = DraftHead.__new__(DraftHead)
        head.__dict__.update(self.__dict__, depth=depth)
        return head

    def translate(self, h: Tensor) -> Tensor:
        """The state the head reads: the translator's output at this depth, else ``h``."""
        if self.translator is None or self.depth not in self.translator.depths:
            return h
        return self.translator(self.depth, h.float()).to(h.dtype)

    def subset_stats(self, h: Tensor, stats):
        """The exit head's statistics over the vocabulary subset (the fused kernel on its rows of
        the LM head), with ``argmax`` mapped back to vocabulary ids; None when the head is not fused."""
        if self.weight is None:
            return None
        runner = self.runner
        st = exit_head(h, runner.norm.weight, runner.norm_eps, self.weight, stats=stats)
        return st._replace(argmax=self.vocab[st.argmax])

    def mask(self, logits: Tensor) -> Tensor:
        """``logits`` ``[B, V]`` with every score outside the subset ruled out."""
        if self.vocab is None:
            return logits
        return torch.full_like(logits, float("-inf")).index_copy_(1, self.vocab, logits[:, self.vocab])
