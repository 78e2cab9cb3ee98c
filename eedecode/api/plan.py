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

from ..model.packing import PACK_MODES
from ..model.threads import check_num_threads
from ..modes import all_option_fields, build_options, get_mode, option_fields
from . import validation

Tensor = torch.Tensor
DEFAULT_MODE = "adaptive"
STATIC_MODE = "self_speculative"

#: Keyword arguments of generate() that are neither GenerationConfig fields nor mode settings.
_CALL_ARGUMENTS = ("tokenizer", "logits_processor", "prefix_allowed_tokens_fn", "pack", "num_threads")
#: Hugging Face inputs eedecode refuses, and why.
_REFUSED_INPUTS = {
    "inputs_embeds": "eedecode drafts and verifies token ids; pass input_ids",
    "past_key_values": "eedecode keeps its own cache; pass the whole prompt as input_ids",
}


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
    pack: str = "copy"  # how the weights are packed for the call (eedecode.model.packing)
    num_threads: int | None = None  # CPU threads for the call (None: chosen by the model's size)


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


def _validate(options, mode: str, num_layers: int, picked_by: set | None, chosen: dict) -> None:
    """``options.validate``, its errors naming what the caller wrote: a setting given by its HF
    name is named so, and a required setting missing from a mode that other settings picked
    says which settings picked it."""
    try:
        options.validate(num_layers)
    except ValueError as err:
        message = str(err)
        for name, f in option_fields(get_mode(mode)).items():
            alias = f.metadata.get("hf_name")
            if message.startswith(f"{name}:") and alias in chosen and name not in chosen:
                raise ValueError(f"{alias} (eedecode's {name}){message[len(name) :]}") from None
            if message.startswith(f"{name}: required") and picked_by:
                given = ", ".join(sorted(picked_by))
                raise ValueError(f"{given}: selects mode={mode!r} (its setting); {message}") from None
        raise


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


def _start(model, input_ids, generation_config, kwargs: dict):
    """Inputs Hugging Face takes that eedecode refuses raise, naming why; no ``input_ids``
    starts from the BOS token, as HF does (one row)."""
    for name, why in _REFUSED_INPUTS.items():
        if kwargs.get(name) is not None:
            raise ValueError(f"{name}: not supported by eedecode.generate; {why}")
        kwargs.pop(name, None)
    if input_ids is not None:
        return input_ids
    sources = (generation_config, model.generation_config, model.config)
    bos = next((c.bos_token_id for c in sources if getattr(c, "bos_token_id", None) is not None), None)
    if bos is None:
        raise ValueError("input_ids: needed, since the model has no bos_token_id to start from")
    bos = bos[0] if isinstance(bos, (list, tuple)) else bos
    return torch.tensor([[bos]], device=model.device)


def prepare(
    model, input_ids, attention_mask, mode, generation_config, kwargs: dict, stopping_criteria
) -> Plan:
    """Validate and resolve a generate() call. ``kwargs``: generate()'s other keyword arguments.
    Reads the model's configuration and generation config; touches nothing."""
    num_layers, vocab_size = len(model.model.layers), model.config.vocab_size
    input_ids = _start(model, input_ids, generation_config, kwargs)
    engine_given = {k for k, v in kwargs.items() if v is not None and k in engine_option_names()}
    inferred = mode is None
    if mode is None:
        mode = default_mode(engine_given, kwargs, generation_config, model)
    if not isinstance(mode, str):
        raise ValueError(f"mode: must be a string, one of the registered modes, got {mode!r}")
    mode = mode.replace("-", "_")  # the command line's spelling (early-exit) is accepted too
    get_mode(mode)
    engine, hf_kwargs, call = split_kwargs(kwargs)
    if call.get("pack") is not None and call["pack"] not in PACK_MODES:
        raise ValueError(f"pack: must be one of {PACK_MODES}, got {call['pack']!r}")
    check_num_threads(call.get("num_threads"))
    if generation_config is not None and not isinstance(generation_config, GenerationConfig):
        raise ValueError(
            "generation_config: must be a transformers.GenerationConfig, "
            f"got {type(generation_config).__name__}"
        )
    validation.check_input_ids(input_ids, vocab_size)
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
    validation.check_unsupported(gen, chosen)
    options = _mode_options(mode, engine, gen, chosen)
    _validate(options, mode, num_layers, engine_given if inferred else None, chosen)
    if hasattr(options, "validate_device"):  # a mode's checks that need the model's device
        options.validate_device(next(model.parameters()).device)

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
        validation.check_token_lists(gen, vocab_size)
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
        pack=call.get("pack") if call.get("pack") is not None else "copy",
        num_threads=call.get("num_threads"),
    )
