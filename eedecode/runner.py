"""The model runner: any contiguous range of decoder layers over the KV cache, and the exit head.

One code path serves drafting (layers ``[0, E)``), verification (layers ``[E, L)`` over the exit
query cache), plain decoding (``[0, L)``) and the layer-agreement studies. It reuses the Hugging
Face model's own submodules — projections, MLP, norms, rotary embedding — so quantized linear
layers keep working, and it never calls a decoder layer's ``forward`` (whose private signature
changes between transformers releases). Attention is ``scaled_dot_product_attention`` over
eedecode's own :class:`~eedecode.cache.KVCache`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cache import BlockContext, KVCache
from .compat import check_supported
from .kernels import DEFAULT_STATS, ExitHeadStats, exit_head, exit_head_logits, logits_stats

Tensor = torch.Tensor


def _signed_sin(sin: Tensor) -> Tensor:
    """A *signed* sine table such that ``x * cos + swap_halves(x) * signed_sin`` equals HF's
    ``x * cos + rotate_half(x) * sin`` bit for bit (``rotate_half(x) = cat(-x2, x1)``, and
    ``(-a) * b == a * (-b)`` exactly)."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


# -- the functional fast path -----------------------------------------------------------------------
# Dispatch overhead dominates small models: an HF RMSNorm is 8 tensor ops, F.rms_norm one. Where a
# submodule is *exactly* a known HF class with no hooks (so its forward is known), the runner calls
# the functional op on the module's own parameters instead; anything else (bitsandbytes layers,
# accelerate hooks, forward hooks, other classes) goes through the module. Same numbers: F.linear
# is what nn.Linear calls, and F.rms_norm equals the HF norm bit for bit in float32 (the only dtype
# it is used for; tests check both).
_RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm")
_GATED_MLPS = ("LlamaMLP", "MistralMLP", "Qwen2MLP")
_SILU = ("SiLUActivation", "SiLU")


def _hooked(m: torch.nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__)


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where ``module`` computes: accelerate's execution device when a dispatch hook manages it (its
    weights may sit on the meta device, or on disk, until the hook loads them), else its weights'."""
    for m in module.modules():
        device = getattr(getattr(m, "_hf_hook", None), "execution_device", None)
        if device is not None and not isinstance(device, dict):
            return torch.device(device if not isinstance(device, int) else f"cuda:{device}")
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def _plain_linear(m) -> bool:
    return type(m) is torch.nn.Linear and not _hooked(m)


def _norm_fn(m):
    """x -> m(x), by F.rms_norm when that is bit-identical (a known HF RMSNorm, float32)."""
    if type(m).__name__ not in _RMS_NORMS or _hooked(m) or m.weight.dtype != torch.float32:
        return m
    shape, eps = (m.weight.shape[0],), m.variance_epsilon
    return lambda x: F.rms_norm(x, shape, m.weight, eps) if x.dtype == torch.float32 else m(x)


def _linear_fn(m):
    """x -> m(x), by F.linear on its parameters when m is a plain nn.Linear."""
    return (lambda x: F.linear(x, m.weight, m.bias)) if _plain_linear(m) else m


def _mlp_fn(m):
    """x -> m(x) for the gated SiLU MLP of Llama / Mistral / Qwen2, functionally when possible."""
    parts = (getattr(m, "gate_proj", None), getattr(m, "up_proj", None), getattr(m, "down_proj", None))
    if (
        type(m).__name__ not in _GATED_MLPS
        or _hooked(m)
        or type(getattr(m, "act_fn", None)).__name__ not in _SILU
        or _hooked(m.act_fn)
        or not all(_plain_linear(p) for p in parts)
    ):
        return m
    g, u, d = parts
    return lambda x: F.linear(
        F.silu(F.linear(x, g.weight, g.bias)) * F.linear(x, u.weight, u.bias), d.weight, d.bias
    )


# RoPE variants whose frequencies do not depend on the sequence length: their tables can be
# computed once per length and sliced (HF computes them elementwise per position, so the values
# are bit for bit the same).
_STATIC_ROPE = ("default", "linear", "llama3", "yarn")
_ROPE_TABLE_MIN = 256  # positions in the first table


