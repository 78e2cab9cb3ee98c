"""Packed weights: each decoder layer's projections in the layout the CPU hot path reads fastest,
made once per model, in place, without a second copy of the weights.

Per decoder layer, every matrix transposed and contiguous (``[in, out]``), groups side by side::

    qkv      [H, (Hq + 2 Hkv) D]    q_proj | k_proj | v_proj    one product instead of three
    o        [Hq D, H]
    gate_up  [H, 2 I]               gate_proj | up_proj         one product instead of two
    down     [I, H]

and the LM head ``[H, V]`` when it is not tied to the embedding and at most
:data:`HEAD_MAX_BYTES`. Biases (Qwen2's q/k/v) are fused the same way. Why this layout:
:mod:`eedecode.kernels.cpu_matmul` (MKL reads transposed weights fastest for 1 to 3 rows; fusing
saves three products per layer).

**In place.** The model's parameters become views of the packed storage (``q_proj.weight`` is
``qkv[:, :q].t()``), so the model holds one copy of its weights; packing a layer needs one
layer's group of matrices as scratch. The model's own forward and Hugging Face ``generate`` still
work and compute the same function, rounded differently: ``F.linear`` on a transposed view
makes MKL multiply with the other transpose flag. ``load_state_dict`` and in-place optimizer
steps write into the packed storage. ``state_dict()`` returns contiguous copies of the packed
parameters, which ``save_pretrained`` needs.

**Found again, never cached.** :func:`packed_layer` recognises a packed layer from its
parameters' strides and shared storage. Nothing is kept on the side, so a parameter that was
replaced (``model.to(...)``, a new ``Parameter``) is simply not packed any more, and the next
runner packs it again.

**What is packed.** A layer on the CPU whose seven projections are plain ``nn.Linear`` without
hooks, in one dtype of float32 / bfloat16 / float16, with a bias on all or none of a group's
matrices, in the known Hugging Face attention and gated-SiLU MLP classes. Everything else keeps the
module path: bitsandbytes layers, accelerate-offloaded or hooked modules, models on a GPU (where
this layout was never measured).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor

PACK_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: A head larger than this stays ``[V, H]``: transposing it needs a whole second copy as scratch.
HEAD_MAX_BYTES = 64 << 20
_ATTENTIONS = ("LlamaAttention", "MistralAttention", "Qwen2Attention")
_GATED_MLPS = ("LlamaMLP", "MistralMLP", "Qwen2MLP")
_SILU = ("SiLUActivation", "SiLU")


@dataclass(frozen=True)
class PackedLayer:
    """One decoder layer's packed matrices (views of the parameters' storage) and fused biases."""

    qkv: Tensor  # [H, q + 2 kv]
    qkv_bias: Tensor | None  # [q + 2 kv]
    o: Tensor  # [q, H]
    o_bias: Tensor | None
    gate_up: Tensor  # [H, 2 I]
    gate_up_bias: Tensor | None
    down: Tensor  # [I, H]
    down_bias: Tensor | None


def hooked(m: torch.nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__)


def _groups(layer) -> list[list[torch.nn.Linear]]:
    a, m = layer.self_attn, layer.mlp
    return [[a.q_proj, a.k_proj, a.v_proj], [a.o_proj], [m.gate_proj, m.up_proj], [m.down_proj]]


def packable(layer) -> bool:
    """Whether :func:`pack_layer` may pack this decoder layer (see the module docstring)."""
    a, m = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if type(a).__name__ not in _ATTENTIONS or type(m).__name__ not in _GATED_MLPS or hooked(m):
        return False
    if type(getattr(m, "act_fn", None)).__name__ not in _SILU or hooked(m.act_fn):
        return False
    try:
        groups = _groups(layer)
    except AttributeError:
        return False
    linears = [lin for g in groups for lin in g]
    if not all(type(lin) is torch.nn.Linear and not hooked(lin) for lin in linears):
        return False
    weights = [lin.weight for lin in linears]
    w0 = weights[0]
    return (
        w0.dtype in PACK_DTYPES
        and w0.device.type == "cpu"
        and all(w.dtype == w0.dtype and w.device == w0.device for w in weights)
        and all(len({lin.bias is None for lin in g}) == 1 for g in groups)
        and all(len({lin.in_features for lin in g}) == 1 for g in groups)
    )


# -- recognising a packed group ----------------------------------------------------------------
def _fused(tensors: list[Tensor], shape: tuple[int, ...], strides: list[tuple[int, ...]], offsets) -> bool:
    """Whether ``tensors`` are views of one storage that holds exactly a contiguous ``shape``."""
    storage = tensors[0].untyped_storage()
    numel = 1
    for n in shape:
        numel *= n
    return storage.nbytes() == numel * tensors[0].element_size() and all(
        t.untyped_storage().data_ptr() == storage.data_ptr()
        and t.stride() == s
        and t.storage_offset() == o
        and t.dtype == tensors[0].dtype
        for t, s, o in zip(tensors, strides, offsets, strict=True)
    )


def _packed_group(linears: list[torch.nn.Linear]) -> tuple[Tensor, Tensor | None] | None:
    """The fused ``[in, sum(out)]`` matrix and bias of a packed group, or None if not packed."""
    outs = [lin.out_features for lin in linears]
    H, N = linears[0].in_features, sum(outs)
    offsets = [sum(outs[:i]) for i in range(len(outs))]
    weights = [lin.weight for lin in linears]
    if not _fused(weights, (H, N), [(1, N)] * len(linears), offsets):
        return None
    bias = None
    if linears[0].bias is not None:
        biases = [lin.bias for lin in linears]
        if not _fused(biases, (N,), [(1,)] * len(linears), offsets):
            return None
        bias = biases[0].detach().as_strided((N,), (1,), 0)
    return weights[0].detach().as_strided((H, N), (N, 1), 0), bias


def packed_layer(layer) -> PackedLayer | None:
    """The layer's packed matrices, if :func:`pack_layer` packed it and its parameters are still
    those views (cheap: strides and storage pointers only)."""
    if not packable(layer):
        return None
    found = [_packed_group(g) for g in _groups(layer)]
    if any(f is None for f in found):
        return None
    return PackedLayer(*(t for pair in found for t in pair))


# -- packing -----------------------------------------------------------------------------------
def _contiguous_state(module, state_dict, prefix, local_metadata) -> None:
    """``state_dict()`` of a packed linear layer: contiguous tensors of their own (what
    ``save_pretrained`` and safetensors require), not views of the packed storage."""
    for name in ("weight", "bias"):
        t = state_dict.get(prefix + name)
        if t is None:
            continue
        if not t.is_contiguous():
            state_dict[prefix + name] = t.contiguous()
        elif t.untyped_storage().nbytes() != t.numel() * t.element_size():
            state_dict[prefix + name] = t.clone()  # a slice of the fused storage


def _mark_for_state_dict(lin: torch.nn.Module) -> None:
    if not lin.__dict__.get("_eedecode_contiguous_state"):
        lin.register_state_dict_post_hook(_contiguous_state)
        lin.__dict__["_eedecode_contiguous_state"] = True


@torch.no_grad()
def _pack_group(linears: list[torch.nn.Linear]) -> None:
    """Copy the group's weights (and biases) side by side, transposed, into new storage, and make
    the parameters views of it. The old storage is freed as each parameter lets go of it."""
    w0 = linears[0].weight
    outs = [lin.out_features for lin in linears]
    fused = torch.empty(linears[0].in_features, sum(outs), dtype=w0.dtype, device=w0.device)
    has_bias = linears[0].bias is not None
    bias = torch.empty(sum(outs), dtype=linears[0].bias.dtype, device=w0.device) if has_bias else None
    start = 0
    for lin, n in zip(linears, outs, strict=True):
        fused[:, start : start + n].copy_(lin.weight.t())
        lin.weight.data = fused[:, start : start + n].t()
        if has_bias:
            bias[start : start + n].copy_(lin.bias)
            lin.bias.data = bias[start : start + n]
        _mark_for_state_dict(lin)
        start += n


def pack_layer(layer) -> PackedLayer | None:
    """Pack a decoder layer in place (if :func:`packable`; once: a packed layer is left as it is)."""
    if not packable(layer):
        return None
    for group in _groups(layer):
        if _packed_group(group) is None:
            _pack_group(group)
    return packed_layer(layer)


def pack_head(lm_head, embed_tokens) -> Tensor | None:
    """The LM head as ``[H, V]`` (packed in place if needed), or None where it stays ``[V, H]``:
    tied to the embedding (whose rows the lookup reads), larger than :data:`HEAD_MAX_BYTES`, not a
    plain unbiased CPU ``nn.Linear`` in a packable dtype, or hooked."""
    w = getattr(lm_head, "weight", None)
    if (
        type(lm_head) is not torch.nn.Linear
        or hooked(lm_head)
        or lm_head.bias is not None
        or w is getattr(embed_tokens, "weight", None)
        or w.dtype not in PACK_DTYPES
        or w.device.type != "cpu"
        or w.numel() * w.element_size() > HEAD_MAX_BYTES
    ):
        return None
    found = _packed_group([lm_head])
    if found is None:
        _pack_group([lm_head])
        found = _packed_group([lm_head])
    return found[0]
