"""Preallocated KV cache with a valid length per layer and per batch row.

Self-speculative decoding needs two things a plain decoding cache does not:

* **Per-layer lengths.** While drafting, layers ``< E`` run ahead of layers ``>= E`` (they hold the
  draft tokens, the deep layers do not yet), so each layer has its own valid length.
* **Per-row lengths.** In a batch every row accepts its own number of draft tokens per round.

Rollback never copies tensors: it moves the lengths. Slots past a row's length hold stale values
(rejected drafts) that the attention mask hides and the next write overwrites.

Left padding is stored as HF stores it: row ``b`` has ``pad[b]`` padding slots at the front, the
position id of slot ``j`` is ``j - pad[b]`` and padding slots are never attended to.

Besides the exact lengths on the device, the cache keeps a host-side upper bound per layer, so the
attention extent is known without a host synchronisation; when all rows share their length and
there is no padding (always, at batch size 1) the bound is exact and writes are plain slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass
class BlockContext:
    """Where a block of ``T`` new tokens goes, for one call over a range of layers that share their
    lengths. Built once per call and reused by every layer in the range."""

    start: int | None  # first slot of the block when rows are uniform, else None
    write_index: Tensor | None  # [B, T] slot of each new token when rows differ, else None
    kv_len: int  # slots the block attends over: [0, kv_len)
    num_tokens: int  # T
    position_ids: Tensor | None  # [B, T]; None when rows are uniform without padding (= start + t)
    masks: dict  # sliding window (or None) -> additive mask broadcastable to [B, 1, T, kv_len], or None
    lengths: Tensor | None  # [B] row lengths before the block (device), when rows differ
    key_valid: Tensor | None  # [B, kv_len] False at left-padding slots, None without padding
    device: torch.device
    dtype: torch.dtype  # of the attention's queries: the additive masks are in it

    @staticmethod
    def standalone(batch_size: int, num_tokens: int, device, dtype=torch.float32) -> BlockContext:
        """A block that is a whole causal sequence at positions ``0..T-1``, with no cache."""
        return BlockContext(0, None, num_tokens, num_tokens, None, {}, None, None, device, dtype)

    def mask(self, window: int | None) -> Tensor | None:
        """The attention mask for layers with this sliding window (None: every key slot is visible)."""
        if window not in self.masks:
            self.masks[window] = _block_mask(self, window)
        return self.masks[window]


def _block_mask(ctx: BlockContext, window: int | None) -> Tensor | None:
    """Additive mask ``[B or 1, 1, T, kv_len]``: 0 where a query may attend to a key slot, -inf
    elsewhere. Scaled dot-product attention turns a boolean mask into exactly this, once per
    layer; built here once per block, it is shared by the block's layers."""
    T, S = ctx.num_tokens, ctx.kv_len
    if ctx.start is not None and ctx.key_valid is None and T == 1 and (window is None or window >= S):
        return None  # uniform rows, one query: it sees every valid slot
    slots = torch.arange(S, device=ctx.device)  # [S]
    if ctx.start is not None:  # uniform rows: one [T, S] pattern, then the padding per row
        q = (ctx.start + torch.arange(T, device=ctx.device))[None]  # [1, T] query slots
    else:
        q = ctx.lengths[:, None] + torch.arange(T, device=ctx.device)  # [B, T]
    allowed = slots <= q[:, :, None]  # [B or 1, T, S]
    if window is not None:
        allowed &= slots > q[:, :, None] - window
    if ctx.key_valid is not None:
        # A padding query (prefill only) attends to itself, so that no row of the softmax is empty.
        allowed = allowed & (ctx.key_valid[:, None, :] | (slots == q[:, :, None]))
    mask = torch.zeros(allowed.shape, dtype=ctx.dtype, device=ctx.device)
    return mask.masked_fill_(~allowed, float("-inf"))[:, None]


