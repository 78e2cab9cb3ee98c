"""The mode seam: what every mode implements, and the one registry that
``generate()``, the command line and the benchmark read.

A mode is one small object. Per round it drafts (or not), verifies or accepts, and says
what it leaves in the cache; :class:`~eedecode.engine.decoder.Decoder` owns everything else — the cache,
each row's pending token, EOS and ``max_new_tokens``, the output buffer, the one host
synchronisation per round — and calls the mode once per round::

    round = mode.round(decoder, max_tokens)   # tokens [B, m], counts [B] (device tensors)
    view = decoder.emit(round)                     # EOS / length cut, one host sync
    mode.observe(round, view)                  # feedback for adaptive policies

Its settings are a frozen dataclass (``Options``): its fields are ``generate()``'s keyword
arguments for the mode and the command line's flags. Registering a class makes it reachable
from all three by its ``name``::

    @register
    class MyMode(Mode):
        name, short = "my_mode", "mm"
        Options = MyOptions
        def round(self, state, max_tokens): ...
"""

from __future__ import annotations

import argparse
import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..model.runner import ModelRunner
from .state import DecodingState

Tensor = torch.Tensor


@dataclass
class Round:
    """What one round produced, on the device: row ``b`` emits ``tokens[b, :counts[b]]``."""

    tokens: Tensor  # [B, m]
    counts: Tensor  # [B], 1..m
    drafted: Tensor | int = 0  # drafts made for running rows (statistics)


@dataclass
class RoundView:
    """What the host learns from a round's one synchronisation."""

    running: bool  # some row goes on
    max_remaining: int  # new tokens the furthest-behind running row may still emit
    kept: list[list[int]] | None = None  # tokens each row emitted this round (when asked for)
    cache_lengths: tuple[int, int] | None = None  # (max, min) row cache length, when the cache rolls back
    counts: list[int] | None = (
        None  # tokens each row's round produced, before EOS/length cuts (when asked for)
    )


@dataclass(frozen=True)
class NoOptions:
    """A mode without settings."""

    def validate(self, num_layers: int) -> None:
        pass


def is_int(x) -> bool:
    """An int, and not a bool (a setting's type check)."""
    return isinstance(x, int) and not isinstance(x, bool)


def option(default, help: str, hf_name: str | None = None, cli: bool = True):
    """A field of a mode's ``Options``: ``help`` for ``--help``; ``hf_name`` the Hugging Face
    ``GenerationConfig`` field that is an alias of it (taken from the generation config)."""
    return dataclasses.field(default=default, metadata={"help": help, "hf_name": hf_name, "cli": cli})


class Mode(ABC):
    """One decoding mode. Subclasses set the class attributes and implement :meth:`round`."""

    name: ClassVar[str]  # generate(mode=...), --mode
    short: ClassVar[str]  # the benchmark's method name is "eedecode_<short>"
    description: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    #: The round may leave rejected tokens in the cache: the decoder then moves every layer back
    #: to each row's accepted length after the round (a length move, no copy).
    rolls_back: ClassVar[bool] = True
    #: Output equals the autoregressive mode's (greedy: token for token; sampling: in distribution).
    lossless: ClassVar[bool] = True
    #: :meth:`observe` needs each row's count of produced tokens on the host (``view.counts``).
    observes_counts: ClassVar[bool] = False
    #: The settings a benchmark's speculation flags (exit layer, draft length, ...) may set for this
    #: mode; None: every setting it has. A mode that tunes itself lists none.
    benchmark_settings: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, options, runner: ModelRunner):
        self.options = options
        self.runner = runner

    @property
    def max_drafts(self) -> int:
        """The most tokens a round may emit, minus one (sizes the cache and output buffer)."""
        return 0

    def prefill(self, state: DecodingState, input_ids: Tensor) -> Tensor:
        """Write the prompt ``[B, P]`` to every layer of ``state.cache``; return the last state
        ``[B, H]`` (a mode may look at the layers on the way, as the adaptive one does)."""
        return self.runner.prefill(input_ids, state.cache)

    @abstractmethod
    def round(self, state: DecodingState, max_tokens: int) -> Round:
        """Run one round for the rows of ``state``; emit at most ``max_tokens`` tokens per row
        (the decoder cuts at EOS and at each row's own limit)."""

    def observe(self, rnd: Round, view: RoundView) -> None:  # noqa: B027 (optional hook)
        """Called after each round, once the host knows its outcome (adaptive policies learn here)."""

    def finish(self) -> None:  # noqa: B027 (optional hook)
        """Called once after the last round (a policy may save itself here)."""

    def speedup_over_plain(self, stats, decode_rate: float) -> tuple[float, str] | None:
        """This call's rounds against plain decoding on this model, and how that was had (words),
        or None. ``stats``: the call's :class:`~eedecode.engine.decoder.DecodeStats`;
        ``decode_rate``: its tokens per second after the prefill."""
        return None

    def report(self) -> dict:
        """Mode-specific statistics for :class:`~eedecode.api.generation.GenerationStats` ``details``."""
        return {}

    def describe(self) -> str:
        """One line for the statistics summary."""
        fields = dataclasses.asdict(self.options)
        settings = ", ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return f"{self.name}" + (f" ({settings})" if settings else "")


