"""eedecode's drafter inside vLLM (eedecode/serving/): the policy, the row matching and lookup on
hand-made inputs, the proposer's options and lookup drafts on a stand-in for vLLM's config, and the
truncated-checkpoint export against Hugging Face (no vLLM needed); with vLLM installed (the CPU
build is enough; these are slow tests), the exit drafts against Hugging Face's forward of the
truncated model, greedy output against vLLM without speculation at batch 1 and 4, and drafting
switched off above ``max_batch``."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import eedecode
from eedecode.serving.policy import DraftOptions, DraftPolicy
from eedecode.serving.rows import RowState, RowTracker

PROPOSER = "eedecode.serving.vllm.EarlyExitProposer"
MODEL = str(eedecode.demo_model_path("early_exit"))


# --- the policy -------------------------------------------------------------------------------


def test_policy_switches_drafting_off_at_large_batches():
    options = DraftOptions(exit_layer=2, max_batch_exit=4, max_batch=16, lookup_ngram_min=1)
    policy = DraftPolicy(options)
    assert policy.sources(1) == (1, True)
    assert policy.sources(4) == (1, True)
    assert policy.sources(5) == (2, False)  # long lookup matches only: early-exit drafts cost compute
    assert policy.sources(16) == (2, False)
    assert policy.sources(17) == (None, False)  # no drafts at all


def test_exit_drafts_are_made_while_they_pay():
    policy = DraftPolicy(DraftOptions(exit_layer=2, probe_every=8, smoothing=0.5))
    assert policy.exit_budget(4) == 4  # nothing measured yet: try them all
    policy.observe_step(4.0)
    policy.observe_pass(2.0)
    for accepted in (3, 2, 1, 2):  # per position: 1, 0.75, 0.25, 0 -> smoothed
        policy.record("exit", 4, accepted)
    rates = policy.exit_rates
    assert rates[0] > rates[1] > rates[2] > rates[3]
    expected = next(j for j in range(4) if rates[j] * 4.0 <= 2.0)
    assert 0 < expected < 4 and policy.exit_budget(4) == expected
    policy.observe_pass(1000.0)  # passes now cost more than any draft brings
    budgets = [(policy.sources(1), policy.exit_budget(4)) for _ in range(16)]
    assert [b for _, b in budgets].count(1) == 2 and {b for _, b in budgets} == {0, 1}  # probes only
    assert policy.counts["exit"] == [16, 8]


def test_without_clocks_exit_drafts_stop_on_poor_acceptance():
    policy = DraftPolicy(DraftOptions(exit_layer=2, min_acceptance=0.3, probe_every=8), timed=False)
    policy.observe_step(1.0)
    policy.observe_pass(1000.0)  # ignored: tensor-parallel ranks must not decide by their clocks
    policy.record("exit", 20, 10)
    assert policy.exit_budget(4) == 4
    policy.record("exit", 40, 0)
    policy.sources(1)  # a call that is not a probe
    assert policy.exit_budget(4) == 0


def test_idle_gaps_are_not_steps():
    policy = DraftPolicy(DraftOptions(exit_layer=2))
    policy.observe_step(60.0)  # the first interval was an idle gap
    policy.observe_step(0.004)
    assert policy.step_s == 0.004
    policy.observe_step(30.0)  # a gap between requests
    assert policy.step_s == 0.004


def test_options_are_checked():
    with pytest.raises(ValueError, match="unknown"):
        DraftOptions.from_dict({"exit_layers": 2})
    with pytest.raises(ValueError, match="draft_confidence"):
        DraftOptions.from_dict({"draft_confidence": 2.0})


# --- rows and lookup --------------------------------------------------------------------------


def test_lookup_continues_the_latest_occurrence_of_the_longest_ngram():
    state = RowState(cache_row=0)
    state.take(np.array([5, 6, 7, 8, 9, 5, 6, 7, 1, 5, 6]), continuing=False)
    assert state.lookup(3, ngram_max=3, ngram_min=1) == [7, 1, 5]  # "5 6" last continued with 7 1
    state.take(np.array([5, 6, 7, 8, 9, 5, 6, 7, 1, 5, 6, 7, 8]), continuing=True)
    assert state.lookup(2, ngram_max=3, ngram_min=1) == [9, 5]  # "6 7 8" occurred once
    state.take(np.array([5, 6, 7, 8, 9, 5, 6, 7, 1, 5, 6, 7, 8, 2, 9]), continuing=True)
    assert state.lookup(2, ngram_max=3, ngram_min=2) == []  # only "9" occurred before
    assert state.lookup(2, ngram_max=3, ngram_min=1) == [5, 6]
    state.take(np.array([1, 2, 3]), continuing=False)
    assert state.lookup(2, ngram_max=3, ngram_min=1) == []


def test_rows_are_matched_by_their_tokens_when_requests_move():
    tracker = RowTracker()
    a, b, c = np.array([1, 2, 3, 4]), np.array([7, 8, 9]), np.array([1, 2, 3, 5])
    (sa, new_a), (sb, new_b), (sc, _) = tracker.match([0, 1, 2], [a, b, c])
    assert not new_a and not new_b and len({id(sa), id(sb), id(sc)}) == 3
    sc.cached = 3  # suppose the drafter cached c's first three tokens
    # a finished; vLLM moved c into row 0; b went on
    (s0, cont0), (s1, cont1) = tracker.match([0, 1], [np.append(c, 6), np.append(b, 10)])
    assert (s0, s1) == (sc, sb) and cont0 and cont1
    assert s0.cached == 3  # its cache survives the move
    # a new request that shares a prefix with a's cached tokens reuses a's state and prefix
    sa.cached = 4
    (s0, _), (s1, _), (s2, cont2) = tracker.match(
        [0, 1, 2], [np.append(c, [6, 7]), np.append(b, [10, 11]), a[:3]]
    )
    assert s2 is sa and not cont2 and s2.cached == 2  # all but the last token's keys reused


def test_identical_prompts_get_separate_states():
    tracker = RowTracker()
    seq = np.array([3, 4, 5])
    (s0, _), (s1, _) = tracker.match([0, 1], [seq, seq])
    assert s0 is not s1 and s0.cache_row != s1.cache_row


# --- the proposer and the export, without vLLM ---------------------------------------------------


def _fake_vllm_config(additional_config=None, layers=8, max_model_len=64, pipeline=1, model=MODEL):
    """The parts of vLLM's ``VllmConfig`` the proposer reads."""
    return SimpleNamespace(
        speculative_config=SimpleNamespace(num_speculative_tokens=3),
        parallel_config=SimpleNamespace(pipeline_parallel_size=pipeline, tensor_parallel_size=1),
        model_config=SimpleNamespace(
            max_model_len=max_model_len, model=model, hf_config=SimpleNamespace(num_hidden_layers=layers)
        ),
        additional_config=additional_config if additional_config is not None else {},
    )