class KVCache:
    """Keys and values for ``num_layers`` layers, ``[B, kv_heads, max_len, head_dim]`` each."""

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        max_len: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        devices: list[torch.device],
    ):
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=d) for d in devices]
        self.values = [torch.zeros(shape, dtype=dtype, device=d) for d in devices]
        self.num_layers = num_layers
        self.batch_size = batch_size
        self.max_len = max_len
        self.dtype = dtype
        self.device = devices[0]
        self.bound = [0] * num_layers  # host upper bound of each layer's lengths; exact while uniform
        self.uniform = True  # every row has the same length in each layer (always at batch size 1)
        # [L, B] row lengths on the device, kept only while rows differ (else `bound` says it all)
        self._lengths = torch.zeros(num_layers, batch_size, dtype=torch.long, device=self.device)
        self.pad = torch.zeros(batch_size, dtype=torch.long, device=self.device)  # [B]
        self.key_valid: Tensor | None = None  # [B, max_len] False at left-padding slots

    @property
    def lengths(self) -> Tensor:
        """``[L, B]`` valid length of every layer and row (device)."""
        if not self.uniform:
            return self._lengths
        bound = torch.tensor(self.bound, dtype=torch.long, device=self.device)
        return bound[:, None].expand(self.num_layers, self.batch_size)

    # -- setup -------------------------------------------------------------------------------
    def set_padding(self, attention_mask: Tensor) -> None:
        """Record left padding from a ``[B, P]`` 0/1 mask (call before the prompt is written)."""
        mask = attention_mask.to(device=self.device, dtype=torch.bool)
        if bool(mask.all()):
            return
        self.pad = (~mask).sum(1)
        self.key_valid = torch.ones(self.batch_size, self.max_len, dtype=torch.bool, device=self.device)
        self.key_valid[:, : mask.shape[1]] = mask

    # -- the block protocol used by the model runner -------------------------------------------
    def block(self, start_layer: int, num_tokens: int) -> BlockContext:
        """Describe where ``num_tokens`` new tokens go for the layers starting at ``start_layer``
        (every layer of one runner call shares that layer's lengths)."""
        T = num_tokens
        kv_len = self.bound[start_layer] + T
        if kv_len > self.max_len:
            raise RuntimeError(f"KV cache overflow: {kv_len} slots needed, {self.max_len} allocated")
        start = write_index = positions = lengths = None
        if self.uniform:
            start = self.bound[start_layer]
            if self.key_valid is not None:  # left padding: slot j of row b is position j - pad[b]
                positions = (start + torch.arange(T, device=self.device))[None, :] - self.pad[:, None]
        else:
            lengths = self._lengths[start_layer]  # [B]
            write_index = lengths[:, None] + torch.arange(T, device=self.device)  # [B, T]
            positions = write_index - self.pad[:, None]
        return BlockContext(
            start=start,
            write_index=write_index,
            kv_len=kv_len,
            num_tokens=T,
            position_ids=None if positions is None else positions.clamp(min=0),
            masks={},
            lengths=lengths,
            key_valid=None if self.key_valid is None else self.key_valid[:, :kv_len],
            device=self.device,
            dtype=self.dtype,
        )

    def write(self, layer: int, ctx: BlockContext, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k, v`` ``[B, kv_heads, T, head_dim]`` for one layer; return the keys and values
        the block attends over, ``[B, kv_heads, kv_len, head_dim]``."""
        K, V = self.keys[layer], self.values[layer]
        T = k.shape[2]
        if ctx.start is not None:
            K[:, :, ctx.start : ctx.start + T] = k
            V[:, :, ctx.start : ctx.start + T] = v
        else:
            idx = ctx.write_index.to(K.device)[:, None, :, None].expand_as(k)
            K.scatter_(2, idx, k)
            V.scatter_(2, idx, v)
        return K[:, :, : ctx.kv_len], V[:, :, : ctx.kv_len]

    def advance(self, start_layer: int, end_layer: int, num_tokens: int) -> None:
        """Layers ``[start_layer, end_layer)`` now hold ``num_tokens`` more tokens in every row."""
        if not self.uniform:
            self._lengths[start_layer:end_layer].add_(num_tokens)
        bound = self.bound
        for layer in range(start_layer, end_layer):
            bound[layer] += num_tokens

    # -- rollback ------------------------------------------------------------------------------
    def rollback(self, lengths: Tensor, bound: int, uniform: bool) -> None:
        """Cut every layer back to ``lengths`` ``[B]`` (device). ``bound`` is their maximum and
        ``uniform`` whether they are all equal, known on the host. Nothing is copied: later writes
        overwrite the stale slots."""
        self.bound = [bound] * self.num_layers
        self.uniform = uniform
        if not uniform:
            self._lengths.copy_(lengths[None, :].expand(self.num_layers, self.batch_size))
