"""The drafter's forward pass inside vLLM: the target model's own first ``E`` decoder layers, its
final norm and its LM head, run over a private KV cache.

This is the draft half of self-speculative decoding (LayerSkip, Elhoushi et al. 2024; Draft &
Verify, Zhang et al. 2023): the model drafts with a prefix of its own layers and the exit head it
already has, so the drafter shares every weight with the target and adds no parameters. vLLM's
CPU backend repacks each Linear's weight for its GEMM kernels and empties ``layer.weight``, so
this pass calls the target's modules (projections, rotary embedding, embedding, LM head) rather
than reading weights; the norms, the SiLU gate and the attention are plain torch ops.

The cache is the drafter's own (vLLM hands a custom proposer neither its block tables nor its
attention metadata): ``[E, rows, kv_heads, capacity, head_dim]`` for keys and values, a cache row
per request, grown by doubling. It costs ``E / L`` of the target's KV cache for the rows that draft.
Layers ``< E`` of a draft token write their keys and values while drafting, so when the target
accepts the draft they are already right; only the token the target adds is run again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

#: vLLM model classes whose decoder layers this pass knows how to run.
SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


@dataclass
class _Batch:
    """Index tensors shared by the layers of one pass (built once on the host, no host syncs)."""

    pos: Tensor  # [B, T] positions; padding repeats a row's last position
    rows: Tensor  # [B] cache rows
    write_rows: Tensor  # [N] cache row of each real token
    write_pos: Tensor  # [N] its position
    real: Tensor | None  # [N] flat index of each real token in [B*T] (None: no padding)
    length: int  # keys to attend to: max position + 1
    row: int | None  # the cache row when B == 1
    mask: Tensor | None  # [B, 1, T, length] causal by position (None: one row, one token)

    @classmethod
    def build(cls, starts: list[int], rows: list[int], counts: list[int], T: int, device) -> _Batch:
        B = len(rows)
        last = torch.tensor([s + n - 1 for s, n in zip(starts, counts, strict=True)])
        pos = torch.minimum(torch.tensor(starts)[:, None] + torch.arange(T)[None, :], last[:, None])
        real = None
        if any(n != T for n in counts):
            real = torch.cat([torch.arange(n) + b * T for b, n in enumerate(counts)])
        row_of = torch.tensor(rows)
        flat_pos = pos.reshape(-1) if real is None else pos.reshape(-1).index_select(0, real)
        write_rows = row_of.repeat_interleave(torch.tensor(counts))
        length = int(max(s + n for s, n in zip(starts, counts, strict=True)))
        mask = None
        if B > 1 or T > 1:
            mask = (torch.arange(length)[None, None, :] <= pos[:, :, None])[:, None]
        moved = [None if t is None else t.to(device) for t in (pos, row_of, write_rows, flat_pos, real, mask)]
        pos, row_of, write_rows, flat_pos, real, mask = moved
        return cls(pos, row_of, write_rows, flat_pos, real, length, rows[0] if B == 1 else None, mask)


class ShallowRunner:
    """Layers ``[0, exit_layer)`` and the exit head (final norm + LM head) of a vLLM
    ``LlamaForCausalLM``-like model, batched over cache rows."""

    def __init__(self, model: torch.nn.Module, exit_layer: int, rows: int = 8, capacity: int = 256):
        if type(model).__name__ not in SUPPORTED:
            raise ValueError(f"eedecode's vLLM drafter supports {SUPPORTED}, got {type(model).__name__}")
        layers = model.model.layers
        if not 1 <= exit_layer < len(layers):
            raise ValueError(f"exit_layer: must be in [1, {len(layers) - 1}], got {exit_layer}")
        self.model = model
        self.layers = list(layers)[:exit_layer]
        attn = self.layers[0].self_attn
        self.heads, self.kv_heads, self.head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
        self.split = [attn.q_size, attn.kv_size, attn.kv_size]
        self.scale = attn.scaling
        self.eps = self.layers[0].input_layernorm.variance_epsilon
        self.tensor_parallel = model.config.num_attention_heads // self.heads
        weight = model.model.norm.weight
        shape = (exit_layer, rows, self.kv_heads, capacity, self.head_dim)
        self.keys = torch.zeros(shape, dtype=weight.dtype, device=weight.device)
        self.values = torch.zeros_like(self.keys)

    @property
    def exit_layer(self) -> int:
        return len(self.layers)

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def reserve(self, rows: int, length: int) -> None:
        """Make room for cache rows ``< rows`` and positions ``< length`` (doubling)."""
        _, have_rows, _, have_len, _ = self.keys.shape
        add_rows = 0 if rows <= have_rows else max(rows, 2 * have_rows) - have_rows
        add_len = 0 if length <= have_len else max(length, 2 * have_len) - have_len
        if add_rows or add_len:
            pad = (0, 0, 0, add_len, 0, 0, 0, add_rows)
            self.keys = F.pad(self.keys, pad)
            self.values = F.pad(self.values, pad)

    def _norm(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), weight, self.eps)

    def _attention(self, i: int, layer, x: Tensor, batch: _Batch) -> Tensor:
        """Layer ``i``'s self-attention for ``x`` ``[B*T, H]``; writes the keys and values of the
        batch's real (not padding) tokens into their cache rows first."""
        B, T = batch.pos.shape
        attn = layer.self_attn
        q, k, v = attn.qkv_proj(x)[0].split(self.split, dim=-1)
        q, k = attn.rotary_emb(batch.pos.reshape(-1), q, k)
        k, v = k.view(B * T, self.kv_heads, self.head_dim), v.view(B * T, self.kv_heads, self.head_dim)
        if batch.real is not None:  # drop the padding
            k, v = k.index_select(0, batch.real), v.index_select(0, batch.real)
        self.keys[i][batch.write_rows, :, batch.write_pos] = k
        self.values[i][batch.write_rows, :, batch.write_pos] = v
        if batch.row is not None:  # one row: a view of its cache
            keys = self.keys[i, batch.row, :, : batch.length][None]
            values = self.values[i, batch.row, :, : batch.length][None]
        else:
            keys = self.keys[i, batch.rows, :, : batch.length]  # [B, KV, S, D]
            values = self.values[i, batch.rows, :, : batch.length]
        q = q.view(B, T, self.heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=batch.mask, scale=self.scale, enable_gqa=True
        )
        return attn.o_proj(out.transpose(1, 2).reshape(B * T, self.heads * self.head_dim))[0]

    @torch.inference_mode()
    def forward(self, ids: Tensor, starts: list[int], rows: list[int], counts: list[int]) -> Tensor:
        """The exit layer's normed hidden states ``[B, T, H]`` for ``ids`` ``[B, T]``: row ``b``'s
        ``counts[b]`` tokens (then padding) at positions ``starts[b]...`` of cache row ``rows[b]``,
        whose earlier positions must already be in the cache."""
        B, T = ids.shape
        batch = _Batch.build(starts, rows, counts, T, self.keys.device)
        self.reserve(max(rows) + 1, batch.length)
        return self._layers(ids, batch)

    def _layers(self, ids: Tensor, batch: _Batch) -> Tensor:
        B, T = ids.shape
        residual = self.model.model.embed_input_ids(ids.reshape(-1))
        hidden = None
        for i, layer in enumerate(self.layers):
            if hidden is not None:
                residual = residual + hidden
            x = self._norm(residual, layer.input_layernorm.weight)
            residual = residual + self._attention(i, layer, x, batch)
            x = self._norm(residual, layer.post_attention_layernorm.weight)
            gate, up = layer.mlp.gate_up_proj(x)[0].chunk(2, dim=-1)
            hidden = layer.mlp.down_proj(F.silu(gate) * up)[0]
        return self._norm(residual + hidden, self.model.model.norm.weight).view(B, T, -1)

    def _logits(self, hidden: Tensor) -> Tensor:
        """Full-vocabulary logits on every rank: under tensor parallelism every rank must draft the
        same tokens, since the next draft step's collectives combine their shards."""
        if self.tensor_parallel == 1:
            return self.model.compute_logits(hidden)
        from vllm.distributed import tensor_model_parallel_all_gather

        logits = tensor_model_parallel_all_gather(self.model.compute_logits_local(hidden))
        return logits[..., : self.model.logits_processor.org_vocab_size]

    @torch.inference_mode()
    def exit_head(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Greedy drafts ``[B]`` and their probabilities ``[B]`` from normed hidden states ``[B, H]``
        through the target's own LM head."""
        logits = self._logits(hidden).float()
        top, token = logits.max(-1)
        return token, torch.exp(top - torch.logsumexp(logits, -1))
