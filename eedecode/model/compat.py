"""What eedecode can reproduce of a Hugging Face model, checked before anything runs: the
architecture, hooks on modules whose forward the runner never calls, train-mode dropout, RoPE
variants whose frequencies change with the sequence length, and the position limit."""

from __future__ import annotations

import torch

#: Architectures whose decoder layer is the LLaMA block (pre-norm attention + gated MLP, RoPE).
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


def check_supported(model) -> None:
    name = type(model).__name__
    if name not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"model: unsupported architecture {name!r}; "
            f"eedecode supports {', '.join(SUPPORTED_ARCHITECTURES)}"
        )


# RoPE variants whose frequencies depend on the length of the sequence seen so far.
_LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def _rope_switch_length(config, rope: str) -> int | None:
    """Where a length-dependent RoPE changes its frequencies (as Hugging Face's rotary embedding
    decides it): past max_position_embeddings for dynamic NTK, past the rope parameters'
    original_max_position_embeddings for longrope."""
    if rope == "dynamic":
        return getattr(config, "max_position_embeddings", None)
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return params.get("original_max_position_embeddings")


#: Modules whose hooks transformers installs itself: its output capturing (``output_hidden_states``,
#: ``output_attentions``) stays on the layers after the first such forward and records only inside
#: that forward's own context, never during eedecode's decoding.
_TRANSFORMERS_HOOK_MODULES = ("transformers.utils.output_capturing",)


def _is_transformers_hook(hook) -> bool:
    return getattr(hook, "__module__", None) in _TRANSFORMERS_HOOK_MODULES


def _user_hooked(m: torch.nn.Module) -> bool:
    """Hooks a user registered (accelerate's device hooks are handled, see ModelRunner;
    transformers' own output-capturing hooks are not the user's)."""
    hooks = [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]
    return any(not _is_transformers_hook(h) for h in hooks)


def _unrunnable_hooks(model):
    """Modules whose forward eedecode never calls, with hooks on them: the model, its body, the
    decoder layers, their attention blocks and the rotary embedding."""
    inner = model.model
    candidates = [("", model), ("model", inner), ("model.rotary_emb", inner.rotary_emb)]
    for i, layer in enumerate(inner.layers):
        candidates += [(f"model.layers.{i}", layer), (f"model.layers.{i}.self_attn", layer.self_attn)]
    return [(n, m) for n, m in candidates if _user_hooked(m)]


def check_generation(runner, total_len: int, speculative: bool) -> None:
    """Raise, naming the cause, where running this model layer range by layer range would not
    compute what its own forward computes."""
    model = runner.model
    dropout = getattr(runner.config, "attention_dropout", 0.0) or 0.0
    if model.training and dropout > 0:
        raise ValueError(
            f"model: is in train() mode with attention_dropout={dropout}; its outputs would be random. "
            "Call model.eval() first"
        )
    hooked = _unrunnable_hooks(model)
    if hooked:
        name = hooked[0][0]
        raise ValueError(
            f"model: {name or 'the model'} has a forward hook or pre-hook; eedecode runs the decoder "
            "layers through their submodules and would skip it. Remove it, or register it on a "
            "projection, norm or MLP (those hooks are honoured)"
        )
    rope = getattr(runner.rotary_emb, "rope_type", "default")
    switch = _rope_switch_length(runner.config, rope) if rope in _LENGTH_DEPENDENT_ROPE else None
    crosses = switch is not None and total_len > switch
    if speculative and crosses:
        raise ValueError(
            f"rope_scaling: {rope!r} RoPE changes its frequencies once a sequence passes {switch} "
            f"positions; verifying several tokens at once would not match one-at-a-time decoding. "
            f"This generation reaches {total_len} positions: use mode='autoregressive', or fewer "
            "max_new_tokens"
        )
    limit = runner.max_positions
    if limit is not None and total_len > limit and not (rope == "dynamic" and not speculative):
        raise ValueError(
            f"max_new_tokens: the prompt and max_new_tokens reach {total_len} positions, more than the "
            f"model's max_position_embeddings ({limit})"
        )
