"""The ``eedecode`` command: its subcommands, and how failures end.

Only the chosen subcommand's module is imported (and its flags built), so ``eedecode --help``
and ``eedecode --version`` start without torch. All presentation (streamed text, tables,
progress bars, plots) lives in the command line and the tools, never in the layers below.

Exit status: 0 on success; 2 for a bad argument or input file (one line naming it); 1 for a
failure while running (one line; ``EEDECODE_TRACEBACK=1`` shows the traceback); 130 on Ctrl-C,
without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__

#: Set to 1 for a failure's traceback instead of one line.
TRACEBACK_ENV = "EEDECODE_TRACEBACK"
DESCRIPTION = "eedecode: self-speculative (early-exit) decoding for LLaMA-family models"
#: Subcommand -> (help, module with add_subcommand(subparsers)).
SUBCOMMANDS = {
    "generate": ("generate text, streaming it, and print the decoding statistics", "generate"),
    "bench": ("tokens/s of HF generate, HF assisted decoding and every eedecode mode", "bench"),
    "train": ("train a small LLaMA (plain or early-exit) on the Python standard library", "train"),
    "tune": ("find a draft layer set and vocabulary, warm the adaptive policy", "tune"),
    "agreement": ("how often each layer already predicts the final token (the agreement study)", "agreement"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv``, only the subcommand it names gets its flags (and imports)."""
    parser = argparse.ArgumentParser(prog="eedecode", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"eedecode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    for name, (help_text, module) in SUBCOMMANDS.items():
        if argv is None or name == chosen:
            importlib.import_module(f".{module}", __package__).add_subcommand(sub)
        else:
            sub.add_parser(name, help=help_text)  # flags built only when chosen
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    name = f"eedecode {args.command}"
    try:
        from ..model.loading import quiet_transformers

        with quiet_transformers():  # transformers' advice for its own loop and loading bars
            return args.func(args)
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as err:  # bad input: one clear line, no traceback
        parser.exit(2, f"{name}: error: {err}\n")
    except Exception as err:  # a failure while running (a corrupt file, out of memory, ...)
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        parser.exit(
            1, f"{name}: error: {type(err).__name__}: {detail} (set {TRACEBACK_ENV}=1 to see where)\n"
        )


if __name__ == "__main__":
    sys.exit(main())
