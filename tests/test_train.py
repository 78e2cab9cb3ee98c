"""The training recipe (eedecode.training) at a tiny size: data split, tokenizer, LayerSkip losses
through the model runner, held-out evaluation, the recommended settings, checkpoint round trip."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import ARCHS, tiny_model

from eedecode import ModelRunner
from eedecode import training as tr
from eedecode.cli import train as train_cli
from eedecode.cli.main import build_parser
from eedecode.model import demo
from eedecode.model.loading import load_model
from eedecode.training import data

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


def hf_exit_logits(model, hidden):
    """The exit head written with the HF modules directly: final norm, LM head, fp32."""
    return model.lm_head(model.model.norm(hidden)).float()


# -- data ------------------------------------------------------------------------------------------


def test_held_out_split_is_fixed_and_disjoint():
    root = data.stdlib_root()
    train_files, held = data.split_stdlib_files(root)
    assert not set(train_files) & set(held)
    assert set(held) <= set(tr.HELD_OUT_MODULES)
    assert len(held) >= len(tr.HELD_OUT_MODULES) - 2  # all but version-dependent ones are present
    assert train_files == sorted(train_files)
    assert not any(set(Path(f).parts[:-1]) & data.EXCLUDED_DIRS for f in train_files)
    assert "os.py" in train_files


def test_tokenizer_round_trips_code(tiny_run):
    from transformers import AutoTokenizer

    cfg, _ = tiny_run
    tok = AutoTokenizer.from_pretrained(cfg.output_dir)
    root = data.stdlib_root()
    _, held = data.split_stdlib_files(root)
    samples = [(root / held[0]).read_text()[:20_000]]
    samples.append('class A:\n\tdef f(self):  # é, 😀\r\n        """Doc."""\n\n\n    x  =  1  \n')
    for text in samples:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.convert_ids_to_tokens(tok("    ")["input_ids"][1:]) == ["▁▁▁▁"]


def test_stdlib_prompts_on_a_known_tree(tmp_path):
    # two held-out module names in a fake stdlib; prompts alternate between them in source order
    (tmp_path / "bisect.py").write_text(
        'def a(x):\n    """Doc of a."""\n    return x\n\n\ndef short(x):\n    return x\n\n\n'
        'class C:\n    def b(self, y,\n          z):\n        """Doc of b,\n        two lines."""\n'
        "        pass\n"
    )
    (tmp_path / "heapq.py").write_text('async def h():\n    """Doc of h."""\n')
    prompts = tr.stdlib_prompts(5, root=tmp_path, min_chars=10, max_chars=400)
    assert prompts == [
        {"id": 0, "source": "bisect.py:1", "prompt": 'def a(x):\n    """Doc of a."""\n'},
        {"id": 1, "source": "heapq.py:1", "prompt": 'async def h():\n    """Doc of h."""\n'},
        {
            "id": 2,
            "source": "bisect.py:11",
            "prompt": 'def b(self, y,\n      z):\n    """Doc of b,\n    two lines."""\n',
        },
    ]
    assert [p["id"] for p in tr.stdlib_prompts(2, root=tmp_path, min_chars=10)] == [0, 1]
    assert tr.stdlib_prompts(5, root=tmp_path, min_chars=40) == [  # length bounds: only b is long
        {**prompts[2], "id": 0}
    ]


def test_stdlib_prompts_come_from_held_out_modules():
    prompts = tr.stdlib_prompts(12)
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
    assert [r["id"] for r in rows] == list(range(len(rows)))
    assert all(set(r) == {"id", "source", "prompt"} for r in rows)
    assert all(r["source"].rsplit(":", 1)[0] in tr.HELD_OUT_MODULES for r in rows)


def test_spread_blocks_picks_evenly():
    blocks = torch.arange(10)[:, None].expand(10, 3)
    assert data.spread_blocks(blocks, 4)[:, 0].tolist() == [0, 3, 6, 9]
    assert data.spread_blocks(blocks, 20)[:, 0].tolist() == list(range(10))
    assert data.to_blocks(torch.arange(7), 3).tolist() == [[0, 1, 2], [3, 4, 5]]


# -- the runner-based training forward ------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_training_forward_matches_hf_forward(arch):
    # 24 tokens cross the 16-token sliding window of the mistral and qwen2 test models
    model = tiny_model(arch).train()
    runner = ModelRunner(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    L = model.config.num_hidden_layers
    hidden = tr.exit_hidden_states(runner, ids, range(1, L + 1))
    with torch.no_grad():
        ref = model(ids, output_hidden_states=True)
    for d in range(1, L):  # HF's last hidden state has the final norm applied; compare logits there
        torch.testing.assert_close(hidden[d].detach(), ref.hidden_states[d], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(runner.logits(hidden[L]).detach(), ref.logits.float(), rtol=1e-5, atol=1e-5)
    assert hidden[L].requires_grad


def test_exit_hidden_states_stops_at_the_deepest_exit():
    model = tiny_model("llama")
    runner = ModelRunner(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        out = tr.exit_hidden_states(runner, ids, [3, 1])
        ref = model(ids, output_hidden_states=True)
    assert sorted(out) == [1, 3]
    torch.testing.assert_close(out[1], ref.hidden_states[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[3], ref.hidden_states[3], rtol=1e-5, atol=1e-5)


def test_layer_dropout_rates():
    rates = tr.layer_dropout_rates(3, 0.2)
    assert (
        rates[0] == 0.0 and math.isclose(rates[1], 0.2 * (math.sqrt(2) - 1)) and math.isclose(rates[2], 0.2)
    )
    rates = tr.layer_dropout_rates(8, 0.2)
    assert all(a < b for a, b in zip(rates, rates[1:], strict=False))


def test_layer_dropout_skips_a_layer_for_the_dropped_rows_only():
    model = tiny_model("llama").train()
    runner = ModelRunner(model)
    L = model.config.num_hidden_layers
    ids = torch.randint(0, model.config.vocab_size, (8, 7))
    drop = [0.0, 0.5] + [0.0] * (L - 2)  # only layer 1 may be skipped
    kept = torch.rand(8, generator=torch.Generator().manual_seed(3)) >= 0.5  # the draw it will make
    assert 0 < kept.sum() < 8
    with torch.no_grad():
        out = tr.exit_hidden_states(runner, ids, [L], drop, torch.Generator().manual_seed(3))[L]
        h1 = runner.run_layers(runner.embed(ids), 0, 1)
        full = runner.run_layers(runner.run_layers(h1, 1, 2), 2, L)
        skipped = runner.run_layers(h1, 2, L)
    torch.testing.assert_close(out[kept], full[kept])
    torch.testing.assert_close(out[~kept], skipped[~kept])


def test_layer_dropout_is_off_in_eval_mode():
    model = tiny_model("llama")
    runner = ModelRunner(model)
    L = model.config.num_hidden_layers
    ids = torch.randint(0, model.config.vocab_size, (4, 7))
    drop = [0.0] + [0.99] * (L - 1)
    with torch.no_grad():
        full = tr.exit_hidden_states(runner, ids, [L])[L]
        model.eval()
        evald = tr.exit_hidden_states(runner, ids, [L], drop, torch.Generator().manual_seed(0))[L]
        model.train()
        dropped = tr.exit_hidden_states(runner, ids, [L], drop, torch.Generator().manual_seed(0))[L]
        after_first = tr.exit_hidden_states(runner, ids, [1])[1]
    torch.testing.assert_close(evald, full)
    torch.testing.assert_close(dropped, after_first)  # every later layer skipped (seed 0, p = 0.99)


# -- the LayerSkip loss -----------------------------------------------------------------------------


def test_exit_loss_weights_rotate_and_grow_with_depth():
    cfg = tr.TrainConfig(num_layers=6, exit_rotation=2)
    w0, w1 = tr.exit_loss_weights(cfg, 0), tr.exit_loss_weights(cfg, 1)
    # scales d / 6 on the enabled exits, 1 on the last layer, normalised: w0 = (1, 3, 5, 6) / 15
    assert list(w0) == [1, 3, 5, 6] and list(w1) == [2, 4, 6]
    for d, w in {1: 1 / 15, 3: 3 / 15, 5: 5 / 15, 6: 6 / 15}.items():
        assert math.isclose(w0[d], w)
    for d, w in {2: 2 / 12, 4: 4 / 12, 6: 6 / 12}.items():
        assert math.isclose(w1[d], w)
    assert tr.exit_loss_weights(cfg, 2) == w0
    half = tr.exit_loss_weights(tr.TrainConfig(num_layers=4, exit_rotation=1, exit_loss_scale=0.5), 0)
    assert [round(w * 1.75, 9) for w in half.values()] == [0.125, 0.25, 0.375, 1.0]  # 0.5 d / 4 and 1
    assert tr.exit_loss_weights(tr.TrainConfig(variant="plain", num_layers=6), 0) == {6: 1.0}


def test_early_exit_loss_reaches_intermediate_layers():
    model = tiny_model("llama").train()
    runner = ModelRunner(model)
    L = model.config.num_hidden_layers
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    loss, ce = tr.early_exit_loss(runner, ids, {2: 0.25, L: 0.75})
    # the loss is the weighted sum of each exit's cross-entropy through the shared norm + head
    with torch.no_grad():
        ref = model(ids[:, :-1], output_hidden_states=True)
        labels = ids[:, 1:].reshape(-1)
        ce2 = F.cross_entropy(hf_exit_logits(model, ref.hidden_states[2]).flatten(0, 1), labels)
        ce_last = F.cross_entropy(ref.logits.flatten(0, 1).float(), labels)
    torch.testing.assert_close(ce[2], ce2)
    torch.testing.assert_close(loss.detach(), 0.25 * ce2 + 0.75 * ce_last)
    # with only the exit after 2 layers enabled, gradient reaches layers 0-1, the norm and the head
    model.zero_grad()
    tr.early_exit_loss(runner, ids, {2: 1.0})[0].backward()
    layers = model.model.layers
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layers[0].parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layers[1].parameters())
    assert all(p.grad is None for layer in layers[2:] for p in layer.parameters())
    assert model.model.norm.weight.grad.abs().sum() > 0
    assert model.lm_head.weight.grad.abs().sum() > 0


def test_exit_distillation_on_a_subset_of_positions():
    model = tiny_model("llama").train()
    with torch.no_grad():  # sharper distributions, so that KL(p_L || p_1) and KL(p_1 || p_L) differ
        model.lm_head.weight.mul_(10)
    runner = ModelRunner(model)
    L = model.config.num_hidden_layers
    ids = torch.randint(0, model.config.vocab_size, (2, 17))
    loss, ce = tr.early_exit_loss(
        runner,
        ids,
        {1: 0.5, L: 0.5},
        generator=torch.Generator().manual_seed(0),
        distill=0.5,
        exit_fraction=0.25,
    )
    # by hand: the exit after layer 1 is scored on 8 of the 32 positions that the generator picks
    keep = torch.randperm(32, generator=torch.Generator().manual_seed(0))[:8]
    with torch.no_grad():
        ref = model(ids[:, :-1], output_hidden_states=True)
        labels = ids[:, 1:].reshape(-1)
        last = ref.logits.flatten(0, 1).float()
        exit1 = hf_exit_logits(model, ref.hidden_states[1]).flatten(0, 1)[keep]
        ce1 = F.cross_entropy(exit1, labels[keep])
        p_last = last[keep].softmax(-1)
        kl = (p_last * (p_last.log() - exit1.log_softmax(-1))).sum(-1).mean()  # KL(p_L || p_1)
        expected = 0.5 * (0.5 * ce1 + 0.5 * kl) + 0.5 * F.cross_entropy(last, labels)
    torch.testing.assert_close(ce[1], ce1)
    torch.testing.assert_close(loss.detach(), expected)
    # the last layer is a detached target: the exit's distillation term does not train layers 1..L-1
    model.zero_grad()
    gen = torch.Generator().manual_seed(0)
    tr.early_exit_loss(runner, ids, {1: 1.0, L: 0.0}, generator=gen, distill=0.5, exit_fraction=0.25)[
        0
    ].backward()
    assert model.model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0
    assert all(p.grad.abs().sum() == 0 for layer in model.model.layers[1:] for p in layer.parameters())


# -- evaluation and the recommended settings --------------------------------------------------------


def test_evaluate_layers_equals_a_hand_loop_over_hf_hidden_states():
    model = tiny_model("llama").train()
    runner = ModelRunner(model)
    L = model.config.num_hidden_layers
    blocks = torch.randint(0, model.config.vocab_size, (3, 10))
    stats = tr.evaluate_layers(runner, blocks, batch_size=2)
    assert model.training  # left in the mode it was in
    with torch.no_grad():
        ref = model.eval()(blocks[:, :-1], output_hidden_states=True)
    labels = blocks[:, 1:].reshape(-1)
    logits = [hf_exit_logits(model, ref.hidden_states[d]).flatten(0, 1) for d in range(1, L)]
    logits.append(ref.logits.flatten(0, 1).float())
    final = logits[-1].argmax(-1)
    assert stats["tokens"] == 27 and set(stats) == {"tokens", "loss", "accuracy", "agreement"}
    for d, lg in enumerate(logits):
        assert stats["loss"][d] == pytest.approx(F.cross_entropy(lg, labels).item(), abs=1e-4)
        assert stats["accuracy"][d] == round((lg.argmax(-1) == labels).float().mean().item(), 4)
        assert stats["agreement"][d] == round((lg.argmax(-1) == final).float().mean().item(), 4)


def test_recommend_decoding_picks_the_best_predicted_cell():
    # L = 4. E=1 (c=1/4, a=.5): k=1 gives 1.5/1.25 = 1.2. E=2 (c=1/2, a=.8): k=1 1.8/1.5 = 1.2,
    # k=2 2.44/2 = 1.22, k=3 2.952/2.5 = 1.1808. E=3 (c=3/4, a=.9): k=1 1.9/1.75 = 1.0857.
    rec = tr.recommend_decoding([0.5, 0.8, 0.9, 1.0])
    assert (rec["exit_layer"], rec["num_speculations"]) == (2, 2)
    assert rec["predicted_speedup"] == pytest.approx(1.22)
    assert rec["source"] == (
        "eedecode train: predicted from held-out agreement (ideal speed-up 1.22), not measured"
    )
    # full agreement at the first of 2 layers: (k + 1) / (k / 2 + 1) grows with k up to the cap of 8
    rec = tr.recommend_decoding([1.0, 1.0])
    assert (rec["exit_layer"], rec["num_speculations"]) == (1, 8)
    assert rec["predicted_speedup"] == pytest.approx(9 / 5)
    with pytest.raises(ValueError):
        tr.recommend_decoding([1.0])


def test_lr_schedule_known_values():
    cfg = tr.TrainConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    assert [tr.lr_at(cfg, s, 0.0) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert tr.lr_at(cfg, 4, 0.0) == pytest.approx(1.0)
    assert tr.lr_at(cfg, 10, 0.5) == pytest.approx(0.55)
    assert tr.lr_at(cfg, 10, 1.0) == pytest.approx(0.1)
    assert tr.lr_at(cfg, 10, 3.0) == pytest.approx(0.1)  # past the end: stays at the floor


# -- a tiny run -----------------------------------------------------------------------------------


def test_run_completes_and_loss_falls(tiny_run):
    cfg, result = tiny_run
    log = result.log
    assert log["steps"] == cfg.max_steps
    curve = [p["final_ce"] for p in log["loss_curve"]]
    assert curve[-1] < curve[0] - 0.5
    assert [p["step"] for p in log["loss_curve"]] == [1, 5, 10, 15, 20, 25, 30, 35, 40]
    assert [e["step"] for e in log["evals"]] == [20, 40]
    final = log["final_eval"]
    assert final["tokens"] == cfg.eval_blocks * cfg.seq_len
    assert final["loss"][-1] < math.log(cfg.vocab_size)
    assert final["agreement"][-1] == 1.0
    assert len(final["agreement"]) == cfg.num_layers
    on_disk = json.loads((Path(cfg.output_dir) / "training_log.json").read_text())
    assert on_disk["config"]["variant"] == "early_exit"
    assert on_disk["machine"]["torch"] == torch.__version__
    assert on_disk["final_eval"] == final


def test_checkpoint_reloads_with_same_logits_ids_and_held_out_stats(tiny_run):
    cfg, result = tiny_run
    loaded = load_model(cfg.output_dir, device="cpu", dtype="float32")
    model, tok = loaded.model, loaded.tokenizer
    ids = tok("def f(x):\n    return x + 1\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, result.model(ids).logits, rtol=0, atol=1e-6)
    for source in (model.config, model.generation_config):
        assert source.bos_token_id == tok.bos_token_id == 1
        assert source.eos_token_id == tok.eos_token_id == 2
        assert source.pad_token_id == tok.pad_token_id == 3
    assert ids[0, 0].item() == tok.bos_token_id
    assert model.config.vocab_size == len(tok) == cfg.vocab_size
    # the logged final evaluation is reproduced from the saved checkpoint and the held-out blocks
    _, held = data.split_stdlib_files(data.stdlib_root())
    texts = data.read_texts(data.stdlib_root(), held, cfg.max_eval_chars)
    blocks = data.to_blocks(data.encode_corpus(tok, texts), cfg.seq_len + 1)
    stats = tr.evaluate_layers(ModelRunner(model), data.spread_blocks(blocks, cfg.eval_blocks), 4)
    final = result.log["final_eval"]
    assert stats["tokens"] == final["tokens"] and stats["agreement"] == final["agreement"]
    assert stats["loss"] == pytest.approx(final["loss"], abs=2e-4)
    # eedecode.json: the recommendation predicted from the logged agreement, read back by the loader
    assert loaded.settings == tr.recommend_decoding(final["agreement"])
    assert 1 <= loaded.settings["exit_layer"] < cfg.num_layers


def test_time_budget_stops_cleanly(tiny_run, tmp_path, monkeypatch):
    from eedecode.training import loop

    clock = [0.0]

    def tick() -> float:  # every read of the clock is 0.05 s later: a budget of 1.2 s is ~10 steps
        clock[0] += 0.05
        return clock[0]

    monkeypatch.setattr(loop, "time", type("Clock", (), {"time": staticmethod(tick)}))
    cfg, _ = tiny_run
    fields = {**TINY, "max_steps": 100_000, "time_budget_min": 0.02, "eval_every": 0}
    budget = tr.TrainConfig(variant="plain", output_dir=str(tmp_path), tokenizer=cfg.output_dir, **fields)
    log = tr.train(budget).log
    assert budget.warmup_steps < log["steps"] < 100_000
    assert log["loss_curve"][-1]["lr"] < 0.5 * budget.lr  # the schedule ended with the time budget
    loaded = load_model(tmp_path, device="cpu")
    assert loaded.settings["exit_layer"] in range(1, budget.num_layers)
    assert loaded.model.config.num_hidden_layers == budget.num_layers


# -- command line and shipped models ---------------------------------------------------------------


def test_cli_flags_build_the_config():
    parser = train_cli.add_train_arguments(argparse.ArgumentParser())
    flags = ["--variant", "plain", "--hidden-size", "64", "--no-progress", "--time-budget-min", "5"]
    args = parser.parse_args([*flags, "--lr", "1e-3"])
    cfg = train_cli.config_from_args(args)
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
    args = build_parser().parse_args(["train", "--num-layers", "3"])  # `eedecode train`
    assert args.func is train_cli.run_train and train_cli.config_from_args(args).num_layers == 3


def test_python_m_entry_writes_prompts(tmp_path):
    out = tmp_path / "prompts.jsonl"
    cmd = [sys.executable, "-m", "eedecode.cli", "train", "--write-prompts", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == tr.stdlib_prompts(24)


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
