"""Command line of the training recipe: ``eedecode train ...`` and ``python -m eedecode.training``.
One ``--flag`` per :class:`~eedecode.training.config.TrainConfig` field."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence

from ..model.demo import VARIANTS
from ..training.config import TrainConfig

DESCRIPTION = "Train a small LLaMA (plain or early-exit, LayerSkip recipe) on the Python standard library."


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a small LLaMA (plain or early-exit) on the Python standard library"
    )
    add_train_arguments(p)
    p.set_defaults(func=run_train)


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """One ``--flag`` per :class:`TrainConfig` field (``--hidden-size``, ``--no-progress``...),
    plus ``--write-prompts PATH``."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        help_text = f"default: {field.default}"
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        elif field.name == "variant":
            parser.add_argument(flag, choices=VARIANTS, default=field.default, help=help_text)
        else:
            parser.add_argument(flag, type=base, default=field.default, help=help_text)
    parser.add_argument(
        "--write-prompts",
        metavar="PATH",
        default=None,
        help="write the benchmark prompt set (JSON lines) to PATH and exit without training",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    return TrainConfig(**values)


def run_train(args: argparse.Namespace) -> int:
    if getattr(args, "write_prompts", None):
        from ..training.data import write_prompts

        prompts = write_prompts(args.write_prompts, root=args.stdlib_dir)
        print(f"wrote {len(prompts)} prompts to {args.write_prompts}")
        return 0
    from ..training.loop import train

    train(config_from_args(args))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eedecode.training", description=DESCRIPTION)
    add_train_arguments(parser)
    return run_train(parser.parse_args(argv))
