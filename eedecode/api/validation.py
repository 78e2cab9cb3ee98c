"""Checks of generate()'s inputs, run before anything is computed or streamed. Each error names
the argument and what is allowed."""

from __future__ import annotations

import operator

import torch

from ..engine.mode import is_int

Tensor = torch.Tensor

#: Ranges of the numeric generation settings: name -> (kind, low, high, low inclusive, high inclusive).
_RANGES = {
    "max_new_tokens": ("int", 1, None, True, True),
    "max_length": ("int", 1, None, True, True),
    "min_new_tokens": ("int", 0, None, True, True),
    "min_length": ("int", 0, None, True, True),
    "top_k": ("int", 0, None, True, True),
    "no_repeat_ngram_size": ("int", 0, None, True, True),
    "num_return_sequences": ("int", 1, None, True, True),
    "num_assistant_tokens": ("int", 1, None, True, True),
    "temperature": ("number", 0, None, False, True),
    "top_p": ("number", 0, 1, False, True),
    "min_p": ("number", 0, 1, True, True),
    "typical_p": ("number", 0, 1, False, True),
    "repetition_penalty": ("number", 0, None, False, True),
    "max_time": ("number", 0, None, False, True),
}


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"{type(x).__name__} {x!r}"[:80]


def check_input_ids(input_ids, vocab_size: int) -> None:
    if not isinstance(input_ids, Tensor):
        raise ValueError(
            f"input_ids: must be a LongTensor [batch, prompt_length] (tokenizer(..., return_tensors='pt')), "
            f"got {_describe(input_ids)}"
        )
    if input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int):
        raise ValueError(
            "input_ids: must be an integer tensor of shape [batch, prompt_length], "
            f"got {_describe(input_ids)}"
        )
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(
            f"input_ids: empty prompt (shape {tuple(input_ids.shape)}); need at least one token per row"
        )
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"input_ids: token id {bad} is outside the vocabulary [0, {vocab_size})")


def check_attention_mask(attention_mask, input_ids: Tensor, inferred: bool = False) -> None:
    if attention_mask is None:
        return
    if not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask: must be a tensor of input_ids' shape {tuple(input_ids.shape)}, "
            f"got {_describe(attention_mask)}"
        )
    m = attention_mask.to(torch.long)
    if ((m != 0) & (m != 1)).any():
        raise ValueError("attention_mask: values must be 0 or 1")
    if not bool(m[:, -1].all()) or bool((m[:, 1:] < m[:, :-1]).any()):
        where = " (inferred from pad_token_id)" if inferred else ""
        raise ValueError(
            f"attention_mask{where}: padding must be on the left (tokenizer padding_side='left'), "
            "with every row ending in a real token"
        )


def check_settings(settings: dict) -> None:
    """Types and ranges of the generation settings a caller gave (``eos_token_id`` and
    ``pad_token_id`` included)."""
    for name, value in settings.items():
        if value is None:
            continue
        if name in _RANGES:
            _check_range(name, value, *_RANGES[name])
        elif name == "eos_token_id":
            ids = value.tolist() if isinstance(value, Tensor) else value
            ids = [ids] if is_int(ids) else ids
            if not isinstance(ids, (list, tuple)) or not ids or not all(is_int(i) and i >= 0 for i in ids):
                raise ValueError(
                    f"eos_token_id: must be an int >= 0 or a list of them, got {_describe(value)}"
                )
        elif name == "pad_token_id" and not (is_int(value) and value >= 0):
            raise ValueError(f"pad_token_id: must be an int >= 0, got {_describe(value)}")


def _check_range(name, value, kind, low, high, low_in, high_in) -> None:
    ok_type = (
        is_int(value) if kind == "int" else isinstance(value, (int, float)) and not isinstance(value, bool)
    )
    above = low is None or (value >= low if low_in else value > low) if ok_type else False
    below = high is None or (value <= high if high_in else value < high) if ok_type else False
    if not (ok_type and above and below):
        lo = "" if low is None else (f">= {low}" if low_in else f"> {low}")
        hi = "" if high is None else (f"<= {high}" if high_in else f"< {high}")
        allowed = " and ".join(x for x in (lo, hi) if x)
        raise ValueError(
            f"{name}: must be {'an int' if kind == 'int' else 'a number'} {allowed}, got {_describe(value)}"
        )


