"""Command line: ``eedecode generate``, ``eedecode bench``, ``eedecode train``.

All presentation (streaming text, colours, tables, progress bars) lives here and in the benchmark
module, never in the engine. Decoding modes and their flags come from the strategy registry.
"""

from __future__ import annotations

import argparse
import sys

from .config import DEFAULT_MODE
from .loading import DEVICES, DTYPES, load_model
from .strategies import all_option_fields, get_strategy, option_fields, strategy_names

DEFAULT_PROMPT = "def fibonacci(n):\n"


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
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def cmd_generate(args) -> int:
    from transformers import TextStreamer

    from .generation import generate

    set_threads(args)
    loaded = load_model(args.model, args.device, args.dtype)
    if loaded.tokenizer is None:
        raise ValueError(f"model: {loaded.path} has no tokenizer; `eedecode generate` needs one")
    prompt = args.prompt.replace("\\n", "\n").replace("\\t", "\t")  # typed escapes
    model, tokenizer = loaded.model, loaded.tokenizer
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    streamer = (
        None if args.no_stream else TextStreamer(tokenizer, skip_prompt=False, skip_special_tokens=True)
    )
    out = generate(
        model,
        **inputs,
        **decoding_kwargs(args, loaded.settings),
        streamer=streamer,
        return_dict_in_generate=True,
    )
    if args.no_stream:
        print(tokenizer.decode(out.sequences[0], skip_special_tokens=True))
    print(f"\n[eedecode] {loaded.path}\n[eedecode] {out.stats.summary()}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eedecode", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text, streaming it, and print the decoding statistics")
    add_model_arguments(g)
    add_decoding_arguments(g)
    g.add_argument(
        "--no-stream", action="store_true", help="print the text at the end instead of streaming it"
    )
    g.add_argument(
        "prompt", nargs="?", default=DEFAULT_PROMPT, help="the prompt text (\\n, \\t: newline, tab)"
    )
    g.set_defaults(func=cmd_generate)

    from . import bench, train

    b = sub.add_parser("bench", help="tokens/s of HF generate, HF assistant_early_exit and eedecode")
    add_model_arguments(b)
    bench.add_arguments(b)
    b.set_defaults(func=bench.run_cli)

    t = sub.add_parser(
        "train", help="train a small LLaMA (plain or early-exit) on the Python standard library"
    )
    train.add_train_arguments(t)
    t.set_defaults(func=train.run_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:  # bad input: one clear line, no traceback
        parser.exit(2, f"eedecode {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
