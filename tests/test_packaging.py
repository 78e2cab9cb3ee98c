"""Packaging: the kernels are installed as eedecode.kernels, never as a top-level `kernels`
(bitsandbytes probes `import kernels` for an unrelated package)."""

from __future__ import annotations

import shutil
import subprocess
import sys


def test_kernels_live_inside_the_package(tmp_path):
    code = (
        "import importlib.util, eedecode.kernels as k; "
        "print(importlib.util.find_spec('kernels') is None, callable(k.exit_head))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]


def test_console_script_is_installed():
    script = shutil.which("eedecode")
    assert script is not None, "the `eedecode` console script is not on PATH"
    done = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and all(c in done.stdout for c in ("generate", "bench", "train"))
