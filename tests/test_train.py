"""The training recipe at a tiny size: data split, tokenizer, LayerSkip losses, checkpoint round trip."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from eedecode import demo
from eedecode import train as tr

TINY = dict(
    max_train_chars=150_000,
    max_eval_chars=20_000,
    vocab_size=400,
    tokenizer_sample_chars=150_000,
    hidden_size=32,
    num_layers=4,
    num_heads=2,
    num_kv_heads=1,
    intermediate_size=64,
    seq_len=32,
    batch_size=8,
    max_steps=40,
    time_budget_min=None,
    lr=1e-2,
    warmup_steps=5,
    eval_every=20,
    eval_blocks_quick=2,
    eval_blocks=8,
    log_every=5,
    device="cpu",
    save_dtype="float32",
    progress=False,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_ee")
    cfg = tr.TrainConfig(variant="early_exit", output_dir=str(out), **TINY)
    return cfg, tr.train(cfg)


def test_held_out_split_is_fixed_and_disjoint():
    root = tr.stdlib_root()
    train_files, held = tr.split_stdlib_files(root)
    assert not set(train_files) & set(held)
    assert set(held) <= set(tr.HELD_OUT_MODULES)
    assert len(held) >= len(tr.HELD_OUT_MODULES) - 2  # all but version-dependent ones are present
    assert train_files == sorted(train_files)
    assert not any(set(Path(f).parts[:-1]) & tr.EXCLUDED_DIRS for f in train_files)
    assert "os.py" in train_files


def test_run_completes_and_loss_falls(tiny_run):
    cfg, result = tiny_run
    log = result.log
    assert log["steps"] == cfg.max_steps
    curve = [p["final_ce"] for p in log["loss_curve"]]
    assert curve[-1] < curve[0] - 0.5
    final = log["final_eval"]
    assert final["loss"][-1] < math.log(cfg.vocab_size)
    assert final["agreement"][-1] == 1.0
    assert len(final["agreement"]) == cfg.num_layers
    on_disk = json.loads((Path(cfg.output_dir) / "training_log.json").read_text())
    assert on_disk["config"]["variant"] == "early_exit"
    assert on_disk["machine"]["torch"] == torch.__version__


def test_checkpoint_reloads_with_same_logits_and_ids(tiny_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, result = tiny_run
    model = AutoModelForCausalLM.from_pretrained(cfg.output_dir).eval()
    tok = AutoTokenizer.from_pretrained(cfg.output_dir)
    ids = tok("def f(x):\n    return x + 1\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, result.model(ids).logits, rtol=0, atol=1e-6)
    for source in (model.config, model.generation_config):
        assert source.bos_token_id == tok.bos_token_id == 1
        assert source.eos_token_id == tok.eos_token_id == 2
        assert source.pad_token_id == tok.pad_token_id == 3
    assert ids[0, 0].item() == tok.bos_token_id
    assert model.config.vocab_size == len(tok) == cfg.vocab_size


def test_tokenizer_round_trips_code(tiny_run):
    from transformers import AutoTokenizer

    cfg, _ = tiny_run
    tok = AutoTokenizer.from_pretrained(cfg.output_dir)
    root = tr.stdlib_root()
    _, held = tr.split_stdlib_files(root)
    samples = [(root / held[0]).read_text()[:20_000]]
    samples.append('class A:\n\tdef f(self):  # é, 😀\r\n        """Doc."""\n\n\n    x  =  1  \n')
    for text in samples:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.convert_ids_to_tokens(tok("    ")["input_ids"][1:]) == ["▁▁▁▁"]


def test_run_layers_matches_hf_forward():
    model = tiny_model("llama")
    ids = torch.randint(0, model.config.vocab_size, (2, 11))
    L = model.config.num_hidden_layers
    with torch.no_grad():
        hidden = tr.run_layers(model, ids, range(1, L + 1))
        ref = model(ids, output_hidden_states=True)
        torch.testing.assert_close(tr.exit_logits(model, hidden[L]), ref.logits.float())
        for d in range(1, L):
            torch.testing.assert_close(hidden[d], ref.hidden_states[d])


def test_exit_loss_weights_rotate_and_grow_with_depth():
    cfg = tr.TrainConfig(num_layers=6, exit_rotation=2)
    w0, w1 = tr.exit_loss_weights(cfg, 0), tr.exit_loss_weights(cfg, 1)
    assert list(w0) == [1, 3, 5, 6] and list(w1) == [2, 4, 6]
    assert math.isclose(sum(w0.values()), 1.0) and math.isclose(sum(w1.values()), 1.0)
    assert w0[1] < w0[3] < w0[5] < w0[6]
    assert tr.exit_loss_weights(cfg, 2) == w0
    assert tr.exit_loss_weights(tr.TrainConfig(variant="plain", num_layers=6), 0) == {6: 1.0}


def test_early_exit_loss_reaches_intermediate_layers():
    model = tiny_model("llama").train()
    L = model.config.num_hidden_layers
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    weights = {2: 0.25, L: 0.75}
    loss, ce = tr.early_exit_loss(model, ids, weights)
    # the loss is the weighted sum of each exit's cross-entropy through the shared norm + head
    with torch.no_grad():
        ref = model(ids[:, :-1], output_hidden_states=True)
        labels = ids[:, 1:].reshape(-1)
        ce2 = torch.nn.functional.cross_entropy(
            tr.exit_logits(model, ref.hidden_states[2]).flatten(0, 1), labels
        )
        ce_last = torch.nn.functional.cross_entropy(ref.logits.flatten(0, 1).float(), labels)
    torch.testing.assert_close(ce[2], ce2)
    torch.testing.assert_close(loss.detach(), 0.25 * ce2 + 0.75 * ce_last)
    # with only the exit after 2 layers enabled, gradient reaches layers 0-1, the norm and the head
    model.zero_grad()
    tr.early_exit_loss(model, ids, {2: 1.0})[0].backward()
    layers = model.model.layers
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layers[1].parameters())
    assert all(p.grad is None for layer in layers[2:] for p in layer.parameters())
    assert model.model.norm.weight.grad.abs().sum() > 0
    assert model.lm_head.weight.grad.abs().sum() > 0


def test_exit_distillation_and_position_subset():
    model = tiny_model("llama").train()
    L = model.config.num_hidden_layers
    ids = torch.randint(0, model.config.vocab_size, (2, 17))
    gen = torch.Generator().manual_seed(0)
    loss, ce = tr.early_exit_loss(
        model, ids, {1: 0.5, L: 0.5}, generator=gen, distill=0.5, exit_fraction=0.25
    )
    loss.backward()
    assert torch.isfinite(loss) and set(ce) == {1, L}
    assert model.model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0


def test_layer_dropout_rates_and_off_in_eval():
    rates = tr.layer_dropout_rates(8, 0.2)
    assert rates[0] == 0.0 and math.isclose(rates[-1], 0.2)
    assert all(a < b for a, b in zip(rates, rates[1:], strict=False))
    model = tiny_model("llama")
    L = model.config.num_hidden_layers
    ids = torch.randint(0, model.config.vocab_size, (4, 7))
    drop = [0.0] + [0.99] * (L - 1)
    with torch.no_grad():
        full = tr.run_layers(model.eval(), ids, [L])[L]
        evald = tr.run_layers(model.eval(), ids, [L], drop, torch.Generator().manual_seed(0))[L]
        dropped = tr.run_layers(model.train(), ids, [L], drop, torch.Generator().manual_seed(0))[L]
        after_first = tr.run_layers(model, ids, [1])[1]
    torch.testing.assert_close(evald, full)
    assert not torch.allclose(dropped, full)
    torch.testing.assert_close(dropped, after_first)  # every later layer skipped


def test_evaluate_layers_shapes():
    model = tiny_model("llama")
    blocks = torch.randint(0, model.config.vocab_size, (3, 10))
    stats = tr.evaluate_layers(model, blocks, batch_size=2)
    L = model.config.num_hidden_layers
    assert stats["tokens"] == 27
    assert len(stats["loss"]) == len(stats["agreement"]) == len(stats["accuracy"]) == L
    assert stats["agreement"][-1] == 1.0 and model.training is False


def test_time_budget_stops_cleanly(tiny_run, tmp_path):
    cfg, _ = tiny_run
    fields = {**TINY, "max_steps": 100_000, "time_budget_min": 0.02, "eval_every": 0}
    budget = tr.TrainConfig(variant="plain", output_dir=str(tmp_path), tokenizer=cfg.output_dir, **fields)
    log = tr.train(budget).log
    assert 0 < log["steps"] < 100_000
    assert (tmp_path / "model.safetensors").is_file()


def test_stdlib_prompts_come_from_held_out_modules():
    prompts = tr.stdlib_prompts(12)
    assert prompts == tr.stdlib_prompts(12)
    assert [p["id"] for p in prompts] == list(range(12))
    for p in prompts:
        module, lineno = p["source"].rsplit(":", 1)
        assert module in tr.HELD_OUT_MODULES and int(lineno) > 0
        assert p["prompt"].lstrip().startswith(("def ", "async def ")) and p["prompt"].endswith("\n")
    assert len({p["source"].split(":")[0] for p in prompts}) == 12  # round-robin over modules


def test_shipped_prompts_file_is_well_formed():
    if not tr.PROMPTS_PATH.is_file():
        pytest.skip("prompts.jsonl not written yet")
    rows = [json.loads(line) for line in tr.PROMPTS_PATH.read_text().splitlines()]
    assert 16 <= len(rows) <= 32
    assert all(set(r) == {"id", "source", "prompt"} for r in rows)
    assert all(r["source"].rsplit(":", 1)[0] in tr.HELD_OUT_MODULES for r in rows)


def test_cli_flags_build_the_config():
    parser = tr.add_train_arguments(argparse.ArgumentParser())
    flags = ["--variant", "plain", "--hidden-size", "64", "--no-progress", "--time-budget-min", "5"]
    args = parser.parse_args([*flags, "--lr", "1e-3"])
    cfg = tr.config_from_args(args)
    assert (cfg.variant, cfg.hidden_size, cfg.progress, cfg.time_budget_min, cfg.lr) == (
        "plain",
        64,
        False,
        5.0,
        1e-3,
    )
    assert cfg.num_threads is None and cfg.tie_embeddings is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--variant", "deep"])


@pytest.mark.parametrize("variant", demo.VARIANTS)
def test_demo_model_loads_and_generates(variant):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = demo.demo_model_path(variant)  # shipped in the package: no download
    assert sum(f.stat().st_size for f in path.iterdir()) < 16 * 2**20
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert model.config.num_hidden_layers >= 8
    enc = tok("def add(a, b):\n", return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 4 or out[0, -1].item() == tok.eos_token_id
