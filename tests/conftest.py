"""Shared fixtures: tiny random LLaMA-family models built from configs (nothing is downloaded)."""

from __future__ import annotations

import functools

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

# Tiny models gain nothing from intra-op threads, and on a busy machine threads spin-wait.
torch.set_num_threads(1)

ARCHS = ("llama", "llama3", "mistral", "qwen2")

_COMMON = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


class Recorder:
    """A streamer that records what it is given (``put`` values, then ``"end"``)."""

    def __init__(self):
        self.calls = []

    def put(self, value):
        self.calls.append(value)

    def end(self):
        self.calls.append("end")


def tiny_config(arch: str, **overrides):
    kw = {**_COMMON, **overrides}
    if arch == "llama":
        return LlamaConfig(**kw)
    if arch == "llama3":
        kw.setdefault(
            "rope_scaling",
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        )
        kw.setdefault("rope_theta", 500000.0)
        return LlamaConfig(**kw)
    if arch == "mistral":
        kw.setdefault("sliding_window", 16)  # small, so that prompts and drafts cross it
        return MistralConfig(**kw)
    if arch == "qwen2":
        # q/k/v biases; a sliding window on the upper layers only (HF's max_window_layers)
        kw.setdefault("use_sliding_window", True)
        kw.setdefault("sliding_window", 16)
        kw.setdefault("max_window_layers", 3)
        return Qwen2Config(**kw)
    raise ValueError(f"unknown test arch {arch!r}")


_CLASSES = {
    "llama": LlamaForCausalLM,
    "llama3": LlamaForCausalLM,
    "mistral": MistralForCausalLM,
    "qwen2": Qwen2ForCausalLM,
}


def tiny_model(arch: str = "llama", seed: int = 0, dtype=torch.float32, **overrides):
    """A tiny random model in eval mode (each arch gets its own weights)."""
    torch.manual_seed(seed * 31 + ARCHS.index(arch))
    cfg = tiny_config(arch, **overrides)
    model = _CLASSES[arch](cfg).to(dtype).eval()
    return model


@functools.cache
def cached_tiny_model(arch: str = "llama", seed: int = 0, **overrides):
    return tiny_model(arch, seed, **dict(overrides))


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


def has_cuda() -> bool:
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if has_cuda():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def silent_upper_layers(model, first: int = 1):
    """Layers from ``first`` on add nothing to the residual stream."""
    with torch.no_grad():
        for layer in model.model.layers[first:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return model


#: The vocabulary of the sampling tests' model: small enough to enumerate every short continuation.
SMALL_VOCAB = 8


@pytest.fixture(scope="module")
def small_vocab_model():
    # Weights scaled up so that the early exit disagrees with the final layer often enough for a
    # wrong rule to show, while drafts are still accepted 25-70% of the time (bonus tokens occur).
    model = tiny_model(
        "llama", seed=3, vocab_size=SMALL_VOCAB, eos_token_id=None, bos_token_id=None, pad_token_id=None
    )
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    return model
