"""What eedecode can reproduce of a Hugging Face model, checked before anything runs: the
architecture; modules whose ``forward`` the runner never calls (the model, its body, the decoder
layers, their attention blocks) replaced, subclassed or hooked; train-mode dropout; RoPE variants
whose frequencies change with the sequence length.

The runner calls the projections, norms, MLPs and the rotary embedding through the modules
themselves whenever they are not exactly Hugging Face's (:mod:`eedecode.model.layer_ops`), so a
patched or hooked one of those is honoured; it never calls the others' ``forward``, so a change
there would be silently skipped: it is refused, naming the module."""

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


def _changed(m: torch.nn.Module) -> str | None:
    """How ``m``'s forward is not Hugging Face's own, or None: a forward set on the instance, a
    class from outside transformers (a subclass overriding it), hooks."""
    if "forward" in m.__dict__ and getattr(m, "_hf_hook", None) is None:  # accelerate's own: handled
        return "its forward was replaced"
    if not type(m).__module__.startswith("transformers."):
        return f"its class {type(m).__qualname__} (from {type(m).__module__}) is not Hugging Face's"
    if _user_hooked(m):
        return "it has a forward hook or pre-hook"
    return None


def _unrunnable_changes(model):
    """Modules whose forward eedecode never calls, changed: the model, its body, the decoder
    layers and their attention blocks."""
    inner = model.model
    candidates = [("the model", model), ("model.model", inner)]
    for i, layer in enumerate(inner.layers):
        candidates += [
            (f"model.model.layers.{i}", layer),
            (f"model.model.layers.{i}.self_attn", layer.self_attn),
        ]
    hooked_rope = _user_hooked(inner.rotary_emb)
    found = [(name, why) for name, m in candidates if (why := _changed(m)) is not None]
    return found + ([("model.model.rotary_emb", "it has a forward hook or pre-hook")] if hooked_rope else [])


def check_generation(model, total_len: int, speculative: bool) -> None:
    """Raise, naming the cause, where running this model layer range by layer range would not
    compute what its own forward computes."""
    config = model.config
    dropout = getattr(config, "attention_dropout", 0.0) or 0.0
    if model.training and dropout > 0:
        raise ValueError(
            f"model: is in train() mode with attention_dropout={dropout}; its outputs would be random. "
            "Call model.eval() first"
        )
    changed = _unrunnable_changes(model)
    if changed:
        name, why = changed[0]
        raise ValueError(
            f"model: {name}: {why}; eedecode runs the decoder layers through their submodules "
            "(projections, norms, MLP) and would skip it. Undo it, or make the change on a "
            "projection, norm or MLP (those are honoured)"
        )
    rope = getattr(model.model.rotary_emb, "rope_type", "default")
    switch = _rope_switch_length(config, rope) if rope in _LENGTH_DEPENDENT_ROPE else None
    if speculative and switch is not None and total_len > switch:
        raise ValueError(
            f"rope_scaling: {rope!r} RoPE changes its frequencies once a sequence passes {switch} "
            f"positions; verifying several tokens at once would not match one-at-a-time decoding. "
            f"This generation reaches {total_len} positions: use mode='autoregressive', or fewer "
            "max_new_tokens"
        )
