"""Turning ``generate()``'s arguments into one validated plan, the way Hugging Face does.

Settings are merged and defaulted by transformers' own ``generate()`` preparation steps (the
model's ``generation_config``, then a ``generation_config`` argument, then keyword arguments;
HF's global defaults such as 20 new tokens, or ``top_k=50`` when sampling). The same goes for the
special tokens, the attention mask inferred from ``pad_token_id``, ``num_return_sequences``, the
length limits, the logits processors and the stopping criteria. Those steps are private methods
of ``GenerationMixin``. Calling them, instead of copying them, keeps eedecode's conventions equal
to the installed transformers. ``tests/test_hf_conventions.py`` checks the result against
``model.generate``.

The decoding mode and its settings come from the mode registry (:mod:`eedecode.modes`).
Each mode's ``Options`` fields are keyword arguments, and a field's ``hf_name``
(``assistant_early_exit``, ``num_assistant_tokens``, ...) is read from the merged generation
config. Everything is checked here, before anything runs. A setting eedecode cannot honour raises
an error that names it, also when it comes from the model's own generation config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessorList
from transformers.generation.stopping_criteria import (
    EosTokenCriteria,
    MaxLengthCriteria,
    StoppingCriteriaList,
)

from ..modes import all_option_fields, build_options, get_mode, option_fields
from . import validation

Tensor = torch.Tensor
DEFAULT_MODE = "adaptive"
STATIC_MODE = "self_speculative"

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
#: Keyword arguments of generate() that are neither GenerationConfig fields nor mode settings.
_CALL_ARGUMENTS = ("tokenizer", "logits_processor", "prefix_allowed_tokens_fn")


@dataclass(frozen=True)
class DecodingConfig:
    """The engine's settings for one generate() call."""

    mode: str = DEFAULT_MODE
    options: object = None  # the mode's Options instance
    max_new_tokens: int = 20
    do_sample: bool = False
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None


@dataclass
class Plan:
    """Everything generate() runs with, validated."""

    input_ids: Tensor  # [B * num_return_sequences, P]
    attention_mask: Tensor | None  # None when nothing is padded
    config: DecodingConfig
    processors: object  # transformers LogitsProcessorList (warpers included when sampling)
    stopping_criteria: StoppingCriteriaList  # checked on the host: user's, stop strings, max_time
    return_dict: bool
    output_scores: bool
    output_logits: bool


def options_dict(config: DecodingConfig) -> dict:
    return dataclasses.asdict(config.options) if config.options is not None else {}


def engine_option_names() -> set[str]:
    """Keyword arguments that belong to a decoding mode (every registered mode's settings)."""
    return set(all_option_fields())


