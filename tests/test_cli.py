"""The command line, on the shipped demo model, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from eedecode.model import demo

pytestmark = pytest.mark.skipif(
    not all((demo.DEMO_DIR / v / "config.json").is_file() for v in demo.VARIANTS),
    reason="the demo checkpoints are not in this checkout",
)


def eedecode(*args, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "eedecode.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_generate_with_no_model_uses_the_demo_offline():
    done = eedecode("generate", "--max-new-tokens", "12", "def add(a, b):\\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("def add(a, b):\n")  # the prompt is streamed, then the new text
    assert len(done.stdout) > len("def add(a, b):\n")
    assert "demo_models/early_exit" in done.stderr and "12 new tokens" in done.stderr
    assert "adaptive" in done.stderr  # no settings: the mode that needs none


def test_static_mode_takes_the_checkpoints_recommended_settings():
    done = eedecode("generate", "--max-new-tokens", "12", "--mode", "self_speculative", "x")
    assert done.returncode == 0, done.stderr
    rec = json.loads((demo.demo_model_path("early_exit") / "eedecode.json").read_text())
    assert f"E={rec['exit_layer']} k={rec['num_speculations']}" in done.stderr


def test_explicit_settings_override_the_checkpoint_recommendation():
    done = eedecode("generate", "--max-new-tokens", "6", "--exit-layer", "5", "--num-speculations", "3", "x")
    assert done.returncode == 0, done.stderr
    assert "E=5 k=3" in done.stderr


def test_generate_bad_argument_is_one_clear_line_and_streams_nothing():
    done = eedecode("generate", "--model", "demo-plain", "--exit-layer", "99", "x")
    assert done.returncode == 2
    assert done.stdout == ""
    assert "exit_layer: must be an int in 1..7" in done.stderr and "Traceback" not in done.stderr


def test_bench_writes_a_table_and_a_json_record(tmp_path):
    done = eedecode(
        "bench",
        "--num-prompts",
        "2",
        "--max-new-tokens",
        "8",
        "--methods",
        "hf,eedecode_ar,eedecode_ss",
        "--output",
        str(tmp_path),
        "--no-progress",
        "--threads",
        "1",
    )
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "bench.json").read_text())
    assert {r["method"] for r in record["results"]} == {"hf", "eedecode_ar", "eedecode_ss"}
    assert all(r["identical_to_hf"] == 2 for r in record["results"])
    assert "| eedecode self-speculative | 1 |" in (tmp_path / "bench.md").read_text()
    assert "tokens/s (median)" in done.stdout
