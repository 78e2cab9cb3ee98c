"""The early-exit measurement (eedecode.bench.early_exit) on a tiny random model: the grid's
columns under a fake clock, the teacher-forced propagation study (where recomputed KV must leave
full-depth tokens exactly the full model's and copied KV may not), the table and the plot."""

from __future__ import annotations

import json

import torch
from conftest import cached_tiny_model, tiny_model
from test_bench import step_clock

from eedecode.bench import early_exit as ee

PROMPTS = [{"prompt": "x"}] * 2
#: Fires on about a third of the tiny model's states (its exit distributions are nearly flat).
SOMETIMES = "margin:0.0008"


def tiny():
    return cached_tiny_model("llama", eos_token_id=None, bos_token_id=None)


def confident():
    """A tiny model whose exit distributions are peaked (its LM head scaled up)."""
    model = tiny_model("llama", seed=1, eos_token_id=None, bos_token_id=None)
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    return model


def test_grid_rows_under_a_fake_clock(monkeypatch):
    step_clock(monkeypatch)
    configs = ee.configurations(f"margin:1.0,{SOMETIMES}", "copy,recompute")
    rows = ee.run_grid(
        tiny(),
        None,
        PROMPTS,
        configs=configs,
        exits="min_exit_layer=2",
        max_new_tokens=12,
        warmup=0,
        repeats=1,
    )
    by = {(r["criterion"], r["kv_strategy"]): r for r in rows}
    assert [r["method"] for r in rows[:2]] == ["hf", "eedecode_ar"] and len(rows) == 2 + len(configs)
    for kv in ("copy", "recompute"):
        never = by[("margin:1.0", kv)]
        assert never["token_agreement"] == 1.0 and never["first_divergence"] == 12 and never["identical"] == 2
        assert never["mean_exit_layer"] == 6.0 and never["speedup_vs_ar"] == 1.0
        assert 2.0 <= by[(SOMETIMES, kv)]["mean_exit_layer"] < 6.0
    record = {"machine": {"torch_threads": 1}, "model": "tiny", "rows": rows}
    record["settings"] = dict(
        model="tiny", num_layers=6, exits="min_exit_layer=2", max_new_tokens=12, num_prompts=2, repeats=1
    )
    table = ee.markdown(record)
    assert "| margin:1.0 | 6.00 / 6.00 | 1.00× / 1.00× | 100.0% / 100.0% | 12 / 12 | 2 / 2 |" in table
    assert "| eedecode autoregressive | 12.0 | 1.00× | 100.0% | 2/2 |" in table


def test_propagation_recompute_keeps_full_depth_tokens_exact():
    configs = ee.configurations("margin:0.8", "copy,recompute")
    rows = ee.propagation(
        confident(), None, PROMPTS, configs=configs, exits="min_exit_layer=1", max_new_tokens=40, window=20
    )
    by = {r["kv_strategy"]: r["windows"] for r in rows}
    for w in by["recompute"]:
        assert 0 < w["exit_rate"] < 1
        assert w["full_depth_agreement"] == 1.0 and abs(w["full_depth_kl"]) < 1e-6
    # copied KV is an approximation, which the full-depth tokens after an exit see
    assert max(w["full_depth_kl"] for w in by["copy"]) > 1e-4
    record = {"model": "tiny", "rows": rows}
    record["settings"] = dict(
        model="tiny", max_new_tokens=40, num_prompts=2, exits="min_exit_layer=1", window=20
    )
    assert "| margin:0.8 | recompute | " in ee.propagation_markdown(record)


def test_plot_draws_one_panel_per_record(tmp_path, monkeypatch):
    step_clock(monkeypatch)
    rows = ee.run_grid(
        tiny(),
        None,
        PROMPTS[:1],
        configs=ee.configurations(SOMETIMES, "copy,recompute"),
        exits="min_exit_layer=1",
        max_new_tokens=6,
        warmup=0,
        repeats=1,
    )
    record = {"model": "tiny", "rows": rows, "settings": {"model": "tiny", "exits": "min_exit_layer=1"}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(record))
    assert ee.main(["plot", str(path), str(path), "--output", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_propagation_follows_a_reference_that_ends_early():
    model = tiny_model("llama", seed=2, bos_token_id=None)
    ids = ee.encode_prompts(None, PROMPTS[:1], model.config.vocab_size, "cpu")[0]
    free = ee.generate(model, ids, mode="autoregressive", max_new_tokens=30, eos_token_id=None)
    model.generation_config.eos_token_id = int(free[0, ids.shape[1] + 11])
    rows = ee.propagation(
        model,
        None,
        PROMPTS[:1],
        configs=[("margin:0.0008", "copy")],
        exits="min_exit_layer=1",
        max_new_tokens=30,
        window=10,
    )
    tokens = [w["tokens"] for w in rows[0]["windows"]]
    assert sum(tokens) <= 11 and tokens[-1] == 0 and rows[0]["windows"][-1]["agreement"] is None
