"""Packaging: the kernels are eedecode.kernels, and nothing in the repository is importable as a
top-level `kernels` (Hugging Face's kernels package, which transformers imports, has that name)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_no_top_level_kernels_comes_from_the_repository(where, tmp_path):
    """``import kernels`` started from the repository root (as ``python -m pytest`` and
    ``python -c`` are) or from elsewhere finds Hugging Face's package or nothing, never ours."""
    code = (
        "import importlib.util, eedecode.kernels as k; "
        "spec = importlib.util.find_spec('kernels'); "
        "print(spec.origin if spec and spec.origin else '-'); print(callable(k.exit_head))"
    )
    cwd = ROOT if where == "root" else tmp_path
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    origin, ok = done.stdout.split()
    assert ok == "True"
    assert (
        origin == "-"
        or not Path(origin).resolve().is_relative_to(ROOT.resolve())
        or ("site-packages" in Path(origin).parts)
    ), f"`import kernels` from {where} resolves to this repository: {origin}"


def test_transformers_loads_a_model_from_the_repository_root():
    """What a shadowing `kernels/` folder broke: loading any model from the root."""
    code = (
        "import eedecode, transformers; "
        "m = transformers.AutoModelForCausalLM.from_pretrained(eedecode.demo_model_path()); "
        "print(type(m).__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "LlamaForCausalLM"


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


@pytest.mark.slow
def test_a_wheel_ships_every_package_and_the_demo_models(tmp_path):
    """A non-editable install ships every package under eedecode/ and the demo models' files."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 and "No module named pip" in done.stderr:
        pytest.skip("pip is not installed in this environment")
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("eedecode-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "eedecode").rglob("__init__.py")}
    missing = sorted(p for p in packages if f"{p}/__init__.py" not in names)
    assert not missing, f"not in the wheel: {missing}"
    for variant in ("early_exit", "plain"):
        for f in ("config.json", "model.safetensors", "tokenizer.json", "eedecode.json"):
            assert f"eedecode/model/demo_models/{variant}/{f}" in names
    assert "eedecode/data/prompts.jsonl" in names