@contextlib.contextmanager
def _quiet():
    """transformers' preparation logs advice meant for its own loop; eedecode raises instead."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


def default_mode(engine_given: set, kwargs: dict, generation_config, model) -> str:
    """Without ``mode=``: the adaptive mode when one of its own settings is given (``lookup``,
    ``max_drafts``, ``policy_in``, ...); else the static self-speculative mode when it was asked
    for by its settings (an int ``exit_layer`` / ``assistant_early_exit``, a draft length, a
    confidence threshold or a schedule); else the adaptive mode, which needs no settings."""
    own = set(option_fields(get_mode(STATIC_MODE)))
    adaptive = set(option_fields(get_mode(DEFAULT_MODE)))
    exit_layer = kwargs.get("exit_layer", kwargs.get("assistant_early_exit"))
    if exit_layer is None:
        for cfg in (generation_config, getattr(model, "generation_config", None)):
            if cfg is not None and getattr(cfg, "assistant_early_exit", None) is not None:
                exit_layer = cfg.assistant_early_exit
                break
    static_only = (engine_given & own) - adaptive
    if (engine_given & adaptive) - own:  # lookup=, max_drafts=, policy_in=, ...: the adaptive mode's own
        return DEFAULT_MODE
    aliases = {"num_assistant_tokens", "assistant_confidence_threshold", "num_assistant_tokens_schedule"}
    if (
        static_only
        or aliases & {k for k, v in kwargs.items() if v is not None}
        or validation.is_int(exit_layer)
    ):
        return STATIC_MODE
    return DEFAULT_MODE


def split_kwargs(kwargs: dict) -> tuple[dict, dict, dict]:
    """generate()'s keyword arguments -> (mode settings, GenerationConfig fields, call arguments).
    Anything else is a TypeError."""
    names = engine_option_names()
    engine = {k: v for k, v in kwargs.items() if k in names}
    call = {k: v for k, v in kwargs.items() if k in _CALL_ARGUMENTS}
    hf = {k: v for k, v in kwargs.items() if k not in names and k not in call}
    fields = GenerationConfig()
    unknown = sorted(k for k in hf if not hasattr(fields, k) or k.startswith("_"))
    if unknown:
        raise TypeError(f"generate() got unexpected keyword arguments {unknown}")
    for name, f in all_option_fields().items():
        alias = f.metadata.get("hf_name")
        ours, theirs = engine.get(name), hf.get(alias) if alias else None
        if ours is not None and theirs is not None and ours != theirs:
            raise ValueError(f"{name} and {alias} are aliases; they disagree ({ours!r} vs {theirs!r})")
    return engine, hf, call


def _explicit(model, generation_config, hf_kwargs: dict) -> dict:
    """Settings someone chose (not HF's global defaults), with where they came from."""
    chosen = {}
    base = getattr(model, "generation_config", None)
    for source, cfg in (("the model's generation_config", base), ("generation_config", generation_config)):
        if cfg is not None:
            chosen.update({k: (v, source) for k, v in cfg.to_dict().items() if v is not None})
    chosen.update({k: (v, "argument") for k, v in hf_kwargs.items()})
    return chosen


def _check_unsupported(gen: GenerationConfig, chosen: dict) -> None:
    for key, neutral in _UNSUPPORTED.items():
        value = getattr(gen, key, None)
        if value is None or value == neutral:
            continue
        origin = chosen.get(key, (None, "argument"))[1]
        where = "" if origin == "argument" else f" (from {origin})"
        reason = _REASONS.get(key, "not supported by eedecode")
        raise ValueError(f"{key}: eedecode.generate does not support {key}={value!r}{where}; {reason}")


def _mode_options(mode: str, engine: dict, gen: GenerationConfig, chosen: dict):
    """The mode's Options from its keyword arguments, else from their HF aliases that someone set."""
    cls = get_mode(mode)
    own = option_fields(cls)
    values = {k: v for k, v in engine.items() if k in own and v is not None}
    for name, f in own.items():
        alias = f.metadata.get("hf_name")
        if name not in values and alias in chosen and getattr(gen, alias, None) is not None:
            values[name] = getattr(gen, alias)
    foreign = {k: v for k, v in engine.items() if k not in own and v is not None}
    for name, f in all_option_fields().items():  # HF's name for another mode's setting, passed here
        alias = f.metadata.get("hf_name")
        value, source = chosen.get(alias, (None, None))
        if name not in own and alias and value is not None and source == "argument":
            allowed = ", ".join(own) or "none"
            raise ValueError(
                f"{alias}: not a setting of mode={mode!r} (HF's name for {name}; its settings: {allowed})"
            )
    return build_options(cls, {**values, **foreign})  # a foreign setting raises, naming it


def prepare(
    model, runner, input_ids, attention_mask, mode, generation_config, kwargs: dict, stopping_criteria
) -> Plan:
    """Validate and resolve a generate() call. ``kwargs``: generate()'s other keyword arguments."""
    engine_given = {k for k, v in kwargs.items() if v is not None and k in engine_option_names()}
    if mode is None:
        mode = default_mode(engine_given, kwargs, generation_config, model)
    if not isinstance(mode, str):
        raise ValueError(f"mode: must be a string, one of the registered modes, got {mode!r}")
    mode = mode.replace("-", "_")  # the command line's spelling (early-exit) is accepted too
    get_mode(mode)
    engine, hf_kwargs, call = split_kwargs(kwargs)
    if generation_config is not None and not isinstance(generation_config, GenerationConfig):
        raise ValueError(
            "generation_config: must be a transformers.GenerationConfig, "
            f"got {type(generation_config).__name__}"
        )
    validation.check_input_ids(input_ids, runner.vocab_size)
    validation.check_attention_mask(attention_mask, input_ids)
    validation.check_settings(hf_kwargs)
    if generation_config is not None:
        validation.check_settings(generation_config.to_diff_dict())
    base = model.generation_config
    has_default_max = all(c is None or c.max_length is None for c in (base, generation_config)) and (
        hf_kwargs.get("max_length") is None
    )
    has_default_min = all(c is None or c.min_length is None for c in (base, generation_config)) and (
        hf_kwargs.get("min_length") is None
    )
    chosen = _explicit(model, generation_config, hf_kwargs)
    with _quiet():
        gen, model_kwargs = model._prepare_generation_config(generation_config, **hf_kwargs)
    _check_unsupported(gen, chosen)
    options = _mode_options(mode, engine, gen, chosen)
    options.validate(runner.num_layers)

    B = input_ids.shape[0]
    with _quiet():
        model._prepare_special_tokens(gen, attention_mask is not None, device=input_ids.device, batch_size=B)
        if attention_mask is None:
            attention_mask = model._prepare_attention_mask_for_generation(input_ids, gen, {})
        validation.check_attention_mask(attention_mask, input_ids, inferred=True)
        n = gen.num_return_sequences or 1
        if n > 1:
            input_ids = input_ids.repeat_interleave(n, dim=0)
            attention_mask = attention_mask.repeat_interleave(n, dim=0)
        P = input_ids.shape[1]
        gen = model._prepare_generated_length(
            gen, has_default_max, has_default_min, "input_ids", P, input_ids
        )
        model._validate_generated_length(gen, P, has_default_max)
        validation.check_token_lists(gen, runner.vocab_size)
        for name in ("logits_processor", "stopping_criteria"):
            given = call.get(name) if name == "logits_processor" else stopping_criteria
            what = f"{name}: must be a list of {name.replace('_', ' ')} objects (callables)"
            if given is not None and not isinstance(given, (list, tuple)):
                raise ValueError(f"{what}, got {given!r}")
            bad = [item for item in given or [] if not callable(item)]
            if bad:
                raise ValueError(f"{what}, got an item {bad[0]!r}")
        processors = model._get_logits_processor(
            generation_config=gen,
            input_ids_seq_length=P,
            encoder_input_ids=input_ids,
            prefix_allowed_tokens_fn=call.get("prefix_allowed_tokens_fn"),
            logits_processor=LogitsProcessorList(call.get("logits_processor") or []),
            device=input_ids.device,
            model_kwargs={"attention_mask": attention_mask},
        )
        if not isinstance(stopping_criteria, StoppingCriteriaList):  # HF also takes a plain list
            stopping_criteria = StoppingCriteriaList(list(stopping_criteria or []))
        criteria = model._get_stopping_criteria(gen, stopping_criteria, call.get("tokenizer"))
    # Length and EOS are handled on the device, exactly as these two criteria define them.
    host_criteria = StoppingCriteriaList(
        c for c in criteria if not isinstance(c, (MaxLengthCriteria, EosTokenCriteria))
    )
    eos = gen._eos_token_tensor
    pad = gen._pad_token_tensor
    # HF's length criterion, or one the caller passed (which takes precedence in HF): a row stops
    # there, and it always emits at least one token (HF checks the length after each step)
    lengths = [c.max_length for c in criteria if isinstance(c, MaxLengthCriteria)]
    max_length = min(lengths, default=gen.max_length)
    config = DecodingConfig(
        mode=mode,
        options=options,
        max_new_tokens=max(max_length - P, 1),
        do_sample=bool(gen.do_sample),
        eos_token_id=() if eos is None else tuple(int(e) for e in eos.reshape(-1).tolist()),
        pad_token_id=None if pad is None else int(pad),
    )
    return Plan(
        input_ids=input_ids,
        attention_mask=None if bool(attention_mask.all()) else attention_mask,
        config=config,
        processors=processors,
        stopping_criteria=host_criteria,
        return_dict=bool(gen.return_dict_in_generate),
        output_scores=bool(gen.output_scores),
        output_logits=bool(gen.output_logits),
    )
