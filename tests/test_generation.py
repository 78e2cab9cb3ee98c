"""The first invariant: greedy self-speculative == greedy autoregressive == HF generate, token for token
(torch.equal on every test config; tests/test_hot_path.py compares self-speculative with
autoregressive decoding directly)."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, cached_tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import StoppingCriteria, StoppingCriteriaList

import eedecode

DRAFT_LENGTHS = (1, 2, 3, 5, 8)
REF_NEW_TOKENS = 40


def prompt(batch: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 97, (batch, length), generator=g)


def model_without_eos(arch: str):
    return cached_tiny_model(arch, eos_token_id=None, bos_token_id=None)


def SPEC_AND_AR(exit_layer: int, k: int):
    """(mode, settings) pairs: self-speculative at (E, k), and the autoregressive baseline."""
    return [("self_speculative", dict(exit_layer=exit_layer, num_speculations=k)), ("autoregressive", {})]


_HF_CACHE: dict = {}


def hf_greedy(model, ids: torch.Tensor, max_new_tokens: int, **kw) -> torch.Tensor:
    key = (id(model), ids.numpy().tobytes(), ids.shape, max_new_tokens, tuple(sorted(kw.items())))
    if key not in _HF_CACHE:
        _HF_CACHE[key] = model.generate(
            ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, **kw
        )
    return _HF_CACHE[key]


def assert_greedy_equal(model, ours: torch.Tensor, ref: torch.Tensor, prompt_len: int) -> None:
    """Equal token for token (torch.equal: no tie tolerance on the test configs). On failure the
    message gives the full model's top-2 logit gap where the outputs part, to tell a genuine
    floating-point tie (packed weights round differently from HF's) from a bug."""
    if torch.equal(ours, ref):
        return
    n = min(ours.shape[1], ref.shape[1])
    diff = (ours[:, :n] != ref[:, :n]).nonzero()
    if len(diff) == 0:
        raise AssertionError(f"lengths differ: {ours.shape} vs {ref.shape}")
    row, col = diff[0].tolist()
    with torch.no_grad():
        top2 = model(ref[row : row + 1, :col]).logits[0, -1].topk(2).values
    gap = (top2[0] - top2[1]).item()
    raise AssertionError(f"row {row} differs at position {col} (top-2 logit gap {gap:.3g}): {ours} vs {ref}")


@pytest.mark.parametrize("arch", ARCHS)
def test_every_exit_layer_and_draft_length_matches_hf(arch):
    model = model_without_eos(arch)
    L = model.config.num_hidden_layers
    ids = prompt(1, 11, seed=1)
    ref = hf_greedy(model, ids, REF_NEW_TOKENS)
    ar = eedecode.generate(model, ids, mode="autoregressive", max_new_tokens=REF_NEW_TOKENS)
    assert_greedy_equal(model, ar, ref, 11)
    for exit_layer in range(1, L):
        for k in DRAFT_LENGTHS:
            out = eedecode.generate(
                model, ids, exit_layer=exit_layer, num_speculations=k, max_new_tokens=REF_NEW_TOKENS
            )
            assert_greedy_equal(model, out, ref, 11)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    arch=st.sampled_from(ARCHS),
    prompt_len=st.integers(1, 40),
    seed=st.integers(0, 3),
    exit_layer=st.integers(1, 5),
    k=st.sampled_from(DRAFT_LENGTHS),
    max_new=st.integers(1, REF_NEW_TOKENS),
)
def test_drawn_cases_match_hf(arch, prompt_len, seed, exit_layer, k, max_new):
    """Prompt lengths 1..40 and max_new_tokens that end mid-round: the output is HF's, cut at
    max_new_tokens (greedy decoding is prefix-consistent, so one HF run of 40 serves every cut)."""
    model = model_without_eos(arch)
    ids = prompt(1, prompt_len, seed)
    ref = hf_greedy(model, ids, REF_NEW_TOKENS)[:, : prompt_len + max_new]
    out = eedecode.generate(
        model,
        ids,
        exit_layer=exit_layer,
        num_speculations=k,
        max_new_tokens=max_new,
        return_dict_in_generate=True,
    )
    assert out.sequences.shape[1] == prompt_len + max_new
    assert_greedy_equal(model, out.sequences, ref, prompt_len)
    ar = eedecode.generate(model, ids, mode="autoregressive", max_new_tokens=max_new)
    assert_greedy_equal(model, ar, ref, prompt_len)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("stop_at", [0, 4, 9])
def test_eos_ends_where_hf_ends(arch, stop_at):
    """With EOS set to the token HF emits at step ``stop_at``, both stop right after it."""
    model = model_without_eos(arch)
    ids = prompt(1, 7, seed=2)
    free = hf_greedy(model, ids, 30)
    eos = free[0, 7 + stop_at].item()
    first = (free[0, 7:] == eos).nonzero()[0].item()  # its first occurrence may be earlier
    ref = hf_greedy(model, ids, 30, eos_token_id=eos)
    assert ref.shape[1] == 7 + first + 1
    for k in (1, 3, 8):
        for mode, mode_settings in SPEC_AND_AR(2, k):
            out = eedecode.generate(
                model, ids, mode=mode, **mode_settings, max_new_tokens=30, eos_token_id=[eos, 96]
            )
            assert torch.equal(out, ref)


class StopOnToken(StoppingCriteria):
    def __init__(self, token: int):
        self.token = token

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token


