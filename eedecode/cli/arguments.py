"""Command-line arguments shared by every subcommand: the model to load, and the decoding mode
with its settings (built from the mode registry: every mode's ``Options`` fields are flags)."""

from __future__ import annotations

import argparse

from ..api.plan import DEFAULT_MODE, STATIC_MODE, default_mode
from ..engine.mode import setting_type
from ..model.loading import add_model_arguments, set_threads  # noqa: F401 (re-exported)
from ..modes import all_option_fields, get_mode, mode_names, option_fields


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {value}")
    return value


def add_mode_arguments(p: argparse.ArgumentParser) -> None:
    """``--mode`` and every registered mode's settings as flags (default: unset)."""
    modes = mode_names()
    p.add_argument(
        "--mode",
        default=None,
        type=lambda text: text.replace("-", "_"),  # early-exit or early_exit
        choices=modes,
        help=f"decoding mode (default {DEFAULT_MODE})",
    )
    for name, f in all_option_fields().items():
        if f.metadata.get("cli", True):
            p.add_argument(
                "--" + name.replace("_", "-"), type=setting_type(name), default=None, help=_help(name)
            )


def _help(name: str) -> str:
    """An option's help and the modes that have it (each mode's own words where they differ)."""
    helps = {}
    for mode in mode_names():
        fields = option_fields(get_mode(mode))
        if name in fields:
            helps[mode] = fields[name].metadata.get("help", "")
    if len(set(helps.values())) == 1:
        return f"{next(iter(helps.values()))} [{', '.join(helps)}]"
    return "; ".join(f"[{mode}] {text}" for mode, text in helps.items())


def add_decoding_arguments(p: argparse.ArgumentParser) -> None:
    add_mode_arguments(p)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--do-sample", action="store_true")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)


def mode_options(args, settings: dict) -> tuple[str, dict]:
    """The mode and its settings: the flags given on the command line. The mode is ``--mode``, or
    else what generate() would pick from those flags (:func:`eedecode.api.plan.default_mode`). For
    the static self-speculative mode, settings not given come from the checkpoint's
    recommendation (``eedecode.json``). A flag of another mode is an error (raised by generate)."""
    out = {name: getattr(args, name) for name in all_option_fields() if getattr(args, name, None) is not None}
    mode = args.mode or default_mode(set(out), out, None, None)
    if mode == STATIC_MODE:
        for name in option_fields(get_mode(mode)):
            if name not in out and settings.get(name) is not None:
                out[name] = settings[name]
    return mode, out


def decoding_kwargs(args, settings: dict) -> dict:
    mode, options = mode_options(args, settings)
    kw = dict(mode=mode, max_new_tokens=args.max_new_tokens, seed=args.seed, do_sample=args.do_sample)
    for name in ("temperature", "top_k", "top_p"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    return {**kw, **options}