def test_the_exit_layer_comes_from_the_options_the_checkpoint_or_the_depth(tmp_path):
    from eedecode.serving.vllm import resolve_options

    assert resolve_options(_fake_vllm_config()).exit_layer == 2  # the demo model's eedecode.json
    assert resolve_options(_fake_vllm_config({"eedecode": {"exit_layer": 5}})).exit_layer == 5
    assert resolve_options(_fake_vllm_config(layers=12, model=str(tmp_path))).exit_layer == 3
    with pytest.raises(ValueError, match="unknown"):
        resolve_options(_fake_vllm_config({"eedecode": {"exit": 5}}))


def test_the_proposer_drafts_by_lookup_within_the_model_length():
    from eedecode.serving.vllm import EarlyExitProposer

    with pytest.raises(ValueError, match="pipeline"):
        EarlyExitProposer(_fake_vllm_config(pipeline=2))
    options = DraftOptions(exit_layer=2, exit_drafts=False)
    proposer = EarlyExitProposer(_fake_vllm_config(max_model_len=12), options=options)
    proposer.load_model(None)  # no exit drafts: the model is not touched
    ids = np.zeros((3, 16), dtype=np.int32)
    ids[0, :7] = [5, 6, 7, 8, 9, 5, 6]  # "5 6" occurred before, followed by 7 8 9
    ids[1, :10] = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]  # room for one token more: one draft
    ids[2, :3] = [4, 4, 4]  # no token sampled this step (e.g. a prefill chunk): no drafts
    drafts = proposer.propose([[6], [2], []], np.array([7, 10, 3]), ids)
    assert drafts == [[7, 8, 9], [3], []]
    assert proposer.rows.by_row[0].last_source == "lookup"
    # row 0: the target took two drafts and corrected the third, and "1" has no earlier match;
    # row 1: took its draft and reached the model length
    ids[0, 7:10], ids[1, 10:12] = [7, 8, 1], [3, 4]
    assert proposer.propose([[7, 8, 1], [3, 4], []], np.array([10, 12, 3]), ids) == [[], [], []]
    assert proposer.policy.counts["lookup"] == [3, 2]  # row 1's outcome is not seen at the end


