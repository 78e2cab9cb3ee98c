"""Turning ``generate()``'s arguments into one validated :class:`DecodingConfig`.

Settings come from the model's ``generation_config``, then a ``generation_config`` argument, then
keyword arguments, as Hugging Face merges them. The decoding mode and its settings come from the
strategy registry (:mod:`eedecode.strategies`): each mode's ``Options`` fields are keyword
arguments, and a field's ``hf_name`` (``assistant_early_exit``, ``num_assistant_tokens``, ...) is
read from the merged generation config.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import dataclass, field

from transformers import GenerationConfig

from .sampling import SamplingParams
from .strategies import all_option_fields, build_options, get_strategy, option_fields

DEFAULT_MODE = "self_speculative"

# GenerationConfig fields that generate() honours, and those that change nothing here.
_HONOURED = {
    "max_new_tokens",
    "max_length",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "eos_token_id",
    "pad_token_id",
    "assistant_early_exit",
    "num_assistant_tokens",
    "return_dict_in_generate",
    "assistant_confidence_threshold",
}
_IGNORED = {
    "bos_token_id",
    "decoder_start_token_id",
    "use_cache",
    "transformers_version",
    "_from_model_config",
    "num_assistant_tokens_schedule",
    "length_penalty",
    "early_stopping",
    "cache_implementation",
    "num_beams",
    "num_return_sequences",
    "repetition_penalty",
    "typical_p",
    "num_beam_groups",
    "diversity_penalty",
    "output_scores",
    "output_logits",
    "output_attentions",
    "output_hidden_states",
    "renormalize_logits",
    "remove_invalid_values",
}
# ...but only while they keep their default value:
_NEUTRAL = {
    "num_beams": 1,
    "num_return_sequences": 1,
    "repetition_penalty": 1.0,
    "typical_p": 1.0,
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
    "output_scores": False,
    "output_logits": False,
    "output_attentions": False,
    "output_hidden_states": False,
    "renormalize_logits": False,
    "remove_invalid_values": False,
}


@dataclass(frozen=True)
class DecodingConfig:
    """Resolved settings of one generate() call: the mode and its options, length, sampling and
    the special tokens."""

    mode: str = DEFAULT_MODE
    options: object = None  # the mode's Options instance
    max_new_tokens: int = 20
    sampling: SamplingParams = field(default_factory=SamplingParams)
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def validate(self, num_layers: int) -> None:
        get_strategy(self.mode)
        if self.options is not None:
            self.options.validate(num_layers)
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: must be an int >= 0, got {self.max_new_tokens!r}")
        self.sampling.validate()

    def setting(self, name: str, default=None):
        """One of the mode's settings (``exit_layer``, ...), or ``default`` if it has none."""
        return getattr(self.options, name, default)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _eos_tuple(eos) -> tuple[int, ...]:
    if eos is None:
        return ()
    if hasattr(eos, "tolist"):
        eos = eos.tolist()
    eos = [eos] if _is_int(eos) else list(eos)
    if not all(_is_int(e) for e in eos):
        raise ValueError(f"eos_token_id: must be an int or a list of ints, got {eos!r}")
    return tuple(eos)


def _merged_generation_config(model, generation_config, overrides: dict) -> tuple[GenerationConfig, set]:
    """Model defaults <- generation_config argument <- keyword arguments, as HF merges them.
    Returns the merged config and the names the caller set."""
    base = getattr(model, "generation_config", None)
    merged = copy.deepcopy(base) if base is not None else GenerationConfig()
    user_set = set()
    if generation_config is not None:
        if not isinstance(generation_config, GenerationConfig):
            raise ValueError(
                f"generation_config: must be a transformers.GenerationConfig, got {type(generation_config)}"
            )
        diff = generation_config.to_diff_dict()
        for key, value in diff.items():
            setattr(merged, key, value)
        user_set |= set(diff)
    for key, value in overrides.items():
        setattr(merged, key, value)
        user_set.add(key)
    return merged, user_set


def _check_unsupported(merged: GenerationConfig, user_set: set) -> None:
    defaults = GenerationConfig().to_dict()
    for key, value in merged.to_dict().items():
        if key in _HONOURED or value == defaults.get(key, value):
            continue
        if key in _IGNORED and (key not in _NEUTRAL or value == _NEUTRAL[key]):
            continue
        message = f"eedecode.generate does not support {key}={value!r}"
        if key in user_set:
            raise ValueError(message)
        warnings.warn(f"{message} (from the model's generation_config); ignoring it", stacklevel=4)


def engine_option_names() -> set[str]:
    """Keyword arguments that belong to a decoding mode (every registered mode's settings)."""
    return set(all_option_fields())


def _mode_options(mode: str, engine: dict, merged: GenerationConfig, user_set: set):
    """The mode's Options from its keyword arguments, else from their HF aliases in the merged
    generation config (set by the caller, or differing from HF's default)."""
    cls = get_strategy(mode)
    foreign = {k: v for k, v in engine.items() if k not in option_fields(cls)}
    values = {k: v for k, v in engine.items() if k in option_fields(cls)}
    hf_defaults = GenerationConfig()
    for name, f in option_fields(cls).items():
        hf = f.metadata.get("hf_name")
        if name in values or hf is None:
            continue
        value = getattr(merged, hf, None)
        if value is not None and (hf in user_set or value != getattr(hf_defaults, hf, None)):
            values[name] = value
    if foreign:
        build_options(cls, {**values, **foreign})  # raises, naming the foreign setting
    return build_options(cls, values)


def resolve_config(
    model, num_prompt_tokens: int, generation_config=None, **kwargs
) -> tuple[DecodingConfig, bool]:
    """Turn generate()'s arguments into a :class:`DecodingConfig`; also return
    ``return_dict_in_generate``."""
    mode = kwargs.pop("mode", None) or DEFAULT_MODE
    get_strategy(mode)
    names = engine_option_names()
    engine = {k: kwargs.pop(k) for k in list(kwargs) if k in names and kwargs[k] is not None}
    for k in names & set(kwargs):
        kwargs.pop(k)
    overrides = {k: v for k, v in kwargs.items() if v is not None}
    merged, user_set = _merged_generation_config(model, generation_config, overrides)
    _check_unsupported(merged, user_set)

    if "max_new_tokens" in user_set or merged.max_new_tokens is not None:
        max_new = merged.max_new_tokens
    else:  # HF: max_length counts the prompt
        max_new = max((merged.max_length or 20) - num_prompt_tokens, 0)
    eos = _eos_tuple(merged.eos_token_id)
    pad = merged.pad_token_id
    if pad is None and eos:
        pad = eos[0]
    config = DecodingConfig(
        mode=mode,
        options=_mode_options(mode, engine, merged, user_set),
        max_new_tokens=max_new,
        sampling=SamplingParams(
            do_sample=bool(merged.do_sample),
            temperature=merged.temperature if merged.temperature is not None else 1.0,
            top_k=merged.top_k,
            top_p=merged.top_p,
        ),
        eos_token_id=eos,
        pad_token_id=pad,
    )
    return config, bool(merged.return_dict_in_generate)


def options_dict(config: DecodingConfig) -> dict:
    return dataclasses.asdict(config.options) if config.options is not None else {}
