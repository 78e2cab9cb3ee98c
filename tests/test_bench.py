"""Benchmark bookkeeping: speed-up and ideal speed-up arithmetic, token counting, an end-to-end run."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cached_tiny_model

from eedecode import bench
from eedecode.synthetic import exit_agreement, synthetic_model


def test_speedup_and_ideal_speedup_arithmetic():
    assert bench.speedup(300.0, 100.0) == 3.0
    # a round of 4 drafts at c = 0.25 and a verify costing one step: 2 steps for mean(n) tokens
    assert bench.ideal_speedup(3.0, 4.0, 0.25, 1.0) == pytest.approx(1.5)
    assert bench.ideal_speedup(1.0, 0.0, 0.3, 1.0) == 1.0  # no drafts: the autoregressive step
    # Leviathan et al.: mean(n) = (1 - a^(k+1)) / (1 - a)
    assert bench.expected_tokens_per_round(0.0, 4) == 1.0
    assert bench.expected_tokens_per_round(1.0, 4) == 5.0
    assert bench.expected_tokens_per_round(0.5, 2) == pytest.approx(1.75)


def test_new_tokens_stop_at_the_first_eos():
    seq = torch.tensor([[9, 9, 5, 2, 0, 0], [9, 9, 5, 6, 7, 8]])
    assert bench._count_new(seq, 2, eos=2, pad=0) == 2 + 4
    assert bench._count_new(seq, 2, eos=[7, 2], pad=0) == 2 + 3
    assert bench._count_new(seq, 2, eos=None, pad=0) == 8


def test_derived_columns():
    record = {
        "step_costs": {"c": 0.5, "v": 1.0},
        "results": [
            {"method": "hf", "batch_size": 1, "tokens_per_s": 100.0, "speedup_vs_hf": 1.0},
            {"method": "eedecode_ss", "batch_size": 1, "tokens_per_s": 240.0, "speedup_vs_ar": 1.6,
             "mean_tokens_per_round": 3.0, "mean_drafts_per_round": 2.0},
        ],
    }  # fmt: skip
    bench._derive(record)
    ss = record["results"][1]
    assert ss["ideal_speedup"] == pytest.approx(1.5)  # 3 / (2 * 0.5 + 1)
    assert ss["efficiency"] == pytest.approx(1.6 / 1.5)


def test_paired_speedups_are_medians_of_per_batch_ratios(monkeypatch):
    """Every method decodes each prompt in turn; a speed-up is the median of same-prompt ratios,
    so a machine that slows down for a while does not favour the method measured later."""
    model = cached_tiny_model("llama", eos_token_id=None, bos_token_id=None)
    clock = iter([0.0, 1.0, 1.0, 3.0, 3.0, 4.0, 4.0, 6.0, 6.0, 9.0, 9.0, 12.0])  # [hf, ar] x 3 prompts
    monkeypatch.setattr(bench, "_clock", lambda: next(clock))
    ids = [torch.randint(3, 97, (1, 4), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    res = bench.time_methods(model, ["hf", "eedecode_ar"], ids, max_new_tokens=6, warmup=0)
    # durations: prompt 0: hf 1 s, ar 2 s; prompt 1 (ar first): ar 1 s, hf 2 s; prompt 2: hf 3 s, ar 3 s
    assert res["hf"].tokens_per_s_all == [6.0, 3.0, 2.0]
    assert res["eedecode_ar"].tokens_per_s_all == [3.0, 6.0, 2.0]
    assert res["eedecode_ar"].speedup_vs_hf == pytest.approx(1.0)  # median of 0.5, 2, 1
    assert res["eedecode_ar"].identical_to_hf == 3


def test_benchmark_end_to_end_on_a_tiny_model(tmp_path):
    model = cached_tiny_model("llama", eos_token_id=None, bos_token_id=None)
    prompts = [{"prompt": "x"}] * 3
    record = bench.run_benchmark(
        model,
        None,
        prompts,
        spec=bench.Speculation(2, 3),
        max_new_tokens=10,
        batch_sizes=(1, 2),
        warmup=1,
        show_progress=False,
    )
    by = {(r["method"], r["batch_size"]): r for r in record["results"]}
    assert set(by) == {(m, 1) for m in bench.METHODS} | {("hf", 2), ("eedecode_ar", 2), ("eedecode_ss", 2)}
    for r in record["results"]:
        assert r["tokens_per_s"] > 0 and r["new_tokens"] == 30
        assert r["identical_to_hf"] == 3  # greedy: every method returns HF's tokens
    ss = by[("eedecode_ss", 1)]
    assert 0 <= ss["acceptance_rate"] <= 1 and ss["ideal_speedup"] > 0 and ss["efficiency"] > 0
    assert record["step_costs"]["c"] > 0 and record["step_costs"]["v"] > 0
    table = bench.markdown_table(record)
    assert table.count("\n| ") == len(record["results"]) + 1
    json.dumps(record)  # the record is JSON-able


def test_sweep_and_heatmap(tmp_path):
    model = cached_tiny_model("llama", eos_token_id=None, bos_token_id=None)
    sweep = bench.run_sweep(
        model,
        None,
        [{"prompt": "x"}] * 2,
        exit_layers=[1, 3],
        draft_lengths=[1, 4],
        max_new_tokens=6,
        warmup=0,
        show_progress=False,
    )
    assert {(c["exit_layer"], c["num_speculations"]) for c in sweep["cells"]} == {
        (1, 1),
        (1, 4),
        (3, 1),
        (3, 4),
    }
    for c in sweep["cells"]:  # greedy: every method of every cell returns HF's tokens
        assert c["identical_to_hf"] == 2
        assert c["eedecode_ar_speedup_vs_hf"] > 0 and c["speedup_vs_ar"] > 0
    png = bench.plot_sweep(sweep, tmp_path / "sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_synthetic_model_is_calibrated_to_the_asked_agreement():
    model = synthetic_model("tiny", exit_layer=2, agreement=0.8)
    held_out = torch.randint(3, 256, (4, 64), generator=torch.Generator().manual_seed(123))
    assert abs(exit_agreement(model, 2, held_out) - 0.8) < 0.1
    with pytest.raises(ValueError, match="shape"):
        synthetic_model("llama-9000")
