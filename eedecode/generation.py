"""``eedecode.generate``: a drop-in for Hugging Face ``model.generate`` with self-speculative decoding.

Arguments and behaviour follow HF ``generate()``: settings come from the model's
``generation_config``, then a ``generation_config`` argument, then keyword arguments; the result is
``[batch, prompt + new]`` token ids (rows that stop early are padded with ``pad_token_id``); EOS,
``max_new_tokens`` and ``stopping_criteria`` end a row exactly where HF's greedy loop ends it;
``streamer`` receives the prompt, then the new tokens as they are accepted, then ``end()``.
HF's names for this feature, ``assistant_early_exit`` and ``num_assistant_tokens``, are aliases of
``exit_layer`` and ``num_speculations``.

Every argument is checked before anything runs: a bad one raises with the argument's name and
the allowed values, and nothing reaches the streamer.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field, replace

import torch
from transformers import GenerationConfig

from .decoding import AutoregressiveDecoder, DecodeStats, SelfSpeculativeDecoder, TokenChooser
from .runner import ModelRunner, check_supported
from .sampling import SamplingParams

Tensor = torch.Tensor

MODES = ("self_speculative", "autoregressive")

# GenerationConfig fields that generate() honours, and those that change nothing here.
_HONOURED = {
    "max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p", "eos_token_id",
    "pad_token_id", "assistant_early_exit", "num_assistant_tokens", "return_dict_in_generate",
    "assistant_confidence_threshold",
}  # fmt: skip
_IGNORED = {
    "bos_token_id", "decoder_start_token_id", "use_cache", "transformers_version", "_from_model_config",
    "num_assistant_tokens_schedule", "length_penalty",
    "early_stopping", "cache_implementation", "num_beams", "num_return_sequences", "repetition_penalty",
    "typical_p", "num_beam_groups", "diversity_penalty", "output_scores", "output_logits",
    "output_attentions", "output_hidden_states", "renormalize_logits", "remove_invalid_values",
}  # fmt: skip
# ...but only while they keep their default value:
_NEUTRAL = {
    "num_beams": 1, "num_return_sequences": 1, "repetition_penalty": 1.0, "typical_p": 1.0,
    "num_beam_groups": 1, "diversity_penalty": 0.0, "output_scores": False, "output_logits": False,
    "output_attentions": False, "output_hidden_states": False, "renormalize_logits": False,
    "remove_invalid_values": False,
}  # fmt: skip


@dataclass(frozen=True)
class DecodingConfig:
    """Resolved settings of one generate() call (the CLI builds one too)."""

    mode: str = "self_speculative"
    exit_layer: int | None = None
    num_speculations: int = 4
    max_new_tokens: int = 20
    sampling: SamplingParams = field(default_factory=SamplingParams)
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None
    draft_confidence_threshold: float | None = None

    def validate(self, num_layers: int) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: must be one of {MODES}, got {self.mode!r}")
        if self.mode == "self_speculative":
            if self.exit_layer is None:
                raise ValueError(
                    f"exit_layer: required for mode='self_speculative' (an int in 1..{num_layers - 1}); "
                    "pass exit_layer= (or assistant_early_exit=), or mode='autoregressive'"
                )
            if not _is_int(self.exit_layer) or not 1 <= self.exit_layer <= num_layers - 1:
                raise ValueError(
                    f"exit_layer: must be an int in 1..{num_layers - 1} for a model of {num_layers} "
                    f"layers, got {self.exit_layer!r}"
                )
            if not _is_int(self.num_speculations) or self.num_speculations < 1:
                raise ValueError(f"num_speculations: must be an int >= 1, got {self.num_speculations!r}")
            t = self.draft_confidence_threshold
            if t is not None and not (isinstance(t, (int, float)) and 0.0 <= t <= 1.0):
                raise ValueError(f"draft_confidence_threshold: must be a float in [0, 1] or None, got {t!r}")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: must be an int >= 0, got {self.max_new_tokens!r}")
        self.sampling.validate()


@dataclass
class GenerationStats:
    """What a generate() call did. Rates are per row-round (one round of one batch row)."""

    mode: str
    exit_layer: int | None
    num_speculations: int | None
    rounds: int
    drafted_tokens: int
    accepted_tokens: int
    new_tokens: int  # tokens returned, all rows
    accepted_length_histogram: list[int]  # [a]: row-rounds in which exactly a drafts were accepted
    wall_time_s: float
    prefill_time_s: float
    row_rounds: int

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def mean_tokens_per_round(self) -> float:
        """Tokens produced per row-round: accepted drafts plus the correction or bonus token."""
        return (self.accepted_tokens + self.row_rounds) / self.row_rounds if self.row_rounds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    def summary(self) -> str:
        head = (
            f"{self.new_tokens} new tokens in {self.wall_time_s:.3f} s ({self.tokens_per_second:.1f} tok/s)"
        )
        if self.mode == "autoregressive":
            return f"{head}; autoregressive, {self.rounds} steps"
        return (
            f"{head}; self-speculative E={self.exit_layer} k={self.num_speculations}: {self.rounds} rounds, "
            f"acceptance {self.acceptance_rate:.1%}, {self.mean_tokens_per_round:.2f} tokens/round, "
            f"accepted-length histogram {self.accepted_length_histogram}"
        )


@dataclass
class GenerateOutput:
    """Returned when ``return_dict_in_generate=True``."""

    sequences: Tensor  # [B, prompt + new]
    stats: GenerationStats


# -- argument resolution ---------------------------------------------------------------------------
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _eos_tuple(eos) -> tuple[int, ...]:
    if eos is None:
        return ()
    if isinstance(eos, Tensor):
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
        warnings.warn(f"{message} (from the model's generation_config); ignoring it", stacklevel=3)


def resolve_config(
    model, num_prompt_tokens: int, generation_config=None, **kwargs
) -> tuple[DecodingConfig, bool]:
    """Turn generate()'s arguments into a :class:`DecodingConfig`; also return
    ``return_dict_in_generate``."""
    engine_keys = ("mode", "exit_layer", "num_speculations", "draft_confidence_threshold")
    engine = {k: kwargs.pop(k) for k in engine_keys if k in kwargs}
    overrides = {k: v for k, v in kwargs.items() if v is not None}
    merged, user_set = _merged_generation_config(model, generation_config, overrides)
    _check_unsupported(merged, user_set)

    exit_layer = engine.get("exit_layer")
    if exit_layer is None:
        exit_layer = merged.assistant_early_exit
    num_spec = engine.get("num_speculations")
    if num_spec is None:
        num_spec = merged.num_assistant_tokens if "num_assistant_tokens" in user_set else 4
    if "max_new_tokens" in user_set or merged.max_new_tokens is not None:
        max_new = merged.max_new_tokens
    else:  # HF: max_length counts the prompt
        max_new = max((merged.max_length or 20) - num_prompt_tokens, 0)
    threshold = engine.get("draft_confidence_threshold")
    if threshold is None and "assistant_confidence_threshold" in user_set:
        threshold = merged.assistant_confidence_threshold
    eos = _eos_tuple(merged.eos_token_id)
    pad = merged.pad_token_id
    if pad is None and eos:
        pad = eos[0]
    config = DecodingConfig(
        mode=engine.get("mode") or "self_speculative",
        exit_layer=exit_layer,
        num_speculations=num_spec,
        max_new_tokens=max_new,
        sampling=SamplingParams(
            do_sample=bool(merged.do_sample),
            temperature=merged.temperature if merged.temperature is not None else 1.0,
            top_k=merged.top_k,
            top_p=merged.top_p,
        ),
        eos_token_id=eos,
        pad_token_id=pad,
        draft_confidence_threshold=threshold,
    )
    if config.mode == "autoregressive":
        config = replace(config, exit_layer=None, num_speculations=None, draft_confidence_threshold=None)
    return config, bool(merged.return_dict_in_generate)


def _check_inputs(
    runner: ModelRunner, input_ids, attention_mask, config: DecodingConfig, streamer, stopping_criteria
):
    if (
        not isinstance(input_ids, Tensor)
        or input_ids.dim() != 2
        or input_ids.dtype not in (torch.long, torch.int)
    ):
        raise ValueError("input_ids: must be an integer tensor of shape [batch, prompt_length]")
    B, P = input_ids.shape
    if B == 0 or P == 0:
        raise ValueError(
            f"input_ids: empty prompt (shape {tuple(input_ids.shape)}); need at least one token per row"
        )
    if attention_mask is not None:
        if not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
            shape = (
                tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask)
            )
            raise ValueError(
                f"attention_mask: shape {shape} does not match input_ids {tuple(input_ids.shape)}"
            )
        m = attention_mask.to(torch.long)
        if ((m != 0) & (m != 1)).any():
            raise ValueError("attention_mask: values must be 0 or 1")
        if not bool(m[:, -1].all()) or bool((m[:, 1:] < m[:, :-1]).any()):
            raise ValueError(
                "attention_mask: padding must be on the left (tokenizer padding_side='left'), "
                "with every row ending in a real token"
            )
    if runner.max_positions is not None and P + config.max_new_tokens > runner.max_positions:
        raise ValueError(
            f"max_new_tokens: prompt ({P}) + max_new_tokens ({config.max_new_tokens}) = "
            f"{P + config.max_new_tokens} exceeds the model's max_position_embeddings "
            f"({runner.max_positions})"
        )
    if streamer is not None and B > 1:
        raise ValueError(f"streamer: supports batch size 1 only (as Hugging Face's streamers), got batch {B}")
    if B > 1 and config.pad_token_id is None and (config.eos_token_id or stopping_criteria):
        raise ValueError("pad_token_id: needed to pad batch rows that stop early; pass pad_token_id=")


# -- the loop --------------------------------------------------------------------------------------
@torch.no_grad()
def generate(
    model,
    input_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    *,
    exit_layer: int | None = None,
    num_speculations: int | None = None,
    max_new_tokens: int | None = None,
    mode: str | None = None,
    generation_config: GenerationConfig | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    stopping_criteria=None,
    streamer=None,
    return_dict_in_generate: bool | None = None,
    assistant_early_exit: int | None = None,
    num_assistant_tokens: int | None = None,
    draft_confidence_threshold: float | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    **kwargs,
):
    """Generate like ``model.generate(input_ids, attention_mask, ...)``, drafting with the model's
    own first ``exit_layer`` layers and verifying ``num_speculations`` drafts per round.

    Returns a LongTensor ``[batch, prompt + new]``, or a :class:`GenerateOutput` with
    ``.sequences`` and ``.stats`` when ``return_dict_in_generate=True``. ``mode='autoregressive'``
    runs the plain one-token-per-step baseline on the same engine. ``draft_confidence_threshold``
    (alias: HF's ``assistant_confidence_threshold``) ends a round's drafting early once no row's
    draft is at least that likely; it costs one host synchronisation per draft step. Sampling draws from
    ``generator`` (or a generator seeded with ``seed``, or torch's global generator).
    """
    check_supported(model)
    unknown = [k for k in kwargs if not hasattr(GenerationConfig(), k)]
    if unknown:
        raise TypeError(f"generate() got unexpected keyword arguments {unknown}")
    if exit_layer is not None and assistant_early_exit is not None and exit_layer != assistant_early_exit:
        raise ValueError("exit_layer and assistant_early_exit are aliases; they disagree")
    if (
        num_speculations is not None
        and num_assistant_tokens is not None
        and num_speculations != num_assistant_tokens
    ):
        raise ValueError("num_speculations and num_assistant_tokens are aliases; they disagree")
    runner = ModelRunner(model)
    prompt_len = input_ids.shape[-1] if isinstance(input_ids, Tensor) and input_ids.dim() > 0 else 0
    config, return_dict = resolve_config(
        model,
        prompt_len,
        generation_config,
        mode=mode,
        exit_layer=exit_layer if exit_layer is not None else assistant_early_exit,
        num_speculations=num_speculations if num_speculations is not None else num_assistant_tokens,
        draft_confidence_threshold=draft_confidence_threshold,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        return_dict_in_generate=return_dict_in_generate,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        **kwargs,
    )
    config.validate(runner.num_layers)
    _check_inputs(runner, input_ids, attention_mask, config, streamer, stopping_criteria)
    if generator is None and seed is not None:
        generator = torch.Generator(device=runner.device).manual_seed(seed)
    sequences, stats = run(runner, input_ids, attention_mask, config, streamer, stopping_criteria, generator)
    return GenerateOutput(sequences, stats) if return_dict else sequences


def run(runner, input_ids, attention_mask, config: DecodingConfig, streamer=None, stopping_criteria=None,
        generator=None):  # fmt: skip
    """The validated generation loop; returns ``(sequences, GenerationStats)``."""
    t0 = time.perf_counter()
    chooser = TokenChooser(config.sampling, generator)
    common = (runner, chooser, input_ids, config.max_new_tokens, config.eos_token_id)
    if config.mode == "autoregressive":
        decoder, k = AutoregressiveDecoder(*common), 0
    else:
        k = config.num_speculations
        decoder = SelfSpeculativeDecoder(*common, exit_layer=config.exit_layer, num_speculations=k,
                                         confidence_threshold=config.draft_confidence_threshold)  # fmt: skip
    # Tokens come back to the host only for a streamer or user stopping criteria.
    want_tokens = streamer is not None or bool(stopping_criteria)
    stopper = _CriteriaStopper(input_ids, stopping_criteria) if stopping_criteria else None
    if streamer is not None:
        streamer.put(input_ids.cpu())
    if config.max_new_tokens > 0:
        view = decoder.prefill(input_ids, attention_mask, want_tokens)
        while True:
            if stopper is not None:
                view = stopper.apply(decoder, view)
            if streamer is not None and view.kept[0]:
                streamer.put(torch.tensor(view.kept[0]))
            if not view.running:
                break
            view = decoder.step(min(k, view.max_remaining - 1), want_tokens)
    if streamer is not None:
        streamer.end()
    sequences = decoder.sequences(input_ids, config.pad_token_id)
    return sequences, _public_stats(config, decoder.stats(), int(decoder.out_len.sum()), t0)


class _CriteriaStopper:
    """User stopping criteria, evaluated after every new token of every row as HF's greedy loop
    does (host side: this path alone loops over rows)."""

    def __init__(self, input_ids: Tensor, criteria):
        self.prompt = input_ids
        self.criteria = criteria
        self.tokens: list[list[int]] = [[] for _ in range(input_ids.shape[0])]

    def apply(self, decoder, view):
        kept = view.kept
        for b, new in enumerate(kept):
            for j, t in enumerate(new):
                self.tokens[b].append(t)
                ids = torch.cat([self.prompt[b], self.prompt.new_tensor(self.tokens[b])])[None]
                if bool(torch.as_tensor(self.criteria(ids, None)).any()):
                    kept[b] = new[: j + 1]
                    view = decoder.truncate(b, len(self.tokens[b]))
                    break
        view.kept = kept
        return view


def _public_stats(config: DecodingConfig, s: DecodeStats, new_tokens: int, t0: float) -> GenerationStats:
    return GenerationStats(
        mode=config.mode,
        exit_layer=config.exit_layer,
        num_speculations=config.num_speculations,
        rounds=s.rounds,
        drafted_tokens=s.drafted_tokens,
        accepted_tokens=s.accepted_tokens,
        new_tokens=new_tokens,
        accepted_length_histogram=list(s.accepted_length_histogram),
        wall_time_s=time.perf_counter() - t0,
        prefill_time_s=s.prefill_time_s,
        row_rounds=s.row_rounds,
    )
