"""What a decoding mode may read and do during one generation: the narrow state of the loop.

A mode's ``prefill`` and ``round`` receive a :class:`DecodingState`, never the decoder itself
(:class:`~eedecode.engine.decoder.Decoder` owns the state and everything else: EOS and length
handling, the one host synchronisation per round, statistics). The state holds the model runner,
the token chooser, the KV cache, the prompt, each row's output so far, its pending token (the
newest emitted token, not yet in the cache), its cache length and whether it still runs; a mode
may also move the cache back to the rows' lengths mid-round (:meth:`DecodingState.rewind`).
Anything that runs rounds builds one (the benchmark's step timings included).
"""

from __future__ import annotations

import torch

from ..model.cache import KVCache
from ..model.runner import ModelRunner
from .chooser import TokenChooser

Tensor = torch.Tensor


class DecodingState:
    """One generation's state on the device, for ``B`` rows of a ``P``-token prompt.

    ``max_drafts``: the most drafts a round may verify (it sizes the cache and output buffer)."""

    def __init__(
        self,
        runner: ModelRunner,
        chooser: TokenChooser,
        input_ids: Tensor,
        max_new_tokens: int,
        max_drafts: int = 0,
    ):
        B, P = input_ids.shape
        self.runner, self.chooser = runner, chooser
        self.cache: KVCache = runner.new_cache(B, P + max_new_tokens + max_drafts + 2)
        dev = self.cache.device
        self.prompt = input_ids.to(dev)  # [B, P]
        self.max_new = max_new_tokens
        self.out = torch.zeros(B, max_new_tokens + max_drafts + 1, dtype=torch.long, device=dev)  # [B, W]
        self.out_len = torch.zeros(B, dtype=torch.long, device=dev)  # [B] tokens emitted
        self.active = torch.ones(B, dtype=torch.bool, device=dev)  # [B] the row still runs
        self.seq_len = torch.full((B,), P, dtype=torch.long, device=dev)  # [B] cache length, between rounds
        self.pending = torch.zeros(B, dtype=torch.long, device=dev)  # [B] newest token, not yet cached
        # Each row's output length on the host, kept only for logits processors that read the context.
        self.host_out_len: list[int] | None = [0] * B if not chooser.pipeline.context_free else None
        self.cache_bounds = (P, P)  # host (max, min) of seq_len, as of the last rollback

    @property
    def batch_size(self) -> int:
        return self.prompt.shape[0]

    def sequences_so_far(self):
        """Each row's tokens so far, ``(ids [G, P + n], rows [G])`` per group of rows with equal
        ``n`` (the context of logits processors; needs :attr:`host_out_len`)."""
        groups: dict[int, list[int]] = {}
        for b, n in enumerate(self.host_out_len):
            groups.setdefault(n, []).append(b)
        for n, rows in groups.items():
            idx = torch.tensor(rows, device=self.prompt.device)
            yield torch.cat([self.prompt[idx], self.out[idx, :n]], 1), idx

    def rewind(self) -> None:
        """Move every layer back to ``seq_len`` mid-round (a drafter that wrote the KV of some
        layers for its drafts, before a verification that rewrites every layer)."""
        hi, lo = self.cache_bounds
        self.cache.rollback(self.seq_len, hi, uniform=hi == lo)
