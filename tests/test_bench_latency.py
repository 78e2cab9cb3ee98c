"""The benchmark's latency columns (eedecode.bench.latency: time to first token, per-token
percentiles from a streamer's timestamps), its speed-ups as a range over runs (--repeats), the
baselines every speed table is read against, and the speed-up bar chart."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from conftest import cached_tiny_model

from eedecode import bench
from eedecode.bench import chart, latency, steps
from eedecode.bench.latency import TokenClock, percentile, summarize
from eedecode.bench.methods import AR, HF, Speculation, with_baselines
from eedecode.cli.main import main


def tiny():
    return cached_tiny_model("llama", eos_token_id=None, bos_token_id=None)


def prompt_ids(n: int, length: int = 4) -> list[torch.Tensor]:
    return [torch.randint(3, 97, (1, length), generator=torch.Generator().manual_seed(i)) for i in range(n)]


def clock_at(times):
    it = iter(times)
    return lambda: next(it)


# -- the streamer's arithmetic ---------------------------------------------------------------------
def test_time_to_first_token_and_per_token_gaps():
    """Start at 10 s, the prompt at 10.5 s (not a token), then deliveries of 1, 3 and 1 tokens at
    11, 14 and 15 s: TTFT 1 s; the three tokens of one round share its 3 s; the last took 1 s."""
    clock = TokenClock(clock_at([10.5, 11.0, 14.0, 15.0]))
    clock.start = 10.0
    clock.put(torch.tensor([[1, 2, 3]]))  # the prompt
    for tokens in ([7], [8, 9, 10], [11]):
        clock.put(torch.tensor(tokens))
    clock.end()
    assert clock.first_token_s() == 1.0
    assert clock.token_gaps_s() == [1.0, 1.0, 1.0, 1.0]
    empty = TokenClock(clock_at([0.0]))
    empty.put(torch.tensor([[1]]))
    assert empty.first_token_s() is None and summarize([empty]) is None


def test_percentiles_interpolate_between_ranks():
    xs = [float(i) for i in range(1, 101)]  # 1..100
    assert percentile(xs, 50) == 50.5
    assert percentile(xs, 99) == pytest.approx(99.01)
    assert percentile([3.0], 95) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)
    a, b = TokenClock(clock_at([0, 1, 2, 4])), TokenClock(clock_at([0, 3, 4]))
    for c, n in ((a, 3), (b, 2)):
        c.start = 0.0
        c.put(torch.tensor([[1]]))
        for _ in range(n):
            c.put(torch.tensor([5]))
    s = summarize([a, b])  # TTFTs 1 s and 3 s; gaps 1, 2 (a) and 1 (b)
    assert s["ttft_ms"] == 2000.0 and s["token_ms_p50"] == 1000.0
    assert s["token_ms_p99"] == pytest.approx(1980.0)


# -- measured runs ---------------------------------------------------------------------------------
def test_every_method_reports_latency_at_batch_one_and_its_tokens_all_arrive(monkeypatch):
    clocks = []
    made = latency.TokenClock

    def recording():
        clocks.append(made())
        return clocks[-1]

    monkeypatch.setattr(bench.measure, "TokenClock", recording)
    names = ["hf", "eedecode_ar", "eedecode_ss"]
    spec = Speculation(2, 2)
    res = bench.time_methods(tiny(), names, prompt_ids(2), max_new_tokens=7, warmup=0, spec=spec)
    assert len(clocks) == 2 * len(names)
    assert all(sum(n for _, n in c.deliveries) == 7 for c in clocks)  # every new token, once
    for r in res.values():
        lat = r.latency
        assert lat["ttft_ms"] > 0 and 0 <= lat["token_ms_p50"] <= lat["token_ms_p95"] <= lat["token_ms_p99"]
        assert r.identical_to_hf == 2  # the streamer changes nothing in the output
    kw = dict(batch_size=2, max_new_tokens=4, warmup=0, spec=spec)
    batched = bench.time_methods(tiny(), names, prompt_ids(2), **kw)
    assert all(r.latency is None for r in batched.values())  # streamers are batch size 1 only


def test_speedups_have_a_range_over_runs(monkeypatch):
    """2 runs x 2 prompts, the methods taking turns (hf first, then ar first, ...): ar/hf is 0.5,
    1 in the first run and 0.25, 2 in the second. The speed-up is the median of all four, the range
    the runs' own medians, 0.75 and 1.125."""
    durations = [1, 2, 1, 1, 1, 4, 1, 2]  # hf, ar | ar, hf | hf, ar | ar, hf
    ticks = list(itertools.accumulate([0] + [x for d in durations for x in (0, d)]))[1:]
    monkeypatch.setattr(steps, "clock", clock_at(ticks))
    res = bench.time_methods(
        tiny(), ["hf", "eedecode_ar"], prompt_ids(2), max_new_tokens=4, repeats=2, warmup=0
    )
    ar = res["eedecode_ar"]
    assert ar.speedup_vs_hf == 0.75 and ar.speedup_vs_hf_runs == [0.75, 1.125]
    assert res["hf"].speedup_vs_ar_runs == [1.5, 2.25] and res["hf"].speedup_vs_hf_runs == [1.0, 1.0]
    cell = bench.report.speedup_cell(ar.__dict__, "speedup_vs_hf")
    assert cell == "0.75× (0.75–1.12)"
    labels, values, errors = chart.bar_data({"results": [ar.__dict__]}, "speedup_vs_hf")
    assert labels == ["eedecode autoregressive"] and values == [0.75] and errors == [(0.0, 0.375)]