def check_call(
    streamer, generator, seed, batch_size: int, stopping: bool, pad_token_id, eos: tuple, device
) -> None:
    """The arguments that are not generation settings."""
    if streamer is not None:
        if not (hasattr(streamer, "put") and hasattr(streamer, "end")):
            raise ValueError(
                f"streamer: must have put() and end() (a transformers streamer), got {streamer!r}"
            )
        if batch_size > 1:
            raise ValueError(
                f"streamer: supports batch size 1 only (as Hugging Face's streamers), got batch {batch_size}"
            )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator: must be a torch.Generator, got {_describe(generator)}")
    if generator is not None and generator.device.type != torch.device(device).type:
        raise ValueError(f"generator: is on {generator.device}, the model on {device}")
    if seed is not None and not (is_int(seed) and -(2**63) <= seed < 2**64):
        raise ValueError(f"seed: must be an int in [-2**63, 2**64), got {_describe(seed)}")
    if batch_size > 1 and pad_token_id is None and (eos or stopping):
        raise ValueError("pad_token_id: needed to pad batch rows that stop early; pass pad_token_id=")


#: Generation-config fields whose out-of-vocabulary ids make HF's processors raise on the first
#: step (others, like ``suppress_tokens``, HF ignores when out of range).
TOKEN_LIST_FIELDS = ("bad_words_ids",)


def _token_id(t) -> int | None:
    try:
        return operator.index(t)  # ints and NumPy / torch integer scalars, not floats or bools
    except TypeError:
        return None


def check_token_lists(generation_config, vocab_size: int) -> None:
    """Token ids in ``bad_words_ids`` and ``sequence_bias`` must lie in the vocabulary (HF finds
    out only on the first step, after the prompt has been streamed)."""
    for name in TOKEN_LIST_FIELDS:
        value = getattr(generation_config, name, None)
        if not value:
            continue
        flat = [t for item in value for t in (item if isinstance(item, (list, tuple)) else [item])]
        for t in flat:
            i = _token_id(t)
            if i is None or isinstance(t, bool) or not 0 <= i < vocab_size:
                raise ValueError(f"{name}: token id {t!r} is outside the vocabulary [0, {vocab_size})")
    bias = getattr(generation_config, "sequence_bias", None)
    if bias:
        pairs = bias.items() if isinstance(bias, dict) else [(tuple(k), v) for k, v in bias]
        for seq, _ in pairs:
            for t in seq if isinstance(seq, (list, tuple)) else [seq]:
                i = _token_id(t)
                if i is None or not 0 <= i < vocab_size:
                    raise ValueError(
                        f"sequence_bias: token id {t!r} is outside the vocabulary [0, {vocab_size})"
                    )


#: Settings eedecode cannot honour while they differ from these values (None: unset).
_UNSUPPORTED = {
    "num_beams": 1,
    "num_beam_groups": 1,
    "penalty_alpha": None,
    "constraints": None,
    "force_words_ids": None,
    "dola_layers": None,
    "use_mtp": False,
    "guidance_scale": 1.0,
    "output_attentions": False,
    "output_hidden_states": False,
    "token_healing": False,
    "prompt_lookup_num_tokens": None,
}
_REASONS = {
    "num_beams": "beam search is not a speculative decoding mode",
    "guidance_scale": "classifier-free guidance needs a second forward pass per token",
    "output_attentions": "eedecode's attention is fused (scaled_dot_product_attention)",
    "output_hidden_states": "use eedecode.study for per-layer states",
    "prompt_lookup_num_tokens": "prompt-lookup drafting is not an eedecode mode",
}


def check_unsupported(gen, chosen: dict) -> None:
    """Settings eedecode cannot honour, from the merged generation config ``gen``; ``chosen``
    says where each came from (named in the error when it is the model's generation config)."""
    for key, neutral in _UNSUPPORTED.items():
        value = getattr(gen, key, None)
        if value is None or value == neutral:
            continue
        origin = chosen.get(key, (None, "argument"))[1]
        where = "" if origin == "argument" else f" (from {origin})"
        reason = _REASONS.get(key, "not supported by eedecode")
        raise ValueError(f"{key}: eedecode.generate does not support {key}={value!r}{where}; {reason}")