def _apply_rope(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """x: ``[B, T, heads, D]``; one rotation for q and k heads together."""
    B, T, H, D = x.shape
    swapped = x.view(B, T, H, 2, D // 2).flip(3).view(B, T, H, D)
    return x * cos + swapped * signed_sin


def _sliding_windows(config, num_layers: int) -> list[int | None]:
    """Per-layer sliding attention window, as the HF model applies it (Mistral: every layer;
    Qwen2: the layers whose ``layer_types`` entry is ``sliding_attention``)."""
    window = getattr(config, "sliding_window", None)
    if window is None:
        return [None] * num_layers
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        return [window] * num_layers
    return [window if t == "sliding_attention" else None for t in layer_types[:num_layers]]


class ModelRunner:
    """Runs a Hugging Face LLaMA-family causal LM layer range by layer range.

    >>> runner = ModelRunner(model)
    >>> cache = runner.new_cache(batch_size=1, max_len=128)
    >>> h = runner.run_layers(runner.embed(ids), 0, runner.num_layers, cache)  # [B, T, H]
    >>> logits = runner.logits(h[:, -1])                                        # [B, V] fp32
    >>> stats = runner.exit_head(h[:, -1], stats={"argmax", "entropy"})          # no [B, V] logits

    Without a cache, ``run_layers`` runs a causal block on its own (training, teacher-forced
    studies) and autograd works through it; the decoding loops call it under ``torch.no_grad``.
    """

    def __init__(self, model):
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
        self.windows = _sliding_windows(config, self.num_layers)
        self._rope_table: tuple[Tensor, Tensor] | None = None  # cos, signed sin [positions, D]
        self.layer_devices = [execution_device(layer) for layer in self.layers]
        self._final_norm, self._head = _norm_fn(self.norm), _linear_fn(self.lm_head)
        # Per layer: how to call each submodule (see _norm_fn / _linear_fn / _mlp_fn). Decided
        # here, so hooks registered after the runner is built are not seen: build a new runner.
        self._calls = [
            (
                _norm_fn(layer.input_layernorm),
                _linear_fn(layer.self_attn.q_proj),
                _linear_fn(layer.self_attn.k_proj),
                _linear_fn(layer.self_attn.v_proj),
                _linear_fn(layer.self_attn.o_proj),
                _norm_fn(layer.post_attention_layernorm),
                _mlp_fn(layer.mlp),
            )
            for layer in self.layers
        ]
        self.device = execution_device(self.embed_tokens)
        self.head_device = execution_device(self.norm)
        self.dtype = self.embed_tokens.weight.dtype
        # The fused exit head needs the final norm's weight and epsilon and a plain LM-head weight;
        # a quantized or biased head goes through the modules instead.
        self.norm_eps = getattr(self.norm, "variance_epsilon", None)
        head_w = getattr(self.lm_head, "weight", None)
        self.fused_head = (
            _plain_linear(self.lm_head)
            and not _hooked(self.norm)
            and self.lm_head.bias is None
            and self.norm_eps is not None
            and head_w is not None
            and head_w.dtype in (torch.float32, torch.float16, torch.bfloat16)
            and head_w.device == self.norm.weight.device
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
        ctx = BlockContext.standalone(B, T, hidden.device) if cache is None else cache.block(start, T)
        cos, sin = self._rope(hidden, ctx)  # [B or 1, T, 1, D]
        for i in range(start, end):
            hidden = self._layer(i, hidden, cos, sin, cache, ctx)
        if cache is not None:
            cache.advance(start, end, T)
        return hidden

    def _rope(self, hidden: Tensor, ctx: BlockContext) -> tuple[Tensor, Tensor]:
        """cos and signed sin for the block's positions, ``[B or 1, T, 1, D]``."""
        T = ctx.num_tokens
        if getattr(self.rotary_emb, "rope_type", None) not in _STATIC_ROPE:
            positions = ctx.position_ids
            if positions is None:
                positions = (ctx.start + torch.arange(T, device=hidden.device))[None]
            cos, sin = self.rotary_emb(hidden, positions.to(hidden.device))
            return cos[:, :, None], _signed_sin(sin)[:, :, None]
        if self._rope_table is None or self._rope_table[0].shape[0] < ctx.kv_len:
            have = 0 if self._rope_table is None else self._rope_table[0].shape[0]
            n = max(ctx.kv_len, 2 * have, _ROPE_TABLE_MIN)  # grow geometrically: few recomputations
            cos, sin = self.rotary_emb(hidden, torch.arange(n, device=hidden.device)[None])
            self._rope_table = (cos[0], _signed_sin(sin[0]))  # [n, D] each
        cos, sin = self._rope_table
        if ctx.position_ids is None:  # uniform rows without padding: positions start .. start + T
            return cos[None, ctx.start : ctx.start + T, None], sin[None, ctx.start : ctx.start + T, None]
        positions = ctx.position_ids.to(cos.device)
        return cos[positions][:, :, None], sin[positions][:, :, None]

    def _layer(
        self, i: int, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None, ctx: BlockContext
    ) -> Tensor:
        input_norm, q_proj, k_proj, v_proj, o_proj, post_norm, mlp = self._calls[i]
        if x.device != self.layer_devices[i]:  # models split across devices by accelerate
            x, cos, sin = (t.to(self.layer_devices[i]) for t in (x, cos, sin))
        B, T, _ = x.shape
        h = input_norm(x)
        q = q_proj(h).view(B, T, -1, self.head_dim)  # [B, T, Hq, D]
        k = k_proj(h).view(B, T, -1, self.head_dim)  # [B, T, Hkv, D]
        v = v_proj(h).view(B, T, -1, self.head_dim).transpose(1, 2)  # [B, Hkv, T, D]
        q, k = _apply_rope(torch.cat((q, k), dim=2), cos, sin).split(
            (self.num_heads, self.num_kv_heads), dim=2
        )
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        keys, values = (k, v) if cache is None else cache.write(i, ctx, k, v)  # [B, Hkv, S, D]
        mask = ctx.mask(self.windows[i])
        if mask is not None and mask.device != q.device:
            mask = mask.to(q.device)
        o = F.scaled_dot_product_attention(
            q,
            keys,
            values,
            attn_mask=mask,
            scale=self.layers[i].self_attn.scaling,
            enable_gqa=self.num_heads != self.num_kv_heads,
        )
        x = x + o_proj(o.transpose(1, 2).reshape(B, T, -1))
        return x + mlp(post_norm(x))

    def logits(self, hidden: Tensor) -> Tensor:
        """Final norm + LM head through the model's own modules on any hidden state ``[..., H]``
        -> fp32 logits ``[..., V]`` (what HF's forward computes; autograd works through it)."""
        logits = self._head(self._final_norm(hidden.to(self.head_device)))
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
                self.lm_head.weight,
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
        return exit_head_logits(hidden, self.norm.weight, self.norm_eps, self.lm_head.weight)

    @torch.no_grad()
    def prefill(self, input_ids: Tensor, cache: KVCache, end: int | None = None) -> Tensor:
        """Run the prompt ``[B, P]`` through layers ``[0, end)``; return the last state ``[B, H]``."""
        end = self.num_layers if end is None else end
        return self.run_layers(self.embed(input_ids), 0, end, cache)[:, -1]