def test_the_baselines_are_added_in_front():
    assert with_baselines(["llamacpp_f32"]) == [HF, AR, "llamacpp_f32"]
    assert with_baselines(["eedecode_ss", "hf"]) == [AR, "eedecode_ss", "hf"]
    assert with_baselines([HF, AR]) == [HF, AR]


def test_bench_draws_the_speed_table_as_bars_with_the_baselines_added(tmp_path, capsys):
    args = ["bench", "--model", "demo", "--methods", "eedecode_ss", "--num-prompts", "2", "--repeats", "2"]
    args += ["--max-new-tokens", "4", "--warmup", "0", "--no-floor", "--no-progress", "--threads", "1"]
    assert main([*args, "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "adding hf, eedecode_ar: the baselines of the speed-ups" in out
    assert (tmp_path / "speedups.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((tmp_path / "bench.json").read_text())
    assert [r["method"] for r in record["results"]] == ["hf", "eedecode_ar", "eedecode_ss"]
    ss = record["results"][2]
    assert len(ss["speedup_vs_hf_runs"]) == 2 and len(ss["speedup_vs_ar_runs"]) == 2
    assert min(ss["speedup_vs_ar_runs"]) <= ss["speedup_vs_ar"] <= max(ss["speedup_vs_ar_runs"])
    assert set(ss["latency"]) == {"ttft_ms", "ttft_ms_p95", "token_ms_p50", "token_ms_p95", "token_ms_p99"}
    table = (tmp_path / "bench.md").read_text()
    assert "| vs HF generate | vs eedecode AR | TTFT ms |" in table and "lowest–highest of 2 runs" in table
    assert main([*args, "--output", str(tmp_path / "none"), "--no-plot"]) == 0
    assert not (tmp_path / "none" / "speedups.png").exists()


def test_without_matplotlib_the_bench_says_so_instead_of_a_chart(tmp_path, capsys, monkeypatch):
    find_spec = chart.importlib.util.find_spec
    monkeypatch.setattr(
        chart.importlib.util, "find_spec", lambda n, *a: None if n == "matplotlib" else find_spec(n, *a)
    )
    args = ["bench", "--model", "demo", "--methods", "hf,eedecode_ar", "--num-prompts", "1", "--no-floor"]
    args += ["--max-new-tokens", "2", "--warmup", "0", "--no-progress", "--output", str(tmp_path)]
    assert main(args) == 0
    assert (
        'no bar chart: matplotlib is not installed; pip install "eedecode[plot]"' in capsys.readouterr().out
    )
    assert not (tmp_path / "speedups.png").exists()
