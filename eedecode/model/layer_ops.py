"""How the model runner calls a decoder layer's pieces: the functional ops on a submodule's own
parameters where that is bit-identical to its forward, the module itself otherwise; RoPE tables
and rotation; sliding windows; where accelerate computes a module.

Dispatch overhead dominates small models: an HF RMSNorm is 8 tensor ops, ``F.rms_norm`` one. Where
a submodule is *exactly* a known HF class with no hooks (so its forward is known), the runner calls
the functional op on the module's own parameters instead; anything else (bitsandbytes layers,
accelerate hooks, forward hooks, other classes) goes through the module. Same numbers: ``F.linear``
is what ``nn.Linear`` calls, and ``F.rms_norm`` equals the HF norm bit for bit in float32 (the only
dtype it is used for; tests check both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .packing import hooked

Tensor = torch.Tensor


def signed_sin(sin: Tensor) -> Tensor:
    """A *signed* sine table such that ``x * cos + swap_halves(x) * signed_sin`` equals HF's
    ``x * cos + rotate_half(x) * sin`` bit for bit (``rotate_half(x) = cat(-x2, x1)``, and
    ``(-a) * b == a * (-b)`` exactly)."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


_RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm")
_GATED_MLPS = ("LlamaMLP", "MistralMLP", "Qwen2MLP")
_SILU = ("SiLUActivation", "SiLU")


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


def plain_linear(m) -> bool:
    return type(m) is torch.nn.Linear and not hooked(m)


def norm_fn(m):
    """x -> m(x), by F.rms_norm when that is bit-identical (a known HF RMSNorm, float32)."""
    if type(m).__name__ not in _RMS_NORMS or hooked(m) or m.weight.dtype != torch.float32:
        return m
    shape, eps = (m.weight.shape[0],), m.variance_epsilon
    return lambda x: F.rms_norm(x, shape, m.weight, eps) if x.dtype == torch.float32 else m(x)


def linear_fn(m):
    """x -> m(x), by F.linear on its parameters when m is a plain nn.Linear."""
    return (lambda x: F.linear(x, m.weight, m.bias)) if plain_linear(m) else m


def mlp_fn(m):
    """x -> m(x) for the gated SiLU MLP of Llama / Mistral / Qwen2, functionally when possible."""
    parts = (getattr(m, "gate_proj", None), getattr(m, "up_proj", None), getattr(m, "down_proj", None))
    if (
        type(m).__name__ not in _GATED_MLPS
        or hooked(m)
        or type(getattr(m, "act_fn", None)).__name__ not in _SILU
        or hooked(m.act_fn)
        or not all(plain_linear(p) for p in parts)
    ):
        return m
    g, u, d = parts
    return lambda x: F.linear(
        F.silu(F.linear(x, g.weight, g.bias)) * F.linear(x, u.weight, u.bias), d.weight, d.bias
    )


# RoPE variants whose frequencies do not depend on the sequence length: their tables can be
# computed once per length and sliced (HF computes them elementwise per position, so the values
# are bit for bit the same).
STATIC_ROPE = ("default", "linear", "llama3", "yarn")
ROPE_TABLE_MIN = 256  # positions in the first table


def rotate(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """RoPE of ``x [..., D]`` (q and k heads together), cos and signed sin broadcastable to it.
    Rolling the last dim by ``D / 2`` swaps its halves; the products and the sum round as Hugging
    Face's do."""
    swapped = x.roll(x.shape[-1] // 2, -1).mul_(signed_sin)
    return torch.mul(x, cos).add_(swapped)


def sliding_windows(config, num_layers: int) -> list[int | None]:
    """Per-layer sliding attention window, as the HF model applies it (Mistral: every layer;
    Qwen2: the layers whose ``layer_types`` entry is ``sliding_attention``)."""
    window = getattr(config, "sliding_window", None)
    if window is None:
        return [None] * num_layers
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        return [window] * num_layers
    return [window if t == "sliding_attention" else None for t in layer_types[:num_layers]]
