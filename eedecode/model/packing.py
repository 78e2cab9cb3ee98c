"""Packed weights: each decoder layer's projections in the layout the CPU hot path reads fastest.

Per decoder layer, every matrix transposed and contiguous (``[in, out]``), groups side by side::

    qkv      [H, (Hq + 2 Hkv) D]    q_proj | k_proj | v_proj    one product instead of three
    o        [Hq D, H]
    gate_up  [H, 2 I]               gate_proj | up_proj         one product instead of two
    down     [I, H]

and the LM head ``[H, V]`` when it is not tied to the embedding and at most
:data:`HEAD_MAX_BYTES`. Biases (Qwen2's q/k/v) are fused the same way. Why this layout:
:mod:`eedecode.kernels.cpu_matmul` (MKL reads transposed weights fastest for 1 to 3 rows; fusing
saves three products per layer).

Three ways (``pack=`` of :func:`packed_weights`, ``generate(pack=...)``):

* **``"copy"``, the default: beside the model.** The packed matrices are new tensors, made once
  per model and kept in its :class:`~eedecode.model.memory.ModelMemory`; the model is not touched
  (its forward, ``state_dict()`` and ``save_pretrained`` behave exactly as before). They cost a
  second copy of the layers' projection weights (and of an untied LM head up to
  :data:`HEAD_MAX_BYTES`). Each call checks that the model's parameters are still the ones copied
  (the same tensors, their storage and version counters, and the sum of every copied weight, which
  catches a write through ``.data`` that the version counter does not see: a LoRA merge, say),
  and packs again if not. The sums read the copied weights once per call (on SmolLM2-135M in
  float32 at one thread, about 40 ms).
  When the copy would take more than half of the memory available, the call runs unpacked.
* **``"in_place"``, opt-in: no second copy.** The model's parameters become views of the packed
  storage (``q_proj.weight`` is ``qkv[:, :q].t()``); packing a layer needs one layer's group of
  matrices as scratch. This changes the model: its own forward computes the same function rounded
  differently (``F.linear`` on a transposed view makes MKL multiply with the other transpose flag;
  in bfloat16 the logits move), and ``state_dict()`` returns contiguous copies, which
  ``save_pretrained`` needs but which no longer alias the parameters. :func:`packed_layer`
  recognises such a layer again from its parameters' strides and shared storage.
* **``"none"``**: every layer runs through its modules.

**What is packed.** A layer on the CPU whose seven projections are plain ``nn.Linear`` without
hooks, in one dtype of float32 / bfloat16 / float16, with a bias on all or none of a group's
matrices, in the known Hugging Face attention and gated-SiLU MLP classes. Everything else keeps the
module path: bitsandbytes layers, accelerate-offloaded or hooked modules, models on a GPU (where
this layout was never measured).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch

from .memory import memory_of

Tensor = torch.Tensor

PACK_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
PACK_MODES = ("copy", "in_place", "none")
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


# -- packing beside the model --------------------------------------------------------------------
def _copy_group(linears: list[torch.nn.Linear]) -> tuple[Tensor, Tensor | None]:
    """New tensors: the group's weights transposed side by side ``[in, sum(out)]``, and biases."""
    weight = torch.cat([lin.weight.detach().t() for lin in linears], 1).contiguous()
    bias = torch.cat([lin.bias.detach() for lin in linears]) if linears[0].bias is not None else None
    return weight, bias


def _copy_layer(layer) -> PackedLayer | None:
    found = packed_layer(layer)  # packed in place earlier: nothing to copy
    if found is not None or not packable(layer):
        return found
    return PackedLayer(*(t for g in _groups(layer) for t in _copy_group(g)))


def _head_packable(lm_head, embed_tokens) -> bool:
    w = getattr(lm_head, "weight", None)
    return (
        type(lm_head) is torch.nn.Linear
        and not hooked(lm_head)
        and lm_head.bias is None
        and w is not getattr(embed_tokens, "weight", None)
        and w.dtype in PACK_DTYPES
        and w.device.type == "cpu"
        and w.numel() * w.element_size() <= HEAD_MAX_BYTES
    )


def _fingerprint(model) -> tuple:
    """The parameters as they are now: which tensors, where their data is, how often modified
    (every in-place change bumps a tensor's version counter)."""
    return tuple((id(p), p.data_ptr(), p._version, p.dtype, tuple(p.shape)) for p in model.parameters())


def _copied(layers, lm_head, embed_tokens) -> list[Tensor]:
    """What a packed copy holds: the projections and biases of the layers not packed in place, and
    an untied LM head small enough to transpose."""
    tensors = [
        t.detach()
        for layer in layers
        if packable(layer) and packed_layer(layer) is None
        for group in _groups(layer)
        for lin in group
        for t in (lin.weight, lin.bias)
        if t is not None
    ]
    if _head_packable(lm_head, embed_tokens) and _packed_group([lm_head]) is None:
        tensors.append(lm_head.weight.detach())
    return tensors


def _content(tensors: list[Tensor]) -> Tensor:
    """The float32 sum of each tensor, as raw bits (so a NaN equals itself): a write the version
    counter misses (through ``.data``) changes them."""
    if not tensors:
        return torch.zeros(0, dtype=torch.int32)
    with torch.no_grad():
        return torch.stack([t.sum(dtype=torch.float32) for t in tensors]).view(torch.int32)


def _available_bytes() -> int | None:
    """Memory a new allocation can take: Linux's MemAvailable (free pages and the page cache the
    kernel can drop), else the free pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def packed_weights(model, layers, lm_head, embed_tokens, pack="copy") -> tuple[list, Tensor | None]:
    """Per decoder layer its :class:`PackedLayer` (None: it runs through its modules), and the LM
    head as ``[H, V]`` (None: it stays ``[V, H]``), packed as ``pack`` says (see the module
    docstring)."""
    if pack not in PACK_MODES:
        raise ValueError(f"pack: must be one of {PACK_MODES}, got {pack!r}")
    if pack == "in_place":
        return [pack_layer(layer) for layer in layers], pack_head(lm_head, embed_tokens)
    if pack == "none":
        return [packed_layer(layer) for layer in layers], None
    memory = memory_of(model)
    # the parameters, and what may be packed now (a hook registered since runs through its module)
    fingerprint = (
        _fingerprint(model),
        tuple(packable(layer) for layer in layers),
        _head_packable(lm_head, embed_tokens),
    )
    copied = _copied(layers, lm_head, embed_tokens)
    content = _content(copied)
    kept = memory.packed
    if kept is not None and kept[0] == fingerprint and torch.equal(kept[3], content):
        return kept[1], kept[2]
    memory.packed = None  # the model changed: the old copy goes before the new one is made
    available = _available_bytes()
    if available is not None and sum(t.numel() * t.element_size() for t in copied) > available // 2:
        warnings.warn(
            "pack: a packed copy of the weights would take more than half of the free memory; "
            "running unpacked (pass pack='in_place' to pack the model's own weights)",
            stacklevel=3,
        )
        return [packed_layer(layer) for layer in layers], None
    packed = [_copy_layer(layer) for layer in layers]
    head = None
    if _head_packable(lm_head, embed_tokens):
        found = _packed_group([lm_head])
        head = found[0] if found is not None else lm_head.weight.detach().t().contiguous()
    memory.packed = (fingerprint, packed, head, content)
    return packed, head