class StopAtLength(StoppingCriteria):
    def __init__(self, length: int):
        self.length = length

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("criterion", ["token", "length"])
def test_stopping_criteria_end_where_hf_ends(arch, criterion):
    model = model_without_eos(arch)
    ids = prompt(1, 9, seed=3)
    free = hf_greedy(model, ids, 30)
    crit = StopOnToken(free[0, 9 + 6].item()) if criterion == "token" else StopAtLength(9 + 13)
    ref = model.generate(
        ids,
        max_new_tokens=30,
        do_sample=False,
        pad_token_id=0,
        stopping_criteria=StoppingCriteriaList([crit]),
    )
    assert ref.shape[1] < 9 + 30
    for k in (2, 5):
        out = eedecode.generate(
            model,
            ids,
            exit_layer=3,
            num_speculations=k,
            max_new_tokens=30,
            stopping_criteria=StoppingCriteriaList([crit]),
        )
        assert torch.equal(out, ref)


def test_hf_aliases_and_generation_config():
    from transformers import GenerationConfig

    model = model_without_eos("llama")
    ids = prompt(1, 5, seed=4)
    ref = hf_greedy(model, ids, 12)
    a = eedecode.generate(
        model,
        ids,
        assistant_early_exit=2,
        num_assistant_tokens=3,
        max_new_tokens=12,
        return_dict_in_generate=True,
    )
    cfg = GenerationConfig(
        assistant_early_exit=2, num_assistant_tokens=3, max_new_tokens=12, return_dict_in_generate=True
    )
    b = eedecode.generate(model, ids, generation_config=cfg)
    for out in (a, b):
        assert torch.equal(out.sequences, ref)
        assert out.stats.exit_layer == 2 and out.stats.num_speculations == 3
    # drop-in call style: **inputs
    c = eedecode.generate(
        model, **{"input_ids": ids, "attention_mask": torch.ones_like(ids)}, exit_layer=2, max_new_tokens=12
    )
    assert torch.equal(c, ref)


def test_stats_are_consistent():
    model = model_without_eos("llama")
    ids = prompt(1, 6, seed=5)
    out = eedecode.generate(
        model, ids, exit_layer=3, num_speculations=4, max_new_tokens=33, return_dict_in_generate=True
    )
    s = out.stats
    assert s.new_tokens == 33
    assert sum(s.accepted_length_histogram) == s.rounds == s.row_rounds
    assert sum(a * n for a, n in enumerate(s.accepted_length_histogram)) == s.accepted_tokens
    assert s.accepted_tokens <= s.drafted_tokens <= 4 * s.rounds
    # the first token comes from the prefill; every round adds accepted + 1
    assert 1 + s.accepted_tokens + s.rounds >= 33
    assert 0.0 <= s.acceptance_rate <= 1.0
    assert s.mean_tokens_per_round == pytest.approx((s.accepted_tokens + s.rounds) / s.rounds)
    assert s.wall_time_s > 0 and s.tokens_per_second > 0


def test_text_streamer_receives_prompt_then_new_tokens(capsys):
    from transformers import TextStreamer

    class Recorder:
        def __init__(self):
            self.calls = []

        def put(self, value):
            self.calls.append(value.tolist())

        def end(self):
            self.calls.append("end")

    model = model_without_eos("llama")
    ids = prompt(1, 5, seed=6)
    rec = Recorder()
    out = eedecode.generate(model, ids, exit_layer=2, num_speculations=3, max_new_tokens=15, streamer=rec)
    assert rec.calls[0] == ids.tolist() and rec.calls[-1] == "end"
    streamed = [t for call in rec.calls[1:-1] for t in call]
    assert streamed == out[0, 5:].tolist()

    class Tok:  # the minimal tokenizer TextStreamer needs
        def decode(self, ids, **kw):
            return "".join(f"<{i}>" for i in ids)

    eedecode.generate(
        model, ids, exit_layer=2, max_new_tokens=6, streamer=TextStreamer(Tok(), skip_prompt=True)
    )
    printed = capsys.readouterr().out
    assert printed.strip() == "".join(f"<{i}>" for i in out[0, 5:11].tolist())


def test_max_new_tokens_zero_is_refused_as_hf_refuses_it():
    model = model_without_eos("llama")
    ids = prompt(1, 5, seed=7)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(ids, max_new_tokens=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        eedecode.generate(model, ids, exit_layer=2, max_new_tokens=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_confidence_threshold_drafts_less_and_stays_lossless(arch):
    """A threshold above every draft's confidence leaves one draft per round; below, all k."""
    model = model_without_eos(arch)
    ids = prompt(1, 8, seed=8)
    ref = hf_greedy(model, ids, 30)
    drafted = {}
    for threshold in (None, 0.0, 1.0):
        out = eedecode.generate(
            model,
            ids,
            exit_layer=2,
            num_speculations=5,
            max_new_tokens=30,
            draft_confidence_threshold=threshold,
            return_dict_in_generate=True,
        )
        assert_greedy_equal(model, out.sequences, ref, 8)
        drafted[threshold] = out.stats.drafted_tokens / out.stats.rounds
    assert drafted[1.0] <= 1.0  # (the last round may have no room for a draft)
    assert drafted[0.0] == drafted[None] > 1.0
    hf_alias = eedecode.generate(
        model,
        ids,
        exit_layer=2,
        num_speculations=5,
        max_new_tokens=30,
        assistant_confidence_threshold=1.0,
        return_dict_in_generate=True,
    )
    assert hf_alias.stats.drafted_tokens <= hf_alias.stats.rounds
