"""Command-line arguments shared by every subcommand: the model to load, and the decoding mode
with its settings (built from the strategy registry: every mode's ``Options`` fields are flags)."""

from __future__ import annotations

import argparse

from .config import DEFAULT_MODE
from .loading import DEVICES, DTYPES
from .strategies import all_option_fields, get_strategy, option_fields, strategy_names


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="checkpoint folder, .gguf file, demo (default), demo-plain, smollm2 or synthetic:<shape>",
    )
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument(
        "--dtype", default="auto", choices=["auto", *DTYPES], help="auto: float32 on CPU, bfloat16 on CUDA"
    )
    p.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads on the CPU")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {value}")
    return value


def _flag_type(f):
    """argparse type of an Options field, from its annotation (``int | None`` -> int)."""
    kinds = str(f.type).replace(" ", "").split("|")
    for name, typ in (("int", int), ("float", float), ("str", str)):
        if name in kinds:
            return typ
    return str


def add_mode_arguments(p: argparse.ArgumentParser) -> None:
    """``--mode`` and every registered mode's settings as flags (default: unset)."""
    modes = strategy_names()
    p.add_argument("--mode", default=None, choices=modes, help=f"decoding mode (default {DEFAULT_MODE})")
    for name, f in all_option_fields().items():
        if f.metadata.get("cli", True):
            owners = [m for m in modes if name in option_fields(get_strategy(m))]
            help_text = f"{f.metadata.get('help', '')} [{', '.join(owners)}]"
            p.add_argument("--" + name.replace("_", "-"), type=_flag_type(f), default=None, help=help_text)


def add_decoding_arguments(p: argparse.ArgumentParser) -> None:
    add_mode_arguments(p)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--do-sample", action="store_true")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)


def mode_options(args, settings: dict) -> dict:
    """The selected mode's settings: flags given on the command line, else the checkpoint's
    recommendation (``eedecode.json``). A flag of another mode is an error (raised by generate)."""
    mode = args.mode or DEFAULT_MODE
    own = option_fields(get_strategy(mode))
    out = {}
    for name in all_option_fields():
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
        elif name in own and settings.get(name) is not None:
            out[name] = settings[name]
    return out


def decoding_kwargs(args, settings: dict) -> dict:
    kw = dict(mode=args.mode or DEFAULT_MODE, max_new_tokens=args.max_new_tokens, seed=args.seed)
    kw["do_sample"] = args.do_sample
    for name in ("temperature", "top_k", "top_p"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    return {**kw, **mode_options(args, settings)}


def set_threads(args) -> None:
    """``--threads``: torch's intra-op threads (small models are often fastest at 1)."""
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
