"""The package's layout: the folders are the layers, imports point down only, no import cycles
(not even for typing), modules that fit in the head, a documented module map."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 350
#: A kernel module may be longer only if its docstring says why, in a sentence starting with this.
LONG_REASON = "Longer than 350 lines because"
#: The layers, bottom up: each imports only itself and the layers below it.
LAYERS = ("kernels", "model", "engine", "drafting", "modes", "api")
#: The tools: they import the layers, never each other, and nothing below the command line
#: imports them.
TOOLS = ("bench", "study", "training", "serving")
#: Modules allowed directly in eedecode/ besides the sub-packages.
MAX_TOP_LEVEL = 8


def package_modules() -> dict[str, Path]:
    """Module name -> source file, for every module of the eedecode package."""
    mods = {}
    base = ROOT / "eedecode"
    for f in base.rglob("*.py"):
        rel = f.relative_to(base).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        mods[".".join(["eedecode", *parts])] = f
    return mods


def layer_of(module: str) -> str:
    """``eedecode.model.runner`` -> ``model``; ``eedecode`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports anywhere (functions and ``TYPE_CHECKING`` blocks included)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                found.add(target)
                found.update(f"{target}.{a.name}" for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    # A package is initialised before its modules anyway: an edge to an ancestor is not a cycle.
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))}
    return {m for m in found if m in modules and m != name and m not in ancestors}


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def dfs(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_walker_resolves_relative_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "from . import a\nfrom .b import x\nfrom ..c import y\nimport d\nfrom .. import w\n"
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import e\n"
        "def f():\n    from .g import z\n"
    )
    mods = dict.fromkeys(["p", "p.q", "p.q.a", "p.q.b", "p.c", "d", "p.q.e", "p.q.g", "p.w"], src)
    assert imports_of("p.q.m", src, mods) == {"p.q.a", "p.q.b", "p.c", "d", "p.q.e", "p.q.g", "p.w"}


def test_no_import_cycles():
    graph = import_graph()
    assert "eedecode.cli" in graph and graph["eedecode.cli"], "the walker found no imports"
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_nothing_imports_the_command_line():
    graph = import_graph()
    users = sorted(
        m
        for m, deps in graph.items()
        if not m.startswith("eedecode.cli") and any(d.startswith("eedecode.cli") for d in deps)
    )
    assert users == [], f"{users} import the command line; shared pieces belong in the layers"


def allowed(importer: str, imported: str) -> bool:
    """Whether module ``importer`` may import ``imported`` (see the module docstring)."""
    a, b = layer_of(importer), layer_of(imported)
    if a == b or b == "":
        return True
    if a in LAYERS:
        return b in LAYERS and LAYERS.index(b) < LAYERS.index(a)
    if a in TOOLS:
        return b in LAYERS
    return a in ("cli", "")  # the command line (and the package's lazy front) on top


def test_the_layer_rule_rejects_upward_and_sideways_imports():
    assert allowed("eedecode.modes.adaptive.mode", "eedecode.drafting.exit")
    assert not allowed("eedecode.engine.decoder", "eedecode.modes.autoregressive")
    assert not allowed("eedecode.model.runner", "eedecode.study.tuned_lens")
    assert not allowed("eedecode.study.data", "eedecode.training.data")
    assert not allowed("eedecode.bench.methods", "eedecode.cli.arguments")
    assert allowed("eedecode.cli.bench", "eedecode.bench.measure")


def test_imports_point_down_the_layers():
    graph = import_graph()
    wrong = sorted((m, d) for m, deps in graph.items() for d in deps if not allowed(m, d))
    assert wrong == [], f"imports against the layers: {wrong}"


def test_few_modules_at_the_top_of_the_package():
    top = sorted(p.name for p in (ROOT / "eedecode").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, top
    layers = {p.parent.name for p in (ROOT / "eedecode").glob("*/__init__.py")}
    assert layers == {*LAYERS, *TOOLS, "cli"}, layers


@pytest.mark.parametrize("name", sorted(package_modules()))
def test_modules_fit_or_say_why(name):
    path = package_modules()[name]
    lines = len(path.read_text().splitlines())
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    exempt = name.startswith("eedecode.kernels.") and LONG_REASON in doc
    assert lines <= MAX_LINES or exempt, f"{path.name}: {lines} lines (kernels may say why they need more)"


def test_architecture_doc_names_every_module():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for path in package_modules().values():
        rel = path.relative_to(ROOT).as_posix()
        assert rel in doc, f"docs/architecture.md does not mention {rel}"
    for rel in set(__import__("re").findall(r"`(eedecode/[\w/]+\.py)`", doc)):
        assert (ROOT / rel).is_file(), f"docs/architecture.md names {rel}, which does not exist"
