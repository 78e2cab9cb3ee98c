"""The text eedecode's demo models were trained on and its benchmark prompts come from: the
Python standard library's sources, which every machine has, split by module name into a training
set and a fixed held-out set (:data:`HELD_OUT_MODULES`). Training, the benchmark and the agreement
study read it from here."""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path

PROMPTS_PATH = Path(__file__).resolve().parent.parent / "data" / "prompts.jsonl"

#: Held-out modules (paths relative to the stdlib directory), chosen by name so that the split is
#: the same on every machine and Python version where they exist. Pure-Python, mid-sized, varied
#: (text processing, maths, data formats, networking, containers); all exist in CPython 3.10-3.13
#: except ``tomllib`` (3.11+). They are never used to train the tokenizer or the model.
HELD_OUT_MODULES = (
    "argparse.py",
    "bisect.py",
    "calendar.py",
    "colorsys.py",
    "csv.py",
    "difflib.py",
    "email/quoprimime.py",
    "fnmatch.py",
    "fractions.py",
    "ftplib.py",
    "glob.py",
    "graphlib.py",
    "gzip.py",
    "heapq.py",
    "ipaddress.py",
    "json/decoder.py",
    "json/encoder.py",
    "pprint.py",
    "queue.py",
    "sched.py",
    "secrets.py",
    "shlex.py",
    "statistics.py",
    "string.py",
    "textwrap.py",
    "tomllib/_parser.py",
    "urllib/parse.py",
    "zipapp.py",
)

#: Directories of the stdlib that are not the library itself (tests, third-party packages, the
#: IDE, the 2to3 tool) or are generated data rather than code (codec tables, pydoc topics).
EXCLUDED_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "lib2to3",
        "turtledemo",
        "ensurepip",
        "encodings",
        "pydoc_data",
        "lib-dynload",
        "__pycache__",
        "__phello__",
    }
)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def list_stdlib_files(root: str | Path) -> list[str]:
    """The ``.py`` files under ``root`` (relative POSIX paths, sorted), minus :data:`EXCLUDED_DIRS`."""
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in EXCLUDED_DIRS and not d.startswith(("config-", "."))
        )
        rel = Path(dirpath).relative_to(root)
        found += [(rel / f).as_posix() for f in filenames if f.endswith(".py")]
    return sorted(f for f in found if not f.startswith("_sysconfigdata"))


def split_stdlib_files(root: str | Path) -> tuple[list[str], list[str]]:
    """``(train, held_out)`` relative paths: held out are the :data:`HELD_OUT_MODULES` present."""
    files = list_stdlib_files(root)
    held = set(HELD_OUT_MODULES)
    return [f for f in files if f not in held], [f for f in HELD_OUT_MODULES if f in set(files)]


def read_texts(root: str | Path, files: Sequence[str], max_chars: int | None = None) -> list[str]:
    """The files' text in order, stopping before ``max_chars`` characters in total."""
    texts, total = [], 0
    for f in files:
        text = (Path(root) / f).read_text(encoding="utf-8", errors="replace")
        if max_chars is not None and total + len(text) > max_chars:
            if not texts:
                texts.append(text[:max_chars])
            break
        texts.append(text)
        total += len(text)
    return texts