def test_export_writes_the_first_layers_as_a_model_that_computes_the_exit_layer(tmp_path):
    from transformers import AutoModelForCausalLM

    from eedecode.serving.export import export_truncated

    with pytest.raises(ValueError, match="exit_layer"):
        export_truncated(MODEL, tmp_path / "bad", 8)
    counts = export_truncated(MODEL, tmp_path / "exit2", 2)
    assert 0 < counts["copied_parameters"] < counts["source_parameters"]
    full = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    small = AutoModelForCausalLM.from_pretrained(tmp_path / "exit2", dtype=torch.float32)
    assert small.config.num_hidden_layers == 2 and (tmp_path / "exit2" / "tokenizer.json").is_file()
    ids = torch.tensor([[1, 518, 1173, 25, 262]])
    with torch.no_grad():
        hidden = full(ids, output_hidden_states=True).hidden_states[2]  # after layer 2, before the norm
        expected = full.lm_head(full.model.norm(hidden))
        torch.testing.assert_close(small(ids).logits, expected)


# --- inside vLLM ------------------------------------------------------------------------------


def _engine(**kwargs):
    from vllm import LLM

    return LLM(
        model=MODEL, dtype="float32", seed=0, max_model_len=512, max_num_seqs=4, enforce_eager=True, **kwargs
    )


def _shutdown(llm) -> None:
    """Stop an engine's core now, while pytest still captures its logs (not at interpreter exit)."""
    core = getattr(llm.llm_engine, "engine_core", None)
    if core is not None:
        core.shutdown()


def _spec(k: int = 3) -> dict:
    return {"method": "custom_class", "model": PROPOSER, "num_speculative_tokens": k}


@pytest.fixture(scope="module")
def prompts():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    texts = [
        "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
        "def fib(n):\n    if n < 2:\n        return n\n",
        "import os\nimport sys\n\n\ndef main(argv):\n",
        "    for i in range(len(xs)):\n        if xs[i] ==",
    ]
    return [tokenizer(t)["input_ids"] for t in texts]


def _run(llm, prompts, batch_size: int, max_tokens: int = 48, ignore_eos: bool = False) -> list:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, detokenize=False, ignore_eos=ignore_eos)
    out = []
    for g in range(0, len(prompts), batch_size):
        group = [TokensPrompt(prompt_token_ids=p) for p in prompts[g : g + batch_size]]
        out += [r.outputs[0] for r in llm.generate(group, params, use_tqdm=False)]
    return out


def _generate(llm, prompts, batch_size: int) -> list[list[int]]:
    return [list(c.token_ids) for c in _run(llm, prompts, batch_size)]


def _drafted(completions) -> tuple[int, int]:
    """Draft tokens proposed and accepted, from vLLM's per-request speculative metrics."""
    metrics = [c.spec_decode_metrics for c in completions if c.spec_decode_metrics is not None]
    return (
        sum(m.num_draft_tokens for m in metrics),
        sum(j * n for m in metrics for j, n in enumerate(m.histogram)),
    )


