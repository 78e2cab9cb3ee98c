"""The docs' commands and code work: every ``eedecode ...`` command in README.md and docs/ parses
with today's flags, every benchmark script a doc names exists and takes the flags the doc gives
it, every Python block compiles, and the README's quickstart runs as pasted (slow)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eedecode.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
#: Placeholders the docs write for a value of the reader's choosing.
PLACEHOLDERS = {"PATH": "some/checkpoint", "E": "2", "k": "1", "N": "4"}


def blocks(lang: str) -> list[tuple[str, str]]:
    """(doc name, block text) of every fenced block in ``lang`` ("" = no language given)."""
    found = []
    for doc in DOCS:
        for block_lang, text in FENCE.findall(doc.read_text()):
            if block_lang == lang or (lang == "bash" and block_lang in ("", "sh", "console")):
                found.append((doc.relative_to(ROOT).as_posix(), text))
    return found


def commands() -> list[tuple[str, list[str]]]:
    """(doc name, argv) of every shell command in the docs' code blocks."""
    found = []
    for doc, text in blocks("bash"):
        for line in text.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if not line or line.startswith("#"):
                continue
            for part in re.split(r"\s*&&\s*", line):
                try:
                    argv = shlex.split(part, comments=True)
                except ValueError:
                    continue
                if argv:
                    found.append((doc, [PLACEHOLDERS.get(a, a) for a in argv]))
    return found


def eedecode_commands():
    for doc, argv in commands():
        if argv[0] == "eedecode":
            yield doc, argv[1:]
        elif argv[:3] == ["python", "-m", "eedecode.cli"] or argv[:3] == ["python", "-m", "eedecode"]:
            yield doc, argv[3:]


def script_commands():
    for doc, argv in commands():
        if argv[0] == "python" and len(argv) > 1 and argv[1].startswith("benchmarks/"):
            yield doc, argv[1], argv[2:]


def test_the_docs_hold_commands_to_check():
    docs = {doc for doc, _ in eedecode_commands()}
    assert "README.md" in docs and len(list(eedecode_commands())) >= 20
    assert len(list(script_commands())) >= 5


@pytest.mark.parametrize("doc,argv", list(eedecode_commands()), ids=lambda v: " ".join(v)[:60])
def test_every_eedecode_command_in_the_docs_parses(doc, argv):
    try:
        build_parser(argv).parse_args(argv)
    except SystemExit as stop:
        pytest.fail(f"{doc}: `eedecode {' '.join(argv)}` does not parse (exit {stop.code})")


def test_a_wrong_flag_is_caught_by_the_check():
    with pytest.raises(SystemExit):
        argv = ["bench", "--no-such-flag"]
        build_parser(argv).parse_args(argv)


def test_every_benchmark_script_the_docs_name_exists():
    missing = sorted({(doc, script) for doc, script, _ in script_commands() if not (ROOT / script).is_file()})
    assert missing == [], f"docs name scripts that do not exist: {missing}"


@pytest.mark.parametrize("lang", ["python"])
def test_every_python_block_compiles(lang):
    for doc, text in blocks(lang):
        compile(text, doc, "exec")


@pytest.mark.slow
def test_benchmark_scripts_take_the_flags_the_docs_give_them():
    flags: dict[str, set[str]] = {}
    for _, script, args in script_commands():
        flags.setdefault(script, set()).update(a.split("=")[0] for a in args if a.startswith("--"))
    for script, used in sorted(flags.items()):
        done = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, f"{script} --help: {done.stderr[-500:]}"
        unknown = sorted(f for f in used if f not in done.stdout)
        assert unknown == [], f"{script} does not take {unknown}"


@pytest.mark.slow
def test_the_readme_quickstart_runs_as_pasted(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1]
    code = FENCE.search(section).group(2)
    assert "eedecode.generate(" in code
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "class Stack" in done.stdout


def test_the_reproduction_script_runs_the_commands_the_docs_give():
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "benchmarks" / "reproduce.py")
    reproduce = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = reproduce  # a dataclass needs its module registered
    spec.loader.exec_module(reproduce)
    assert len(reproduce.STEPS) >= 6
    for step in reproduce.STEPS:
        text = " ".join((ROOT / step.doc).read_text().replace("\\\n", " ").split())
        assert step.command in text, f"{step.doc} does not give the command of step {step.name}"


def test_the_architecture_pages_drafter_and_mode_work_as_written():
    from conftest import cached_tiny_model

    import eedecode
    from eedecode.modes import unregister

    doc = (ROOT / "docs" / "architecture.md").read_text()
    drafter = FENCE.search(doc[doc.index("## Adding a drafter") :]).group(2)
    mode = FENCE.search(doc[doc.index("## Adding a mode") :]).group(2)
    scope: dict = {}
    exec(compile(drafter + "\n" + mode, "docs/architecture.md", "exec"), scope)
    try:
        model = cached_tiny_model()
        ids = torch.tensor([[3, 7, 11, 5, 9]])
        plain = eedecode.generate(model, ids, mode="autoregressive", max_new_tokens=12)
        out = eedecode.generate(model, ids, mode="repeat", num_speculations=2, max_new_tokens=12)
        assert torch.equal(out, plain)
        res = eedecode.generate(model, ids, mode="repeat", max_new_tokens=12, return_dict_in_generate=True)
        assert res.stats.drafted_tokens > 0
    finally:
        unregister("repeat")


def test_no_placeholder_is_left_in_the_docs():
    for doc in DOCS:
        left = re.findall(r"\{[A-Z_]+\}", doc.read_text())
        assert left == [], f"{doc.name}: unfilled {left}"


def test_every_source_file_the_docs_name_exists():
    for doc in DOCS:
        for rel in re.findall(r"\b((?:eedecode|benchmarks|tests)/[\w/]+\.py)\b", doc.read_text()):
            assert (ROOT / rel).is_file(), f"{doc.name} names {rel}, which does not exist"
