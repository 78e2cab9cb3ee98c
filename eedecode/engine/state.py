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
        pad_token_id: int | None = None,
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
        # Each row's output length and activity on the host, kept only for logits processors that
        # read the context.
        self.host_out_len: list[int] | None = [0] * B if not chooser.pipeline.context_free else None
        self.host_active: list[bool] = [True] * B
        self.pad_token_id = 0 if pad_token_id is None else pad_token_id
        self.cache_bounds = (P, P)  # host (max, min) of seq_len, as of the last rollback

    @property
    def batch_size(self) -> int:
        return self.prompt.shape[0]

    def sequences_so_far(self):
        """The context of logits processors: per group of running rows with equal output length
        ``n``, ``(ids [B, P + n], rows [G])``. ``ids`` holds the whole batch in its row order, as
        Hugging Face's loop shows it to a processor: the group's rows their tokens so far, a row
        that stopped its tokens and then ``pad_token_id`` (as HF pads finished rows), a row further
        along the first ``n`` of its new tokens (a stand-in: only the group's rows' scores are
        kept). Needs :attr:`host_out_len`."""
        groups: dict[int, list[int]] = {}
        for b, (n, running) in enumerate(zip(self.host_out_len, self.host_active, strict=True)):
            if running:
                groups.setdefault(n, []).append(b)
        if not groups:  # nothing runs (a prefill scores every row at n = 0)
            groups = {0: list(range(self.batch_size))}
        dev = self.prompt.device
        for n, rows in groups.items():
            new = self.out[:, :n]
            past_end = torch.arange(n, device=dev)[None, :] >= self.out_len[:, None]
            ids = torch.cat([self.prompt, new.masked_fill(past_end, self.pad_token_id)], 1)
            yield ids, torch.tensor(rows, device=dev)

    def rewind(self) -> None:
        """Move every layer back to ``seq_len`` mid-round (a drafter that wrote the KV of some
        layers for its drafts, before a verification that rewrites every layer)."""
        hi, lo = self.cache_bounds
        self.cache.rollback(self.seq_len, hi, uniform=hi == lo)
