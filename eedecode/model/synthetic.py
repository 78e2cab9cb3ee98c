"""Synthetic models of real architectures' shapes, for measuring the machinery at realistic sizes
without downloading weights.

Random weights, except that the residual updates of the layers at and above the exit layer
(their attention output and MLP down projections) are scaled by a factor ``alpha``: the smaller
``alpha``, the less the deep layers move the residual stream, and the more often the exit layer's
argmax equals the last layer's. ``alpha`` is found by bisection so that the agreement on random
token sequences is the one asked for. The text such a model writes is meaningless; its speed is
what a real model of that shape would show at that acceptance rate.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from .layer_stats import layer_stats
from .runner import ModelRunner

_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

SHAPES = {
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling=_LLAMA3_ROPE,
        tie_word_embeddings=True,
    ),
    "llama-3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=8192,
        rope_theta=500000.0,
    ),
    "llama-2-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=4096,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=512,
    ),
}


def synthetic_config(shape: str) -> LlamaConfig:
    if shape not in SHAPES:
        raise ValueError(f"shape: unknown synthetic shape {shape!r}; choose from {', '.join(SHAPES)}")
    return LlamaConfig(**SHAPES[shape], bos_token_id=1, eos_token_id=None, pad_token_id=0, rms_norm_eps=1e-5)


def _deep_projections(model, exit_layer: int) -> list[torch.nn.Linear]:
    return [
        m for layer in model.model.layers[exit_layer:] for m in (layer.self_attn.o_proj, layer.mlp.down_proj)
    ]


def _scale_deep(model, exit_layer: int, factor: float) -> None:
    with torch.no_grad():
        for proj in _deep_projections(model, exit_layer):
            proj.weight.mul_(factor)


def exit_agreement(model, exit_layer: int, tokens: torch.Tensor) -> float:
    """Fraction of positions where the exit layer's argmax equals the last layer's; ``tokens [B, T]``."""
    return layer_stats(ModelRunner(model), tokens, [exit_layer])["agreement"][0]


def calibrate(model, exit_layer: int, agreement: float, tokens: torch.Tensor, steps: int = 14) -> float:
    """Scale the deep residual updates so that :func:`exit_agreement` is about ``agreement``;
    returns the scale applied (bisection on a log scale in [1e-4, 1])."""
    if not 0.0 < agreement < 1.0:
        raise ValueError(f"agreement: must be in (0, 1), got {agreement!r}")
    lo, hi = -4.0, 0.0  # log10 of the scale
    current = 0.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        _scale_deep(model, exit_layer, 10 ** (mid - current))
        current = mid
        if exit_agreement(model, exit_layer, tokens) >= agreement:
            lo = mid  # agreement is high enough: the deep layers may do more
        else:
            hi = mid
    _scale_deep(model, exit_layer, 10 ** (lo - current))
    return 10**lo


def synthetic_model(
    shape: str,
    *,
    exit_layer: int | None = None,
    agreement: float | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """A random ``LlamaForCausalLM`` of a real architecture's shape; with ``agreement``, calibrated
    so that layer ``exit_layer`` (default L/4) agrees with the last layer that often."""
    config = synthetic_config(shape)
    dev = torch.device(device)
    torch.manual_seed(seed)
    with dev:
        model = LlamaForCausalLM(config).to(dtype).eval()
    if agreement is not None:
        E = exit_layer or max(1, config.num_hidden_layers // 4)
        g = torch.Generator().manual_seed(seed + 1)
        tokens = torch.randint(3, config.vocab_size, (4, 64), generator=g).to(dev)
        scale = calibrate(model, E, agreement, tokens)
        model.eedecode_synthetic = {
            "shape": shape,
            "exit_layer": E,
            "agreement": agreement,
            "deep_scale": scale,
        }
    return model