# -- the registry ----------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Mode]] = {}


def register(cls: type[Mode]) -> type[Mode]:
    """Make a mode reachable by its name from ``generate(mode=...)``, the CLI and the benchmark."""
    for attr in ("name", "short"):
        if not isinstance(getattr(cls, attr, None), str):
            raise TypeError(f"{cls.__name__}: a mode needs a class attribute {attr!r} (a str)")
    if not (dataclasses.is_dataclass(cls.Options) and cls.Options.__dataclass_params__.frozen):
        raise TypeError(f"{cls.__name__}.Options must be a frozen dataclass")
    clash = [s for s in _REGISTRY.values() if s.short == cls.short and s.name != cls.name]
    if clash:
        raise ValueError(f"mode short name {cls.short!r} is taken by {clash[0].name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def mode_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_mode(name: str) -> type[Mode]:
    if name not in _REGISTRY:
        raise ValueError(f"mode: must be one of {mode_names()}, got {name!r}")
    return _REGISTRY[name]


def option_fields(cls: type[Mode]) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls.Options)}


def all_option_fields() -> dict[str, dataclasses.Field]:
    """Every registered mode's option fields by name (a name two modes share is one field)."""
    out: dict[str, dataclasses.Field] = {}
    for cls in _REGISTRY.values():
        for name, f in option_fields(cls).items():
            out.setdefault(name, f)
    return out


def build_options(cls: type[Mode], values: dict[str, Any]):
    """``cls.Options(**values)``; a value for a setting the mode does not have is an error."""
    fields = option_fields(cls)
    foreign = sorted(set(values) - set(fields))
    if foreign:
        allowed = ", ".join(fields) or "none"
        owners = [name for name, other in _REGISTRY.items() if foreign[0] in option_fields(other)]
        where = f"; it is a setting of mode={' or mode='.join(map(repr, owners))}" if owners else ""
        raise ValueError(f"{foreign[0]}: not a setting of mode={cls.name!r} (its settings: {allowed}){where}")
    return cls.Options(**values)


# -- settings given as text ---------------------------------------------------------------------
def _kinds(name: str) -> set[str]:
    """The types a setting has across the registered modes (``int | None`` -> {"int"})."""
    kinds = set()
    for mode in mode_names():
        f = option_fields(get_mode(mode)).get(name)
        if f is not None:
            kinds |= set(str(f.type).replace(" ", "").split("|")) - {"None"}
    return kinds


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def setting_type(name: str):
    """How to read a mode setting given as text (a command-line flag, a benchmark variant's
    ``@NAME=VALUE``), from its annotations: ints stay ints, and a setting that is an int in one
    mode and a word in another (``--exit-layer 3`` / ``auto``) takes either."""
    kinds = _kinds(name)
    if kinds == {"bool"}:
        return _bool
    if "str" in kinds and ("int" in kinds or "float" in kinds):
        number = float if "float" in kinds else int

        def number_or_word(text: str):
            try:
                return number(text)
            except ValueError:
                return text

        return number_or_word
    for kind, typ in (("int", int), ("float", float)):
        if kind in kinds:
            return typ
    return str
