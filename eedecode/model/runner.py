"""The model runner: any contiguous range of decoder layers over the KV cache, and the exit head.

One code path serves drafting (layers ``[0, E)``), verification (layers ``[E, L)`` over the exit
query cache), plain decoding (``[0, L)``) and the layer-agreement studies. It reuses the Hugging
Face model's own submodules — projections, MLP, norms, rotary embedding — so quantized linear
layers keep working, and it never calls a decoder layer's ``forward`` (whose private signature
changes between transformers releases). Attention is ``scaled_dot_product_attention`` over
eedecode's own :class:`~eedecode.model.cache.KVCache`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels import DEFAULT_STATS, ExitHeadStats, exit_head, exit_head_logits, logits_stats
from ..kernels.cpu_matmul import linear, matmul_t
from .cache import BlockContext, KVCache
from .compat import check_supported
from .costs import LIBRARY_ROWS, block_library, choose_block_library
from .layer_ops import (
    ROPE_TABLE_MIN,
    STATIC_ROPE,
    execution_device,
    linear_fn,
    mlp_fn,
    norm_fn,
    plain_linear,
    rotate,
    signed_sin,
    sliding_windows,
)
from .packing import PACK_DTYPES, PackedLayer, hooked, packed_weights

Tensor = torch.Tensor


class ModelRunner:
    """Runs a Hugging Face LLaMA-family causal LM layer range by layer range.

    >>> runner = ModelRunner(model)
    >>> cache = runner.new_cache(batch_size=1, max_len=128)
    >>> h = runner.run_layers(runner.embed(ids), 0, runner.num_layers, cache)  # [B, T, H]
    >>> logits = runner.logits(h[:, -1])                                        # [B, V] fp32
    >>> stats = runner.exit_head(h[:, -1], stats={"argmax", "entropy"})          # no [B, V] logits

    Without a cache, ``run_layers`` runs a causal block on its own (training, teacher-forced
    studies) and autograd works through it; the decoding loops call it under ``torch.no_grad``.

    ``pack``: ``"copy"`` (packed weights beside the model, which is not touched), ``"in_place"``
    or ``"none"`` (:mod:`eedecode.model.packing`). Under ``torch.no_grad`` a packed layer runs as
    four fused products on the packed matrices; with autograd on, every layer runs on the
    parameters themselves. A packed copy is checked against the parameters when the runner is
    built: a runner kept while the weights change (training) should not pack a copy.
    """

    def __init__(self, model, pack: str = "copy"):
        check_supported(model)
        self.model = model
        inner = model.model
        config = model.config
        self.config = config
        self.embed_tokens = inner.embed_tokens
        self.layers = inner.layers
        self.norm = inner.norm
        self.lm_head = model.lm_head
        self.rotary_emb = inner.rotary_emb
        self.num_layers = len(self.layers)
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.vocab_size = config.vocab_size
        self.max_positions = getattr(config, "max_position_embeddings", None)
        self.windows = sliding_windows(config, self.num_layers)
        self._rope_table: tuple[Tensor, Tensor] | None = None  # cos, signed sin [positions, D]
        self.layer_devices = [execution_device(layer) for layer in self.layers]
        self._pack(pack)
        self._final_norm, self._head = norm_fn(self.norm), linear_fn(self.lm_head)
        self._plain_head = plain_linear(self.lm_head)
        # Per layer: how to call each submodule (see norm_fn / linear_fn / mlp_fn). Decided
        # here, so hooks registered after the runner is built are not seen: build a new runner.
        self._calls = [
            (
                norm_fn(layer.input_layernorm),
                linear_fn(layer.self_attn.q_proj),
                linear_fn(layer.self_attn.k_proj),
                linear_fn(layer.self_attn.v_proj),
                linear_fn(layer.self_attn.o_proj),
                norm_fn(layer.post_attention_layernorm),
                mlp_fn(layer.mlp),
            )
            for layer in self.layers
        ]
        self._scales = [layer.self_attn.scaling for layer in self.layers]
        Hq, Hkv = self.num_heads, self.num_kv_heads
        self._head_counts = (Hq, Hq + Hkv, Hq + 2 * Hkv, self.head_dim)  # q | q+k | q+k+v heads, D
        self.device = execution_device(self.embed_tokens)
        self.head_device = execution_device(self.norm)
        self.dtype = self.embed_tokens.weight.dtype
        # The fused exit head needs the final norm's weight and epsilon and a plain LM-head weight;
        # a quantized or biased head goes through the modules instead.
        self.norm_eps = getattr(self.norm, "variance_epsilon", None)
        w = getattr(self.lm_head, "weight", None)
        fusable = w is not None and w.dtype in PACK_DTYPES and w.device == self.norm.weight.device
        plain = plain_linear(self.lm_head) and self.lm_head.bias is None and not hooked(self.norm)
        self.fused_head = fusable and plain and self.norm_eps is not None

    def _pack(self, pack: str) -> None:
        """The packed matrices of every layer and the head (None: modules, ``[V, H]``)."""
        packed, self.head_t = packed_weights(self.model, self.layers, self.lm_head, self.embed_tokens, pack)
        self.packed: list[PackedLayer | None] = packed
        # the LM head as [V, H] for the exit head and the logits (a view of the packed [H, V] one)
        head, lm = self.head_t, getattr(self.lm_head, "weight", None)
        self.head_weight = head.t() if head is not None else lm
        weights = [t for p in self.packed if p for t in (p.qkv, p.o, p.gate_up, p.down)] + [lm]
        self.onednn_from, self._choose_library = block_library(
            self.model, [t for t in weights if t is not None]
        )

    # -- cache -----------------------------------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        return KVCache(
            self.num_layers,
            batch_size,
            max_len,
            self.num_kv_heads,
            self.head_dim,
            dtype=self.dtype,
            devices=self.layer_devices,
        )

    # -- forward pieces --------------------------------------------------------------------------
    def embed(self, input_ids: Tensor) -> Tensor:
        """``[B, T]`` token ids -> ``[B, T, H]`` input hidden states."""
        return self.embed_tokens(input_ids.to(self.device))

    def run_layers(self, hidden: Tensor, start: int, end: int, cache: KVCache | None = None) -> Tensor:
        """Run layers ``[start, end)`` over a block of tokens.

        hidden: ``[B, T, H]`` states entering layer ``start``. With a cache, the block goes into
        every row's cache right after that row's current length for these layers (which must all
        be equal); without one, the block is a whole causal sequence at positions ``0..T-1``.
        Returns the states leaving layer ``end - 1``, ``[B, T, H]``.
        """
        B, T = hidden.shape[:2]
        if self._choose_library and 2 <= B * T <= LIBRARY_ROWS[-1] and hidden.is_cpu:
            choose_block_library(self)  # once, before the first block of 2-16 rows (a short prompt too)
        if cache is None:
            ctx = BlockContext.standalone(B, T, hidden.device, hidden.dtype)
        else:
            ctx = cache.block(start, T)
        cos, sin = self._rope(hidden, ctx)  # [B or 1, T, 1, D]
        # Packed layers (CPU only) run as fused products when no gradient is needed.
        fast = hidden.is_cpu and not torch.is_grad_enabled()
        head_major = cos.transpose(1, 2), sin.transpose(1, 2)  # [B or 1, 1, T, D]: the packed path's
        for i in range(start, end):
            p = self.packed[i]
            if fast and p is not None:
                hidden = self._packed_layer(p, i, hidden, *head_major, cache, ctx)
            else:
                hidden = self._layer(i, hidden, cos, sin, cache, ctx)
        if cache is not None:
            cache.advance(start, end, T)
        return hidden

    def _rope(self, hidden: Tensor, ctx: BlockContext) -> tuple[Tensor, Tensor]:
        """cos and signed sin for the block's positions, ``[B or 1, T, 1, D]``."""
        T = ctx.num_tokens
        if getattr(self.rotary_emb, "rope_type", None) not in STATIC_ROPE:
            positions = ctx.position_ids
            if positions is None:
                positions = (ctx.start + torch.arange(T, device=hidden.device))[None]
            cos, sin = self.rotary_emb(hidden, positions.to(hidden.device))
            return cos[:, :, None], signed_sin(sin)[:, :, None]
        if self._rope_table is None or self._rope_table[0].shape[0] < ctx.kv_len:
            have = 0 if self._rope_table is None else self._rope_table[0].shape[0]
            n = max(ctx.kv_len, 2 * have, ROPE_TABLE_MIN)  # grow geometrically: few recomputations
            cos, sin = self.rotary_emb(hidden, torch.arange(n, device=hidden.device)[None])
            self._rope_table = (cos[0, :, None], signed_sin(sin[0])[:, None])  # [n, 1, D] each
        cos, sin = self._rope_table
        if ctx.position_ids is None:  # uniform rows without padding: positions start .. start + T
            return cos[None, ctx.start : ctx.start + T], sin[None, ctx.start : ctx.start + T]
        positions = ctx.position_ids.to(cos.device)
        return cos[positions], sin[positions]

    def _attend(self, i: int, q: Tensor, keys: Tensor, values: Tensor, ctx: BlockContext) -> Tensor:
        """Scaled dot-product attention of ``q [B, Hq, T, D]`` over ``[B, Hkv, S, D]`` with the
        block's mask for layer ``i``'s window -> ``[B, Hq, T, D]``."""
        mask = ctx.mask(self.windows[i])
        if mask is not None and mask.device != q.device:
            mask = mask.to(q.device)
        return F.scaled_dot_product_attention(
            q,
            keys,
            values,
            attn_mask=mask,
            scale=self._scales[i],
            enable_gqa=self.num_heads != self.num_kv_heads,
        )

    def _layer(
        self, i: int, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None, ctx: BlockContext
    ) -> Tensor:
        """Layer ``i`` through its modules (or the functional ops on their parameters)."""
        input_norm, q_proj, k_proj, v_proj, o_proj, post_norm, mlp = self._calls[i]
        if x.device != self.layer_devices[i]:  # models split across devices by accelerate
            x, cos, sin = (t.to(self.layer_devices[i]) for t in (x, cos, sin))
        B, T, _ = x.shape
        h = input_norm(x)
        q = q_proj(h).view(B, T, -1, self.head_dim)  # [B, T, Hq, D]
        k = k_proj(h).view(B, T, -1, self.head_dim)  # [B, T, Hkv, D]
        v = v_proj(h).view(B, T, -1, self.head_dim).transpose(1, 2)  # [B, Hkv, T, D]
        q, k = rotate(torch.cat((q, k), dim=2), cos, sin).split((self.num_heads, self.num_kv_heads), dim=2)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        keys, values = (k, v) if cache is None else cache.write(i, ctx, k, v)  # [B, Hkv, S, D]
        o = self._attend(i, q, keys, values, ctx)
        x = x + o_proj(o.transpose(1, 2).reshape(B, T, -1))
        return x + mlp(post_norm(x))

    def _packed_layer(
        self, p: PackedLayer, i: int, x: Tensor, cos: Tensor, sin: Tensor, cache, ctx: BlockContext
    ) -> Tensor:
        """Layer ``i`` as four products on its packed matrices (no autograd); cos and sin
        ``[B or 1, 1, T, D]``."""
        B, T, H = x.shape
        Hq, Hqk, Hall, D = self._head_counts
        calls, onednn_from = self._calls[i], self.onednn_from
        x = x.view(B * T, H)
        qkv = matmul_t(calls[0](x), p.qkv, p.qkv_bias, onednn_from).view(B, T, Hall, D).transpose(1, 2)
        qk = rotate(qkv[:, :Hqk], cos, sin)  # [B, Hq + Hkv, T, D]: q and k rotated together
        keys, values = qk[:, Hq:], qkv[:, Hqk:]  # [B, Hkv, T, D]
        if cache is not None:
            keys, values = cache.write(i, ctx, keys, values)  # [B, Hkv, S, D]
        o = self._attend(i, qk[:, :Hq], keys, values, ctx).transpose(1, 2).reshape(B * T, Hq * D)
        x = x + matmul_t(o, p.o, p.o_bias, onednn_from)
        gate_up = matmul_t(calls[5](x), p.gate_up, p.gate_up_bias, onednn_from)  # [B T, 2 I]
        inter = p.down.shape[0]
        act = F.silu(gate_up[:, :inter]).mul_(gate_up[:, inter:])
        return x.add_(matmul_t(act, p.down, p.down_bias, onednn_from)).view(B, T, H)

    def layer_kv(self, i: int, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Layer ``i``'s input norm, then its key and value projections: ``[B, T, H]`` ->
        ``k, v [B, T, Hkv, D]``, k *before* RoPE (:meth:`apply_rope` rotates it). On a packed
        layer one product over the k|v columns of the fused matrix."""
        B, T, H = hidden.shape
        D, Hkv = self.head_dim, self.num_kv_heads
        h = self._calls[i][0](hidden)
        p = self.packed[i]
        if p is None or torch.is_grad_enabled():
            k_proj, v_proj = self._calls[i][2], self._calls[i][3]
            return k_proj(h).view(B, T, Hkv, D), v_proj(h).view(B, T, Hkv, D)
        q = self.num_heads * D
        bias = None if p.qkv_bias is None else p.qkv_bias[q:]
        kv = matmul_t(h.reshape(B * T, H), p.qkv[:, q:], bias, self.onednn_from).view(B, T, 2 * Hkv, D)
        return kv[:, :, :Hkv], kv[:, :, Hkv:]

    def apply_rope(self, x: Tensor, positions: Tensor, length: int | None = None) -> Tensor:
        """RoPE of ``x [B, T, heads, D]`` at ``positions [B, T]`` (as the model's rotary embedding
        computes it, bit for bit). ``length``: a bound on ``positions + 1``; without it, reading the
        largest position is one host synchronisation."""
        ctx = BlockContext.standalone(x.shape[0], x.shape[1], x.device, x.dtype)
        ctx.position_ids = positions
        ctx.kv_len = length if length is not None else int(positions.max()) + 1
        cos, sin = self._rope(x, ctx)
        return rotate(x, cos, sin)

    def logits(self, hidden: Tensor) -> Tensor:
        """Final norm + LM head through the model's own modules on any hidden state ``[..., H]``
        -> fp32 logits ``[..., V]`` (what HF's forward computes; autograd works through it)."""
        h = self._final_norm(hidden.to(self.head_device))
        if torch.is_grad_enabled() or not self._plain_head:
            logits = self._head(h)
        else:  # the product the weights' layout reads fastest (eedecode/kernels/cpu_matmul.py)
            flat = linear(h.reshape(-1, h.shape[-1]), self.head_weight, self.lm_head.bias, self.onednn_from)
            logits = flat.view(*h.shape[:-1], flat.shape[-1])
        return logits if logits.dtype == torch.float32 else logits.float()

    @torch.no_grad()
    def exit_head(
        self,
        hidden: Tensor,
        *,
        stats=DEFAULT_STATS,
        temperature: float | None = None,
        token_ids: Tensor | None = None,
        seed: Tensor | None = None,
        top_k: int = 0,
    ) -> ExitHeadStats:
        """Softmax statistics of the exit head (final norm + LM head) on ``[..., H]``, leading
        shape kept: the fused kernel (:func:`eedecode.kernels.exit_head`: Triton on CUDA, the
        chunked reference elsewhere) when the head is a plain linear layer, else the model's own
        modules followed by the same statistics. ``stats`` names what is wanted
        (:data:`eedecode.kernels.STATS`); ``token_ids`` ``[...]`` adds their log-probabilities,
        ``seed`` a Gumbel-max sample, ``top_k`` the k likeliest tokens."""
        hidden = hidden.to(self.head_device)
        if self.fused_head:
            return exit_head(
                hidden,
                self.norm.weight,
                self.norm_eps,
                self.head_weight,
                temperature=temperature,
                token_ids=token_ids,
                seed=seed,
                stats=stats,
                top_k=top_k,
            )
        lead = hidden.shape[:-1]
        logits = self.logits(hidden).reshape(-1, self.vocab_size)
        if token_ids is not None:
            token_ids = token_ids.reshape(-1).to(torch.int64)
        if seed is not None:
            seed = torch.as_tensor(seed, device=logits.device).reshape(1).to(torch.int64)
        inv_t = 1.0 if temperature is None else 1.0 / temperature
        flat = logits_stats(logits, inv_t, token_ids, seed, frozenset(stats), top_k)
        return ExitHeadStats(*(None if f is None else f.reshape(*lead, *f.shape[1:]) for f in flat))

    @torch.no_grad()
    def exit_head_logits(self, hidden: Tensor) -> Tensor:
        """fp32 logits ``[..., V]`` computed as :meth:`exit_head` computes them: the distribution
        its statistics and samples describe (equal to :meth:`logits` in float32)."""
        hidden = hidden.to(self.head_device)
        if not self.fused_head:
            return self.logits(hidden)
        return exit_head_logits(hidden, self.norm.weight, self.norm_eps, self.head_weight)

    @torch.no_grad()
    def prefill(self, input_ids: Tensor, cache: KVCache, end: int | None = None) -> Tensor:
        """Run the prompt ``[B, P]`` through layers ``[0, end)``; return the last state ``[B, H]``."""
        end = self.num_layers if end is None else end
        return self.run_layers(self.embed(input_ids), 0, end, cache)[:, -1]

    @torch.no_grad()
    def write_kv(self, hidden: Tensor, start: int, end: int, cache: KVCache) -> None:
        """Keys and values of layers ``[start, end)`` computed from one hidden state per token,
        written into the cache: ``hidden`` ``[B, T, H]`` stands in as the input of every one of
        these layers, and each applies its own input norm, k/v projections and RoPE (keys) to it
        (CALM's state propagation for the layers an early-exited token skipped). The tokens go
        after each row's current length in these layers (equal across them, as for
        :meth:`run_layers`), and the lengths advance by ``T``. No attention or MLP runs."""
        T = hidden.shape[1]
        ctx = cache.block(start, T)
        cos, sin = self._rope(hidden, ctx)  # [B or 1, T, 1, D]
        for i in range(start, end):
            x, c, s = hidden, cos, sin
            if x.device != self.layer_devices[i]:  # models split across devices by accelerate
                x, c, s = (t.to(self.layer_devices[i]) for t in (x, cos, sin))
            k, v = self.layer_kv(i, x)  # [B, T, Hkv, D], k before RoPE
            cache.write(i, ctx, rotate(k, c, s).transpose(1, 2), v.transpose(1, 2))
        cache.advance(start, end, T)
