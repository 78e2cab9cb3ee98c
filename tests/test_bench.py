"""The benchmark (eedecode.bench): the arithmetic on hand numbers, timing under a fake clock (so
tokens/s, paired ratios and step costs have known values), methods from the mode registry,
the table, flag checks, and small end-to-end runs on a tiny random model."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import pytest
import torch
from conftest import cached_tiny_model, silent_upper_layers, tiny_model

from eedecode import bench
from eedecode.api.generation import generate
from eedecode.bench import measure, steps
from eedecode.bench import methods as methods_module
from eedecode.bench.methods import Speculation, available_methods, display_name, resolve_methods
from eedecode.cli.main import main
from eedecode.model.synthetic import exit_agreement, synthetic_model
from eedecode.modes import Mode, Round, mode_names, option, register, unregister


def tiny():
    return cached_tiny_model("llama", eos_token_id=None, bos_token_id=None)


def prompt_ids(n: int, length: int = 4) -> list[torch.Tensor]:
    return [torch.randint(3, 97, (1, length), generator=torch.Generator().manual_seed(i)) for i in range(n)]


def step_clock(monkeypatch) -> None:
    """Every read of the benchmark's clock is one second after the previous one: every timed call
    takes exactly 1 s."""
    ticks = itertools.count()
    monkeypatch.setattr(steps, "clock", lambda: float(next(ticks)))


def summed_stats(model, ids: list[torch.Tensor], max_new_tokens: int, **mode) -> tuple[int, int, int]:
    """(drafted, accepted, row-rounds) of eedecode itself over the prompts, one at a time."""
    totals = [0, 0, 0]
    for x in ids:
        st = generate(model, x, max_new_tokens=max_new_tokens, return_dict_in_generate=True, **mode).stats
        for i, v in enumerate((st.drafted_tokens, st.accepted_tokens, st.row_rounds)):
            totals[i] += v
    return tuple(totals)


# -- arithmetic ------------------------------------------------------------------------------------
def test_speedup_arithmetic():
    assert bench.speedup(300.0, 100.0) == 3.0
    assert bench.speedup(300.0, 0.0) != bench.speedup(300.0, 0.0)  # nan: no baseline


def test_new_tokens_stop_at_the_first_eos():
    seq = torch.tensor([[9, 9, 5, 2, 0, 0], [9, 9, 5, 6, 7, 8]])
    assert measure._count_new(seq, 2, eos=2, pad=0) == 2 + 4
    assert measure._count_new(seq, 2, eos=[7, 2], pad=0) == 2 + 3
    assert measure._count_new(seq, 2, eos=None, pad=0) == 8


def test_ideal_and_efficiency_only_for_batch_one_exit_layer_drafting():
    ss = dict(method="eedecode_ss", batch_size=1, exit_layer=2, speedup_vs_ar=1.6)
    ss.update(mean_tokens_per_round=3.0, mean_drafts_per_round=2.0)
    record = {
        "step_costs": {"c": 0.5, "v": 1.0},
        "results": [
            {"method": "hf", "batch_size": 1, "exit_layer": None, "speedup_vs_hf": 1.0},
            ss,
            {**ss, "batch_size": 4},
            {**ss, "method": "eedecode_tr", "exit_layer": None},  # drafts, but not from an exit layer
        ],
    }
    bench.derive(record)
    assert ss["ideal_speedup"] == pytest.approx(1.5)  # 3 / (2 * 0.5 + 1)
    assert ss["efficiency"] == pytest.approx(1.6 / 1.5)
    assert [("ideal_speedup" in r) for r in record["results"]] == [False, True, False, False]


# -- timing under a fake clock ---------------------------------------------------------------------
def test_paired_speedups_are_medians_of_per_batch_ratios(monkeypatch):
    """Every method decodes each prompt in turn; a speed-up is the median of same-prompt ratios,
    so a machine that slows down for a while does not favour the method measured later."""
    clock = iter([0.0, 1.0, 1.0, 3.0, 3.0, 4.0, 4.0, 6.0, 6.0, 9.0, 9.0, 15.0])  # [hf, ar] x 3 prompts
    monkeypatch.setattr(steps, "clock", lambda: next(clock))
    res = bench.time_methods(tiny(), ["hf", "eedecode_ar"], prompt_ids(3), max_new_tokens=6, warmup=0)
    # durations: prompt 0: hf 1 s, ar 2 s; prompt 1 (ar first): ar 1 s, hf 2 s; prompt 2: hf 3 s, ar 6 s
    assert res["hf"].tokens_per_s_all == [6.0, 3.0, 2.0]
    assert res["eedecode_ar"].tokens_per_s_all == [3.0, 6.0, 1.0]
    assert res["hf"].tokens_per_s == 3.0 and res["eedecode_ar"].tokens_per_s == 3.0
    # paired: the median of 0.5, 2, 0.5 (the ratio of the medians would say 1)
    assert res["eedecode_ar"].speedup_vs_hf == 0.5
    assert res["hf"].speedup_vs_ar == 2.0  # the median of 2, 0.5, 2
    assert res["eedecode_ar"].identical_to_hf == 3 and res["eedecode_ar"].new_tokens == 18


def test_step_costs_are_median_times_relative_to_an_autoregressive_step(monkeypatch):
    # per round: an ar step, a draft step, a verification; three warm-up rounds, then three timed
    durations = iter([100.0] * 9 + [2.0, 0.5, 3.0] * 2 + [50.0] * 3)
    now, started = [0.0], [False]

    def clock():
        if started[0]:
            now[0] += next(durations)
        started[0] = not started[0]
        return now[0]

    monkeypatch.setattr(steps, "clock", clock)
    costs = bench.measure_step_costs(tiny(), prompt_ids(1, 8)[0], exit_layer=2, num_speculations=3, reps=3)
    assert costs == {"ar_step_s": 2.0, "draft_step_s": 0.5, "verify_s": 3.0, "c": 0.25, "v": 1.5}


# -- methods ---------------------------------------------------------------------------------------
def test_methods_come_from_the_strategy_registry():
    methods = available_methods()
    assert list(methods) == [
        "hf",
        "hf_packed",
        "hf_early_exit",
        "hf_prompt_lookup",
        "eedecode_ar",
        "eedecode_auto",
        "eedecode_ee",
        "eedecode_ss",
        "eedecode_oracle",
        "llamacpp_f32",
        "llamacpp_f16",
    ]
    assert [m.display for m in methods.values()][4:] == [
        "eedecode autoregressive",
        "eedecode adaptive",
        "eedecode early-exit",
        "eedecode self-speculative",
        "oracle bound (eedecode)",
        "llama.cpp (F32)",
        "llama.cpp (F16)",
    ]
    assert [m.lossless for m in methods.values()] == [True] * 6 + [False, True, True, True, True]
    spec = Speculation(exit_layer=2, num_speculations=3, prompt_lookup_num_tokens=7)
    assert methods["eedecode_ss"].settings(spec) == {"exit_layer": 2, "num_speculations": 3}
    assert methods["eedecode_ar"].settings(spec) == {}  # the settings its mode has: none
    assert methods["eedecode_auto"].settings(spec) == {}  # it chooses its own
    assert methods["eedecode_ee"].settings(spec) == {}
    assert methods["hf_prompt_lookup"].settings(spec) == {"prompt_lookup_num_tokens": 7}
    with pytest.raises(ValueError, match="^methods: unknown 'nope'"):
        bench.time_methods(tiny(), ["hf", "nope"], prompt_ids(1))
    with pytest.raises(ValueError, match="hf_prompt_lookup run at batch size 1 only"):
        bench.time_methods(tiny(), ["hf", "hf_prompt_lookup"], prompt_ids(2), batch_size=2)


@dataclass(frozen=True)
class RepeatOptions:
    num_speculations: int = option(2, "drafts per round")

    def validate(self, num_layers: int) -> None:
        pass


class RepeatPending(Mode):
    """A toy drafter: guess that the pending token repeats k times; verify with every layer."""

    name, short = "repeat_pending", "rp"
    Options = RepeatOptions

    @property
    def max_drafts(self) -> int:
        return self.options.num_speculations

    def round(self, state, max_tokens: int) -> Round:
        runner, k = self.runner, min(self.options.num_speculations, max_tokens - 1)
        x = state.pending[:, None]
        drafts = x.repeat(1, k)
        h = runner.run_layers(runner.embed(torch.cat([x, drafts], 1)), 0, runner.num_layers, state.cache)
        tokens, counts = state.chooser.accept(runner, drafts, h[:, :k], [], runner.logits(h))
        return Round(tokens, counts, drafted=k * state.active.sum())


@pytest.fixture
def toy_strategy():
    register(RepeatPending)
    try:
        yield RepeatPending
    finally:
        unregister(RepeatPending.name)


def test_a_registered_strategy_is_a_measured_method(toy_strategy, monkeypatch):
    assert "eedecode_rp" in bench.method_names() and display_name("eedecode_rp") == "eedecode repeat-pending"
    step_clock(monkeypatch)
    model, ids = tiny(), prompt_ids(3, 6)
    spec = Speculation(exit_layer=2, num_speculations=3)  # the toy gets only num_speculations
    res = bench.time_methods(model, ["hf", "eedecode_rp"], ids, max_new_tokens=8, spec=spec, warmup=0)
    toy = res["eedecode_rp"]
    assert (toy.exit_layer, toy.num_speculations, toy.extra) == (None, 3, {})
    assert toy.identical_to_hf == 3 and toy.new_tokens == 24 and toy.tokens_per_s_all == [8.0] * 3
    drafted, accepted, row_rounds = summed_stats(model, ids, 8, mode="repeat_pending", num_speculations=3)
    assert drafted > 0  # it drafts, so it gets the statistics columns
    assert toy.acceptance_rate == accepted / drafted
    assert toy.mean_drafts_per_round == drafted / row_rounds
    assert toy.mean_tokens_per_round == (accepted + row_rounds) / row_rounds
    assert res["hf"].acceptance_rate is None
    unregister(RepeatPending.name)
    assert "eedecode_rp" not in bench.method_names()


def test_a_variant_is_a_mode_with_its_own_settings(monkeypatch):
    step_clock(monkeypatch)
    names = [
        "hf",
        "eedecode_ss",
        "eedecode_ss@kv_strategy=rerun",
        "eedecode_ee@criterion=max-prob:0@min_exit_layer=2",
    ]
    spec = Speculation(exit_layer=2, num_speculations=3)
    res = bench.time_methods(tiny(), names, prompt_ids(2), max_new_tokens=8, warmup=0, spec=spec)
    rerun, ee = res[names[2]], res[names[3]]
    assert rerun.extra == {"kv_strategy": "rerun"} and rerun.exit_layer == 2 and rerun.identical_to_hf == 2
    assert rerun.acceptance_rate == res["eedecode_ss"].acceptance_rate  # the same drafts, verified alike
    assert ee.extra == {"criterion": "max-prob:0", "min_exit_layer": 2} and ee.mean_exit_layer == 2.0
    assert not ee.lossless and ee.first_divergence_from_hf <= 8
    assert display_name(names[2]) == "eedecode self-speculative [kv_strategy=rerun]"


def test_hf_early_exit_and_the_oracle_take_their_own_settings_as_variants(monkeypatch):
    step_clock(monkeypatch)
    names = [
        "hf",
        "hf_early_exit",
        "hf_early_exit@exit_layer=3@num_speculations=1",
        "eedecode_oracle@exit_layer=4",
    ]
    spec = Speculation(exit_layer=2, num_speculations=3)
    res = bench.time_methods(tiny(), names, prompt_ids(2), max_new_tokens=8, warmup=0, spec=spec)
    plain, own, oracle = res[names[1]], res[names[2]], res[names[3]]
    assert (plain.exit_layer, plain.num_speculations) == (2, 3) and (
        own.exit_layer,
        own.num_speculations,
    ) == (3, 1)
    assert own.identical_to_hf == 2 and oracle.identical_to_hf == 2
    assert oracle.exit_layer == 4 and oracle.mean_exit_layer == 4.0 and oracle.extra == {"max_drafts": 8}
    assert display_name(names[2]) == "HF assistant_early_exit [exit_layer=3@num_speculations=1]"
    with pytest.raises(ValueError, match="exit_layer: must be an int in 1..5"):
        resolve_methods(["eedecode_oracle@exit_layer=6"])[0].validate(spec, 6)


# -- the table -------------------------------------------------------------------------------------
def test_markdown_table_of_a_hand_made_record():
    settings = dict(
        exit_layer=2, num_layers=8, num_speculations=3, max_new_tokens=16, num_prompts=4, repeats=3
    )
    ss = dict(method="eedecode_ss", batch_size=1, tokens_per_s=123.46, speedup_vs_hf=1.5, identical_to_hf=4)
    ss.update(acceptance_rate=0.625, mean_tokens_per_round=2.75, ideal_speedup=1.25, efficiency=0.8)
    ss.update(mean_drafts_per_round=2.8, mean_exit_layer=2.0, speedup_vs_hf_runs=[1.25, 1.5, 1.625])
    ss.update(speedup_vs_ar=1.2, speedup_vs_ar_runs=[1.2, 1.1, 1.3])
    ss.update(latency=dict(ttft_ms=12.34, token_ms_p50=4.321, token_ms_p95=9.876, token_ms_p99=15.55))
    hf = dict(method="hf", batch_size=4, tokens_per_s=50.0, speedup_vs_hf=1.0, identical_to_hf=3)
    gone = dict(method="eedecode_gone", batch_size=1, tokens_per_s=1.0)  # a mode no longer registered
    ee = dict(method="eedecode_ee@kv_strategy=copy", batch_size=1, tokens_per_s=9.0, identical_to_hf=1)
    ee.update(lossless=False, token_agreement_with_hf=0.755, mean_exit_layer=3.25)
    record = {"settings": settings, "step_costs": {"c": 0.25, "v": 1.5}, "results": [ss, hf, gone, ee]}
    assert bench.markdown_table(record).splitlines() == [
        "E = 2 of 8 layers, k = 3, 16 new tokens, 4 prompts; step costs: c = 0.250, v = 1.500; "
        "speed-ups: median (lowest–highest of 3 runs)",
        "",
        "| method | batch | tokens/s (median) | vs HF generate | vs eedecode AR | TTFT ms | ms/token p50 "
        "| p95 | p99 | acceptance | drafts/round | tokens/round | exit layer | ideal | efficiency "
        "| identical to HF |",
        "|---|" + "---:|" * 15,
        "| eedecode self-speculative | 1 | 123.5 | 1.50× (1.25–1.62) | 1.20× (1.10–1.30) | 12.3 | 4.32 "
        "| 9.88 | 15.6 | 62.5% | 2.80 | 2.75 | 2.0 | 1.25× | 0.80 | 4/4 |",
        "| HF generate | 4 | 50.0 | 1.00× |  |  |  |  |  |  |  |  |  |  |  | 3/4 |",
        "| eedecode_gone | 1 | 1.0 |  |  |  |  |  |  |  |  |  |  |  |  |  |",
        "| eedecode early-exit [kv_strategy=copy] | 1 | 9.0 |  |  |  |  |  |  |  |  |  | 3.2 |  |  "
        "| lossy: 1/4, 76% of tokens |",
    ]
    # one run: said in the header and the columns, no range; no latency measured: no latency columns
    one = {**record, "settings": {**settings, "repeats": 1}, "results": [hf]}
    lines = bench.markdown_table(one).splitlines()
    assert lines[0].endswith("; 1 run (no range)")
    assert lines[2].startswith(
        "| method | batch | tokens/s (median) | vs HF generate (1 run) | vs eedecode AR (1 run) |"
    )
    assert "TTFT" not in lines[2]


# -- flags -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num-prompts", "0"], "--num-prompts: must be an int >= 1, got 0"),
        (["--num-prompts", "999"], "--num-prompts: 999 asked for, the prompt file has 24"),
        (["--repeats", "0"], "--repeats: must be an int >= 1, got 0"),
        (["--max-new-tokens", "0"], "--max-new-tokens: must be an int >= 1, got 0"),
        (["--exit-layer", "0"], "--exit-layer: must be an int >= 1, got 0"),
        (["--num-speculations", "0"], "--num-speculations: must be an int >= 1, got 0"),
        (["--prompt-lookup-num-tokens", "0"], "--prompt-lookup-num-tokens: must be an int >= 1, got 0"),
        (["--warmup", "-1"], "--warmup: must be an int >= 0, got -1"),
        (["--draft-confidence-threshold", "1.5"], "--draft-confidence-threshold: must be in [0, 1], got 1.5"),
        (["--batch-sizes", "0"], "--batch-sizes: expected distinct comma-separated ints >= 1, got '0'"),
        (["--batch-sizes", "1,x"], "--batch-sizes: expected distinct comma-separated ints >= 1, got '1,x'"),
        (["--batch-sizes", ""], "--batch-sizes: expected distinct comma-separated ints >= 1, got ''"),
        (["--sweep-draft-lengths", "2,,3"], "--sweep-draft-lengths: expected distinct comma-separated"),
        (["--methods", "hf,nope"], "--methods: unknown 'nope'; choose from hf, hf_packed, hf_early_exit,"),
        (["--methods", "hf,hf"], "--methods: need one or more distinct methods, got ['hf', 'hf']"),
        (["--methods", "hf,eedecode_ss@k=1"], "--methods: 'eedecode_ss@k=1': 'k=1' is not NAME=VALUE"),
        (["--methods", "hf@kv_strategy=x"], "--methods: unknown 'hf@kv_strategy=x'; a variant is"),
        (
            ["--methods", "eedecode_ss@num_speculations=x"],
            "--methods: 'eedecode_ss@num_speculations=x': num_",
        ),
        (["--methods", "hf", "--sweep"], "--methods: not for --sweep"),
        (["--profile", "--sweep"], "--profile: not with --sweep"),
    ],
)
def test_a_bad_flag_is_one_line_naming_it(flags, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as done:  # checked before any model loads
        main(["bench", *flags, "--output", str(tmp_path), "--no-progress"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"eedecode bench: error: {message}") and err.count("\n") == 1


# -- end to end on a tiny random model -------------------------------------------------------------
def test_benchmark_end_to_end_on_a_tiny_model(monkeypatch, tmp_path):
    step_clock(monkeypatch)  # every timed decode and step takes 1 s
    model = tiny()
    prompts = [{"prompt": "x"}] * 3
    spec = Speculation(2, 3, prompt_lookup_num_tokens=4)
    kw = dict(methods=bench.method_names(), spec=spec, max_new_tokens=10, batch_sizes=(1, 2), warmup=1)
    record = bench.run_benchmark(model, None, prompts, **kw, show_progress=False)
    by = {(r["method"], r["batch_size"]): r for r in record["results"]}
    batched = {"hf", "hf_packed", "eedecode_ar", "eedecode_auto", "eedecode_ee", "eedecode_ss"}
    assert set(by) == {(m, 1) for m in bench.method_names()} | {(m, 2) for m in batched}
    for (_, b), r in by.items():
        assert r["new_tokens"] == 30
        if r["lossless"]:  # greedy: HF's tokens, every lossless method
            assert r["identical_to_hf"] == 3 and r["token_agreement_with_hf"] == 1.0
            assert r["first_divergence_from_hf"] == 10
        assert r["tokens_per_s_all"] == ([10.0] * 3 if b == 1 else [20.0, 10.0])  # batches of 2 and 1
        assert r["tokens_per_s"] == (10.0 if b == 1 else 15.0)
        assert r["speedup_vs_hf"] == 1.0 and r["speedup_vs_ar"] == 1.0
    assert by[("hf_prompt_lookup", 1)]["extra"] == {"prompt_lookup_num_tokens": 4}
    assert record["step_costs"]["c"] == 1.0 and record["step_costs"]["v"] == 1.0
    ss = by[("eedecode_ss", 1)]
    ids = measure.encode_prompts(None, prompts, model.config.vocab_size, "cpu")
    ss_mode = dict(mode="self_speculative", exit_layer=2, num_speculations=3)
    drafted, accepted, row_rounds = summed_stats(model, ids, 10, **ss_mode)
    assert ss["acceptance_rate"] == accepted / drafted
    assert ss["mean_tokens_per_round"] == (accepted + row_rounds) / row_rounds
    assert ss["ideal_speedup"] == pytest.approx(ss["mean_tokens_per_round"] / (drafted / row_rounds + 1))
    assert ss["efficiency"] == pytest.approx(1 / ss["ideal_speedup"])
    assert by[("eedecode_ar", 1)]["acceptance_rate"] is None and "ideal_speedup" not in by[("eedecode_ss", 2)]
    ee = by[("eedecode_ee", 1)]
    assert not ee["lossless"] and 0 <= ee["token_agreement_with_hf"] <= 1 and 1 <= ee["mean_exit_layer"] <= 6
    assert ee["acceptance_rate"] is None and "ideal_speedup" not in ee
    table = bench.markdown_table(record)
    assert table.count("\n| ") == len(record["results"]) + 1
    json.dumps(record)  # the record is JSON-able
    png = bench.plot_batches(record, tmp_path / "batch.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_oracle_bound_is_opt_in_lossless_and_wastes_no_draft(monkeypatch, arch):
    step_clock(monkeypatch)
    assert "eedecode_oracle" not in bench.method_names()
    assert "eedecode_oracle" in bench.method_names(everything=True)
    model = silent_upper_layers(tiny_model(arch, eos_token_id=None), first=3)
    prompts = [{"prompt": "x"}, {"prompt": "yz"}, {"prompt": "abcdef"}]
    ids = measure.encode_prompts(None, prompts, model.config.vocab_size, "cpu")
    spec = Speculation(2, 3)
    for b in (1, 2):  # batch 2: left padding
        names = ["hf", "eedecode_ss", "eedecode_oracle"]
        timed = measure.time_methods(model, names, ids, batch_size=b, max_new_tokens=12, spec=spec)
        oracle, ss = timed["eedecode_oracle"], timed["eedecode_ss"]
        assert oracle.identical_to_hf == 3 and oracle.mean_exit_layer == 2.0
        assert oracle.acceptance_rate == 1.0 and oracle.mean_tokens_per_round > 1  # drafts, none wasted
        assert oracle.acceptance_rate > ss.acceptance_rate
    assert "oracle" not in mode_names()  # registered only while it runs


def test_sweep_and_heatmap(tmp_path, monkeypatch):
    step_clock(monkeypatch)
    model = tiny()
    grid = dict(exit_layers=[1, 3], draft_lengths=[1, 4])
    sweep = bench.run_sweep(
        model, None, [{"prompt": "x"}] * 2, **grid, max_new_tokens=6, warmup=0, show_progress=False
    )
    cells = {(c["exit_layer"], c["num_speculations"]): c for c in sweep["cells"]}
    assert set(cells) == {(1, 1), (1, 4), (3, 1), (3, 4)}
    for (e, k), c in cells.items():
        assert c["identical_to_hf"] == 2  # greedy: every method of every cell returns HF's tokens
        assert c["hf_tokens_per_s"] == c["eedecode_ss_tokens_per_s"] == 6.0
        assert c["speedup_vs_hf"] == c["eedecode_ar_speedup_vs_hf"] == c["hf_early_exit_speedup_vs_hf"] == 1.0
        ids = measure.encode_prompts(None, [{}] * 2, model.config.vocab_size, "cpu")
        ss_mode = dict(mode="self_speculative", exit_layer=e, num_speculations=k)
        drafted, accepted, _ = summed_stats(model, ids, 6, **ss_mode)
        assert c["acceptance_rate"] == accepted / drafted
    png = bench.plot_sweep(sweep, tmp_path / "sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="^exit_layer: must be an int in 1..5"):
        bench.run_sweep(model, None, [{"prompt": "x"}], exit_layers=[6], draft_lengths=[1])


def test_synthetic_model_is_calibrated_to_the_asked_agreement():
    model = synthetic_model("tiny", exit_layer=2, agreement=0.8)
    held_out = torch.randint(3, 256, (4, 64), generator=torch.Generator().manual_seed(123))
    assert abs(exit_agreement(model, 2, held_out) - 0.8) < 0.1
    with pytest.raises(ValueError, match="shape"):
        synthetic_model("llama-9000")


def test_profile_counts_ops_and_reports_the_floor():
    from eedecode.bench.profile import profile_steps, profile_table

    profile = profile_steps(tiny(), prompt_ids(1, 8)[0], exit_layer=2, num_speculations=2, reps=2)
    steps = profile["steps"]
    assert set(steps) == {"ar_step", "draft_step", "verify", "hf_forward_step"}
    assert steps["draft_step"]["ops"] < steps["ar_step"]["ops"] < steps["hf_forward_step"]["ops"]
    assert steps["draft_step"]["bytes"] < steps["ar_step"]["bytes"] < steps["verify"]["bytes"]
    assert all(r["floor_share"] > 0 and r["ms"] > 0 for r in steps.values())
    assert profile["bandwidth_bytes_per_s"] > 0 and set(profile["block_costs"]) == {"1", "4", "16"}
    table = profile_table(profile, 2, 2)
    assert "floor share" in table and "preferred T" in table


def test_hf_runs_on_the_model_as_given_and_hf_packed_on_a_copy_packed_in_place(monkeypatch):
    """eedecode leaves the model as it is: HF generate is timed on the model itself, and
    hf_packed on a copy whose weights are packed in place; the model ends the run unpacked."""
    from eedecode.model.packing import packed_layer

    seen = {}
    for cls in (methods_module.HFGenerate, methods_module.HFGeneratePacked):
        run = cls.run

        def spy(self, model, *a, _run=run, **kw):
            seen[self.name] = model
            return _run(self, model, *a, **kw)

        monkeypatch.setattr(cls, "run", spy)
    model = tiny_model("llama", eos_token_id=None, bos_token_id=None)
    spec = bench.Speculation(2, 2)
    record = bench.run_benchmark(
        model,
        None,
        [{"prompt": "x"}] * 2,
        methods=["hf", "hf_packed", "eedecode_ar"],
        spec=spec,
        max_new_tokens=4,
        show_progress=False,
    )
    assert record["settings"]["hf_weights"] == "as loaded"
    assert seen["hf"] is model and packed_layer(model.model.layers[0]) is None
    assert seen["hf_packed"] is not model and packed_layer(seen["hf_packed"].model.layers[0]) is not None
