"""Packaging: the kernels are installed as eedecode.kernels, never as a top-level `kernels`
(bitsandbytes probes `import kernels` for an unrelated package)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def test_kernels_live_inside_the_package(tmp_path):
    code = (
        "import importlib.util, eedecode.kernels as k; "
        "print(importlib.util.find_spec('kernels') is None, callable(k.exit_head))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]


def console_script() -> str | None:
    """The ``eedecode`` script of this interpreter's environment (its bin/ or Scripts/ folder,
    whether or not the environment is activated), else the one on PATH."""
    here = Path(sys.executable).parent
    for name in ("eedecode", "eedecode.exe"):
        if (here / name).is_file():
            return str(here / name)
    return shutil.which("eedecode")


def test_console_script_is_installed():
    script = console_script()
    assert script is not None, f"no `eedecode` console script beside {sys.executable} or on PATH"
    done = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and all(c in done.stdout for c in ("generate", "bench", "train"))


def test_every_subpackage_is_installed():
    """A non-editable install ships only the packages pyproject.toml lists."""
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"eedecode." + p.parent.name for p in (root / "eedecode").glob("*/__init__.py")}
    assert found | {"eedecode", "eedecode.kernels"} == listed
