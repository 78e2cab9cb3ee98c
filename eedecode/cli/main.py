"""Command line: ``eedecode generate``, and the subcommands of other modules (``bench``, ``train``).

All presentation (streaming text, colours, tables, progress bars) lives here and in the benchmark
module, never in the engine. Decoding modes and their flags come from the mode registry.
"""

from __future__ import annotations

import argparse
import sys

from ..model.loading import add_model_arguments, load_model, quiet_transformers, set_threads
from .arguments import add_decoding_arguments, decoding_kwargs

DESCRIPTION = "eedecode: self-speculative (early-exit) decoding for LLaMA-family models"
DEFAULT_PROMPT = (
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
)


def cmd_generate(args) -> int:
    from transformers import TextStreamer

    from ..api.generation import generate

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
    parser = argparse.ArgumentParser(prog="eedecode", description=DESCRIPTION)
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

    for command in _commands():
        command.add_subcommand(sub)
    return parser


def _commands():
    """The other subcommands' modules; each has ``add_subcommand(subparsers)``."""
    from . import agreement, bench, train, tune

    return (bench, train, tune, agreement)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with quiet_transformers():  # transformers' advice for its own loop and loading bars
            return args.func(args)
    except (ValueError, FileNotFoundError) as err:  # bad input: one clear line, no traceback
        parser.exit(2, f"eedecode {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
