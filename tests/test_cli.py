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


def test_version_and_help_need_no_torch():
    from eedecode import __version__

    code = (
        "import sys; from eedecode.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.split()[-2:] == ["False", "False"], done.stderr
    done = eedecode("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"eedecode {__version__}"


def test_ctrl_c_exits_130_without_a_traceback(monkeypatch, capsys):
    from eedecode.cli import generate as cli_generate
    from eedecode.cli.main import main

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_generate, "run", interrupted)
    assert main(["generate", "x"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err


def broken_copy(tmp_path, edit):
    """A copy of the plain demo model's folder, edited."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(demo.demo_model_path("plain"), folder)
    edit(folder)
    return folder


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda f: (f / "config.json").write_text("{not json"), "config.json is not valid JSON"),
        (lambda f: (f / "model.safetensors").unlink(), "has no weights"),
        (lambda f: (f / "eedecode.json").write_text("[1,"), "eedecode.json is not valid JSON"),
        (lambda f: (f / "model.safetensors").write_bytes(b"garbage"), "error:"),
    ],
    ids=["config", "weights", "settings", "corrupt"],
)
def test_a_broken_model_folder_is_one_line_naming_the_file(tmp_path, edit, words):
    folder = broken_copy(tmp_path, edit)
    done = eedecode("generate", "--model", str(folder), "--max-new-tokens", "4", "x")
    assert done.returncode in (1, 2) and words in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 2


def test_a_model_id_is_read_from_the_local_hugging_face_cache(tmp_path):
    import shutil

    snapshot = tmp_path / "hub" / "models--someone--tiny-demo" / "snapshots" / "0123abc"
    shutil.copytree(demo.demo_model_path("plain"), snapshot)
    (tmp_path / "hub" / "models--someone--tiny-demo" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-demo" / "refs" / "main").write_text("0123abc")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "eedecode.cli", "generate", "--max-new-tokens", "4"]
    done = subprocess.run(
        [*cmd, "--model", "someone/tiny-demo", "x"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 and "0123abc" in done.stderr, done.stderr
    done = subprocess.run([*cmd, "--model", "someone/absent", "x"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "not in the local Hugging Face cache" in done.stderr


def test_chat_applies_the_tokenizers_template(tmp_path):
    def with_template(folder):
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["chat_template"] = (
            "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}"
        )
        (folder / "tokenizer_config.json").write_text(json.dumps(config))

    folder = broken_copy(tmp_path, with_template)
    args = ["generate", "--model", str(folder), "--max-new-tokens", "6", "--chat", "--system", "be brief"]
    done = eedecode(*args, "def f():")
    assert done.returncode == 0, done.stderr
    assert "6 new tokens" in done.stderr
    done = eedecode("generate", "--model", "demo-plain", "--chat", "x")
    assert done.returncode == 2 and "--chat: this model's tokenizer has no chat template" in done.stderr
    done = eedecode("generate", "--system", "s", "x")
    assert done.returncode == 2 and "--system: only with --chat" in done.stderr


def test_tune_refuses_a_missing_output_folder_before_working(tmp_path):
    done = eedecode("tune", "--model", "demo-plain", "--out", str(tmp_path / "missing" / "p.json"))
    assert done.returncode == 2 and "--out: must be a file path in an existing folder" in done.stderr
    assert "loading" not in done.stderr
