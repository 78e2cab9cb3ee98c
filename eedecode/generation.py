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

import time
from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from .config import DecodingConfig, engine_option_names, options_dict, resolve_config
from .decoding import Decoder, DecodeStats, TokenChooser
from .runner import ModelRunner, check_supported
from .strategies import all_option_fields, get_strategy

Tensor = torch.Tensor


@dataclass
class GenerationStats:
    """What a generate() call did. Rates are per row-round (one round of one batch row)."""

    mode: str
    options: dict  # the mode's settings
    description: str  # the mode and its settings, in words
    rounds: int
    drafted_tokens: int
    accepted_tokens: int
    new_tokens: int  # tokens returned, all rows
    accepted_length_histogram: list[int]  # [a]: row-rounds in which exactly a drafts were accepted
    wall_time_s: float
    prefill_time_s: float
    row_rounds: int

    @property
    def exit_layer(self) -> int | None:
        return self.options.get("exit_layer")

    @property
    def num_speculations(self) -> int | None:
        return self.options.get("num_speculations")

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
        if not self.drafted_tokens:
            return f"{head}; {self.description}, {self.rounds} steps"
        return (
            f"{head}; {self.description}: {self.rounds} rounds, "
            f"acceptance {self.acceptance_rate:.1%}, {self.mean_tokens_per_round:.2f} tokens/round, "
            f"accepted-length histogram {self.accepted_length_histogram}"
        )


@dataclass
class GenerateOutput:
    """Returned when ``return_dict_in_generate=True``."""

    sequences: Tensor  # [B, prompt + new]
    stats: GenerationStats


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
    mode: str | None = None,
    generation_config: GenerationConfig | None = None,
    stopping_criteria=None,
    streamer=None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    **kwargs,
):
    """Generate like ``model.generate(input_ids, attention_mask, ...)`` with a decoding ``mode``
    (default ``self_speculative``: draft with the model's own first ``exit_layer`` layers, verify
    ``num_speculations`` drafts per round with the rest).

    Keyword arguments are Hugging Face ``GenerationConfig`` fields (``max_new_tokens``,
    ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``eos_token_id``, ``pad_token_id``,
    ``return_dict_in_generate``, ...) and the mode's own settings (``exit_layer``,
    ``num_speculations``, ``draft_confidence_threshold`` for ``self_speculative``; HF's
    ``assistant_early_exit``, ``num_assistant_tokens`` and ``assistant_confidence_threshold`` are
    aliases). Returns a LongTensor ``[batch, prompt + new]``, or a :class:`GenerateOutput` with
    ``.sequences`` and ``.stats`` when ``return_dict_in_generate=True``. Sampling draws from
    ``generator`` (or a generator seeded with ``seed``, or torch's global generator).
    """
    check_supported(model)
    _check_kwargs(kwargs)
    runner = ModelRunner(model)
    prompt_len = input_ids.shape[-1] if isinstance(input_ids, Tensor) and input_ids.dim() > 0 else 0
    config, return_dict = resolve_config(model, prompt_len, generation_config, mode=mode, **kwargs)
    config.validate(runner.num_layers)
    _check_inputs(runner, input_ids, attention_mask, config, streamer, stopping_criteria)
    if generator is None and seed is not None:
        generator = torch.Generator(device=runner.device).manual_seed(seed)
    sequences, stats = run(runner, input_ids, attention_mask, config, streamer, stopping_criteria, generator)
    return GenerateOutput(sequences, stats) if return_dict else sequences


def _check_kwargs(kwargs: dict) -> None:
    """Unknown keyword arguments, and a mode setting that disagrees with its HF alias."""
    hf_fields = GenerationConfig()
    unknown = [k for k in kwargs if k not in engine_option_names() and not hasattr(hf_fields, k)]
    if unknown:
        raise TypeError(f"generate() got unexpected keyword arguments {unknown}")
    for name, f in all_option_fields().items():
        hf = f.metadata.get("hf_name")
        ours, theirs = kwargs.get(name), kwargs.get(hf) if hf else None
        if ours is not None and theirs is not None and ours != theirs:
            raise ValueError(f"{name} and {hf} are aliases; they disagree ({ours!r} vs {theirs!r})")


def run(
    runner,
    input_ids,
    attention_mask,
    config: DecodingConfig,
    streamer=None,
    stopping_criteria=None,
    generator=None,
):
    """The validated generation loop; returns ``(sequences, GenerationStats)``."""
    t0 = time.perf_counter()
    chooser = TokenChooser(config.sampling, generator)
    strategy = get_strategy(config.mode)(config.options, runner)
    decoder = Decoder(runner, chooser, strategy, input_ids, config.max_new_tokens, config.eos_token_id)
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
            view = decoder.step(view.max_remaining, want_tokens)
    if streamer is not None:
        streamer.end()
    sequences = decoder.sequences(input_ids, config.pad_token_id)
    stats = _public_stats(config, strategy, decoder.stats(), int(decoder.out_len.sum()), t0)
    return sequences, stats


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


def _public_stats(config: DecodingConfig, strategy, s: DecodeStats, new_tokens: int, t0: float):
    return GenerationStats(
        mode=config.mode,
        options=options_dict(config),
        description=strategy.describe(),
        rounds=s.rounds,
        drafted_tokens=s.drafted_tokens,
        accepted_tokens=s.accepted_tokens,
        new_tokens=new_tokens,
        accepted_length_histogram=list(s.accepted_length_histogram),
        wall_time_s=time.perf_counter() - t0,
        prefill_time_s=s.prefill_time_s,
        row_rounds=s.row_rounds,
    )