@pytest.fixture(scope="module")
def engines():
    pytest.importorskip("vllm")
    plain = _engine()
    # exit drafts only, and a small max_batch so that batch 4 must switch drafting off
    options = {
        "exit_layer": 2,
        "lookup": False,
        "max_batch_exit": 4,
        "max_batch": 2,
        "draft_confidence": 0.0,
        "cost_aware": False,
    }
    drafted = _engine(
        speculative_config=_spec(),
        additional_config={"eedecode": options},
        per_request_spec_decode_metrics="summary",
    )
    yield plain, drafted
    for llm in (plain, drafted):
        _shutdown(llm)


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 4])
def test_greedy_output_equals_vllm_without_speculation(engines, prompts, batch_size):
    plain, drafted = engines
    assert _generate(drafted, prompts, batch_size) == _generate(plain, prompts, batch_size)


@pytest.mark.slow
def test_exit_drafts_are_accepted_and_stop_above_max_batch(engines, prompts):
    _, drafted = engines
    proposed, accepted = _drafted(_run(drafted, prompts, batch_size=1, ignore_eos=True))
    # 3 drafts a round, no confidence stop: about a third are taken (garbage drafts: ~0); the
    # drafts' exactness is checked against Hugging Face below
    assert proposed > 100 and accepted / proposed > 0.25, (proposed, accepted)
    # the same requests 4 at a time, above max_batch=2: drafts only while the batch fills up
    assert _drafted(_run(drafted, prompts, batch_size=4, ignore_eos=True))[0] < proposed / 20


@pytest.fixture
def in_process_engine(monkeypatch):
    """An engine whose model lives in this process, so that a test can reach it."""
    pytest.importorskip("vllm")
    with monkeypatch.context() as m:
        m.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        llm = _engine(speculative_config=_spec(4))
    yield llm
    _shutdown(llm)


@pytest.mark.slow
def test_exit_drafts_equal_the_truncated_models_greedy_continuation(in_process_engine):
    """The proposer, called by hand on a target model loaded by vLLM, drafts what Hugging Face's
    forward of the first two layers + norm + LM head decodes greedily, across a partial accept
    and a request that moves to another row."""
    from transformers import AutoModelForCausalLM

    from eedecode.serving.vllm import EarlyExitProposer

    runner = in_process_engine.llm_engine.model_executor.driver_worker.worker.model_runner
    options = DraftOptions(exit_layer=2, lookup=False, draft_confidence=0.0, cost_aware=False)
    proposer = EarlyExitProposer(runner.vllm_config, options=options)
    proposer.load_model(runner.model)

    hf = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    hf.model.layers = hf.model.layers[:2]
    hf.config.num_hidden_layers = 2

    def reference(seq):
        out = hf.generate(torch.tensor([seq]), max_new_tokens=4, do_sample=False, min_new_tokens=4)
        return out[0, len(seq) :].tolist()

    def propose(seqs_by_row: dict[int, list[int]], sampled_by_row: dict[int, list[int]]):
        width = max(seqs_by_row) + 1
        ids = np.zeros((width, 512), dtype=np.int32)
        counts = np.zeros(width, dtype=np.int32)
        for row, seq in seqs_by_row.items():
            ids[row, : len(seq)], counts[row] = seq, len(seq)
        sampled = [sampled_by_row.get(r, []) for r in range(width)]
        return proposer.propose(sampled, counts, ids)

    seq = [1, 518, 1173, 25, 262, 272, 4025, 859]
    first = propose({0: seq}, {0: [859]})[0]
    assert first == reference(seq)
    seq2 = seq + first[:2] + [7]  # the target took two drafts, then corrected the third
    assert propose({0: seq2}, {0: first[:2] + [7]})[0] == reference(seq2)
    other = [1, 262, 300, 301]
    seq3 = seq2 + [9]
    drafts = propose({0: other, 1: seq3}, {0: [301], 1: [9]})  # the request moved to row 1
    assert drafts[1] == reference(seq3) and drafts[0] == reference(other)
