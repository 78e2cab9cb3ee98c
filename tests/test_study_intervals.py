"""The agreement study's intervals and verdicts: the block bootstrap, the exact gate curves and
their resampled cheapest points, the last layer's loss, the sub-layer means, the early-exit
paper's claims, comparing two runs, and the speed prediction checked against a bench record."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import cached_tiny_model

from eedecode.model import demo
from eedecode.model.exit_criteria import CRITERIA
from eedecode.model.runner import ModelRunner
from eedecode.study import StudyConfig, compare, gates, speed, speed_check, study_blocks
from eedecode.study import bootstrap as bs
from eedecode.study import claims as cl
from eedecode.study.collect import collect
from eedecode.study.measures import oracle_exit
from eedecode.study.report import write_report

DEPTHS = [1, 2, 3, 4, 5, 6]
HAS_DEMO = all((demo.DEMO_DIR / v / "training_log.json").is_file() for v in demo.VARIANTS)


def blocks_for(model, n=6, T=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.config.vocab_size, (n, T), generator=g)


@pytest.fixture(scope="module")
def records():
    model = cached_tiny_model("llama")
    return collect(ModelRunner(model), blocks_for(model), DEPTHS, sublayer_tokens=0, batch_tokens=64)


@pytest.fixture(scope="module")
def study():
    model = cached_tiny_model("llama")
    config = StudyConfig(cost_reps=0, sublayer_tokens=64, batch_tokens=64, bootstrap=bs.BootstrapConfig(200))
    blocks = blocks_for(model)
    return model, blocks, study_blocks(model, blocks, config=config)


# -- the block bootstrap ------------------------------------------------------------------------------
def test_resamples_draw_whole_blocks():
    w = bs.block_weights(5, 300, seed=1)
    assert w.shape == (300, 5) and torch.all(w.sum(1) == 5)
    assert torch.equal(w, bs.block_weights(5, 300, seed=1)) and not torch.equal(
        w, bs.block_weights(5, 300, 2)
    )
    # positions within a block agree or disagree together: 4 of 8 blocks agree everywhere. A
    # bootstrap over positions would give a narrow interval; over blocks it must stay wide
    agree = torch.tensor([1.0] * 4 + [0.0] * 4).repeat_interleave(100)
    iv = bs.Intervals(bs.BootstrapConfig(2000, seed=0), blocks=8)
    lo, hi = iv.ratio("a", bs.per_block(agree, 100), 100.0)
    assert lo <= 0.25 and hi >= 0.75
    assert bs.ratio(torch.ones(1, 8, dtype=torch.float64), bs.per_block(agree, 100), 100.0).item() == 0.5


def test_verdict_needs_the_whole_interval_on_one_side():
    assert bs.verdict([0.1, 0.3]) == "above" and bs.verdict([-0.3, -0.1]) == "below"
    assert bs.verdict([-0.1, 0.3]) == "not resolved" and bs.verdict([None, None]) == "not resolved"
    assert bs.verdict([0.4, 0.6], reference=0.5) == "not resolved"
    assert bs.interval(torch.arange(101.0), 0.9) == pytest.approx([5.0, 95.0])


# -- gates: the exact curve ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["max-prob", "entropy", "margin", "patience", "cosine"])
def test_the_exact_curve_is_the_sweep_at_every_point_and_between_points(records, name):
    rec, cls = records.lenses["logit"], CRITERIA[name]
    agree = rec.agree(records.final_top1)
    oracle, scores = oracle_exit(agree), rec.scores[name]
    curve = gates.exact_curve(gates.events(cls, scores, agree, oracle, DEPTHS))
    assert curve[0]["threshold"] is None and curve[0]["mean_depth"] == 6.0
    keys = ("agreement", "mean_depth", "too_early", "exact", "too_late")
    thresholds = [p["threshold"] for p in curve[1:]]
    for p, q in zip(curve[1:], gates.gate_sweep(cls, scores, agree, oracle, DEPTHS, thresholds), strict=True):
        assert [p[k] for k in keys] == pytest.approx([q[k] for k in keys])
    if cls.integer:
        return
    # any threshold between two neighbouring points gives the stricter one: no point is missing
    # (in float64: neighbouring float32 scores have no float32 between them)
    scores = scores.double()
    mids = [(a + b) / 2 for a, b in zip(thresholds, thresholds[1:], strict=False)]
    for p, q in zip(curve[1:], gates.gate_sweep(cls, scores, agree, oracle, DEPTHS, mids), strict=False):
        assert [p[k] for k in keys] == pytest.approx([q[k] for k in keys])
    assert len(curve) > 41  # finer than a 41-quantile grid on this data


def test_a_resample_is_the_study_of_the_resampled_blocks(records):
    rec, cls, P = records.lenses["logit"], CRITERIA["max-prob"], records.positions
    agree = rec.agree(records.final_top1)
    oracle, scores = oracle_exit(agree), rec.scores["max-prob"]
    ev = gates.events(cls, scores, agree, oracle, DEPTHS)
    targets = (0.5, 0.7, 0.9)
    whole = gates.bootstrap_depths(ev, torch.ones(1, 6, dtype=torch.float64), P, targets)[0]
    summary = [(gates.cheapest_point(gates.exact_curve(ev), t) or {}).get("mean_depth") for t in targets]
    assert whole.tolist() == pytest.approx(summary)
    w = torch.tensor([[2, 0, 1, 0, 3, 0]], dtype=torch.float64)
    cols = torch.cat([torch.arange(b * P, (b + 1) * P).repeat(int(w[0, b])) for b in range(6)])
    a2 = agree[:, cols]
    ev2 = gates.events(cls, scores[:, cols], a2, oracle_exit(a2), DEPTHS)
    expect = [(gates.cheapest_point(gates.exact_curve(ev2), t) or {}).get("mean_depth") for t in targets]
    assert gates.bootstrap_depths(ev, w, P, targets)[0].tolist() == pytest.approx(expect)


# -- the study's records ------------------------------------------------------------------------------
def test_last_layer_loss_is_the_models_cross_entropy(study):
    model, blocks, result = study
    with torch.no_grad():
        logits = model(blocks).logits[:, :-1].float()
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), blocks[:, 1:].reshape(-1))
    acc = (logits.argmax(-1) == blocks[:, 1:]).float().mean()
    final = result["final_layer"]
    assert final["loss"] == pytest.approx(float(ce), rel=1e-4)
    assert final["accuracy"] == pytest.approx(float(acc))
    assert final["loss_ci"][0] <= final["loss"] <= final["loss_ci"][1]


def test_sublayer_means_leave_out_the_last_layer(study):
    _, _, result = study
    rows, means = result["sublayers"]["rows"], result["sublayers"]["means"]
    after = [r for r in rows if r["point"] == "after_mlp"]
    assert after[-1]["depth"] == 6 and after[-1]["agree"] == 1.0  # by definition
    assert means["after_mlp"]["depths"] == [1, 2, 3, 4, 5]
    inner = [r["agree"] for r in after if r["depth"] < 6]
    assert means["after_mlp"]["agree"] == pytest.approx(sum(inner) / len(inner))
    assert means["after_mlp"]["agree"] < sum(r["agree"] for r in after) / len(after)


def test_every_interval_holds_its_estimate_and_the_intervals_are_written(study, tmp_path):
    _, _, result = study
    logit = result["lenses"]["logit"]
    for row in logit["layers"]:
        lo, hi = row["agreement_ci"]
        assert lo - 1e-9 <= row["agreement"] <= hi + 1e-9
    gate = logit["gates"]["max-prob"]
    assert gate["points"] >= len(gate["curve"]) and gate["curve"][0]["threshold"] is None
    lo, hi = gate["depth_for_agreement_ci"]["0.9"]
    assert lo <= gate["depth_for_agreement"]["0.9"] <= hi
    lo, hi = logit["oracle"]["mean_depth_ci"]
    assert lo <= logit["oracle"]["mean_depth"] <= hi
    files = {p.name for p in write_report(result, tmp_path, plots=False)}
    assert {"bootstrap.json", "summary.md", "layers.csv"} <= files
    header = (tmp_path / "layers.csv").read_text().splitlines()[0].split(",")
    assert "agreement_lo" in header and "agreement_hi" in header
    boot = json.loads((tmp_path / "bootstrap.json").read_text())
    assert boot["unit"] == "block" and len(boot["replicates"]["logit/oracle/mean_depth"]) == 200
    summary = (tmp_path / "summary.md").read_text()
    assert (
        "percentile bootstrap over the 6 blocks" in summary and "## The early-exit paper's claims" in summary
    )


# -- the paper's claims -------------------------------------------------------------------------------
def test_a_claim_is_resolved_only_by_its_whole_interval():
    def verdict(ci, side="above"):
        return cl._claim("k", "s", "m", 0.6, ci, 0.5, side)["verdict"]

    assert verdict([0.55, 0.7]) == "holds" and verdict([0.3, 0.45]) == "does not hold"
    assert verdict([0.45, 0.7]) == "not resolved" and verdict(None) == "not resolved"
    assert verdict([0.3, 0.45], "below") == "holds"


def test_the_studys_claims_follow_their_intervals(study):
    _, _, result = study
    claims = {c["claim"]: c for c in result["claims"]}
    assert {"natural", "ten_layers_early", "sublayers_attention", "sublayers_mlp"} <= set(claims)
    for c in claims.values():
        lo, hi = c["ci"]
        side = "above" if lo > c["reference"] else "below" if hi < c["reference"] else None
        expect = "not resolved" if side is None else "holds" if side == c["holds_if"] else "does not hold"
        assert c["verdict"] == expect
    # a 6-layer model has no 10 layers to spare: the claim reads a quarter of the depth
    assert "quarter" in claims["ten_layers_early"]["measure"]
    share = result["lenses"]["logit"]["oracle"]["share_quarter_early"]
    assert claims["ten_layers_early"]["value"] == share


# -- comparing runs, the training logs ----------------------------------------------------------------
def test_paired_differences_need_the_same_blocks():
    a = {"blocks_hash": "x", "seed": 0, "resamples": 3, "replicates": {"final/loss": [1.0, 2.0, 3.0]}}
    b = {**a, "replicates": {"final/loss": [0.5, 1.4, 2.6]}}
    (row,) = compare.paired(a, b)
    assert row["ci"][0] > 0 and row["verdict"] == "above"
    (same,) = compare.paired(a, a)
    assert same["verdict"] == "not resolved"
    with pytest.raises(ValueError, match="blocks_hash"):
        compare.paired(a, {**b, "blocks_hash": "y"})


def test_training_cost_reads_the_logs(tmp_path):
    dirs = {}
    for name, loss, acc in (("plain", 4.4, 0.24), ("joint", 4.5, 0.22)):
        d = tmp_path / name
        d.mkdir()
        ev = {"tokens": 100, "loss": [6.0, loss], "accuracy": [0.1, acc]}
        (d / "training_log.json").write_text(json.dumps({"final_eval": ev, "steps": 5, "tokens_seen": 9}))
        dirs[name] = d
    cost = compare.training_cost(dirs)
    assert cost["joint_minus_plain"]["loss"] == pytest.approx(0.1)
    assert cost["joint_minus_plain"]["accuracy"] == pytest.approx(-0.02)


@pytest.mark.skipif(not HAS_DEMO, reason="the demo checkpoints are not in this checkout")
def test_training_cost_of_the_shipped_demo_models():
    cost = compare.training_cost()
    for name, variant in (("plain", "plain"), ("joint", "early_exit")):
        log = json.loads((demo.DEMO_DIR / variant / "training_log.json").read_text())
        assert cost[name]["loss"] == log["final_eval"]["loss"][-1]
        assert cost[name]["accuracy"] == log["final_eval"]["accuracy"][-1]
    assert cost["joint_minus_plain"]["loss"] == pytest.approx(cost["joint"]["loss"] - cost["plain"]["loss"])


# -- the speed prediction against the bench -----------------------------------------------------------
def test_speed_table_acceptance_counts_accepted_drafts():
    a = torch.tensor([[1, 1, 0, 1, 1, 1, 0, 0, 1]]).bool()
    (row,) = speed.speed_table(a.view(1, -1), [1], 9, [1], [2], None)
    assert row["tokens_per_round"] == pytest.approx(7 / 3) and row["acceptance"] == pytest.approx(4 / 6)


def test_the_miss_factors_into_acceptance_cost_and_the_rest():
    study_row = {"exit_layer": 2, "draft_length": 1, "tokens_per_round": 1.6, "acceptance": 0.6}
    study_row |= {"c": 0.4, "v": 1.2, "ideal_speedup": 1.6 / 1.6, "tokens_per_round_ci": [1.55, 1.65]}
    result = {"speed": {"tables": {"logit": [study_row]}, "exit_layers": [2], "draft_lengths": [1]}}
    bench_ss = {"method": "eedecode_ss", "batch_size": 1, "exit_layer": 2, "num_speculations": 1}
    bench_ss |= {"mean_tokens_per_round": 1.8, "mean_drafts_per_round": 1.0, "speedup_vs_ar": 1.05}
    record = {"settings": {"num_prompts": 4}, "step_costs": {"c": 0.3, "v": 1.3}, "results": [bench_ss]}
    ch = speed_check.check(result, record)
    f = ch["factors"]
    assert f["acceptance_model"] == pytest.approx(1.8 / 1.6) and f["cost_model"] == pytest.approx(1.6 / 1.6)
    assert f["rest"] == pytest.approx(1.05 / (1.8 / 1.6))
    assert math.prod(f.values()) == pytest.approx(ch["miss"])
    assert sum(ch["log_shares"].values()) == pytest.approx(1.0)
    assert ch["bench_tokens_per_round_in_study_ci"] is False
    table = speed_check.markdown([ch])
    assert "| E=2, k=1 | study |" in table and "| | bench |" in table
    with pytest.raises(ValueError, match="no speed cell"):
        speed_check.check(result, {**record, "results": [{**bench_ss, "num_speculations": 3}]})
