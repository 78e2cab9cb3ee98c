"""Sampling: HF-compatible warpers, and speculative sampling that reproduces the target distribution."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import tiny_model
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import eedecode
from eedecode import decoding
from eedecode.sampling import (
    SamplingParams,
    always_accept,
    greedy_accept,
    probabilities,
    speculative_accept,
    warp_logits,
)

V = 8  # a vocabulary small enough to enumerate every 3-token continuation


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(True, 0.7, None, None),
        SamplingParams(True, 1.0, 3, None),
        SamplingParams(True, 1.0, None, 0.8),
        SamplingParams(True, 1.3, 20, 0.9),
        SamplingParams(True, 1.0, 0, 1.0),
    ],
)
def test_warpers_match_hf(params):
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0)) * 3
    logits[0, :4] = 2.0  # ties at the top-k boundary
    ref = logits.clone()
    if params.temperature != 1.0:
        ref = TemperatureLogitsWarper(params.temperature)(None, ref)
    if params.top_k:
        ref = TopKLogitsWarper(params.top_k)(None, ref)
    if params.top_p is not None and params.top_p < 1.0:
        ref = TopPLogitsWarper(params.top_p)(None, ref)
    got = warp_logits(logits, params)
    assert torch.equal(torch.isinf(got), torch.isinf(ref))
    torch.testing.assert_close(got[~torch.isinf(got)], ref[~torch.isinf(ref)])


def test_greedy_accept_counts_the_agreeing_prefix():
    target_tokens = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8], [1, 2, 3, 4]])
    logits = torch.nn.functional.one_hot(target_tokens, 10).float()  # [B, k+1, V]
    drafts = torch.tensor([[5, 6, 7], [5, 9, 7], [0, 2, 3]])
    tokens, n = greedy_accept(drafts, logits)
    assert n.tolist() == [4, 2, 1]
    assert tokens.tolist() == target_tokens.tolist()


def test_speculative_accept_unit_cases():
    """q == p: every draft is accepted and the bonus comes from p. Disjoint supports: the first
    draft is always rejected and the replacement comes from p (the residual is p itself)."""
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(64, 3, 6, generator=g), -1)
    drafts = torch.multinomial(p[:, :2].reshape(-1, 6), 1, generator=g).view(64, 2)
    tokens, n = speculative_accept(drafts, p[:, :2], p, g)
    assert (n == 3).all() and torch.equal(tokens[:, :2], drafts)
    q = torch.zeros(64, 2, 6)
    q[..., 0] = 1.0
    p2 = torch.zeros(64, 3, 6)
    p2[..., 1:] = 0.2
    tokens, n = speculative_accept(torch.zeros(64, 2, dtype=torch.long), q, p2, g)
    assert (n == 1).all() and (tokens[:, 0] != 0).all()


# -- the statistical test ----------------------------------------------------------------------------
def exact_joint(model, prompt: torch.Tensor, params: SamplingParams, n: int = 3) -> torch.Tensor:
    """P(t1..tn | prompt) under the full model and the warpers, for every continuation: ``[V]*n``."""
    joint = torch.ones(())
    for depth in range(n):
        prefixes = list(itertools.product(range(V), repeat=depth))
        ctx = torch.tensor([list(prompt) + list(pre) for pre in prefixes])
        with torch.no_grad():
            probs = probabilities(model(ctx).logits[:, -1].float(), params).double()  # [V^depth, V]
        joint = joint.reshape(-1, 1) * probs  # [V^depth, V]
    return joint.reshape([V] * n)


def chi_square_p_value(counts: torch.Tensor, expected_probs: torch.Tensor) -> float:
    """Pearson's chi-square goodness of fit; cells expected below 5 are pooled into one."""
    counts, probs = counts.flatten().double(), expected_probs.flatten().double()
    N = counts.sum()
    expected = probs * N
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    dof = int(keep.sum()) - 1
    # survival function of chi2(dof) = regularized upper incomplete gamma Q(dof/2, stat/2)
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), stat / 2))


def sampled_joint(
    model, prompt, params, mode, rows=20000, seed=0, accept_rule=None, gumbel=None, monkeypatch=None
):
    if accept_rule is not None or gumbel is not None:
        original = decoding.TokenChooser.__init__

        def patched(self, p, generator=None, rule=None, gumbel_drafts=None):
            original(self, p, generator, accept_rule, gumbel)

        monkeypatch.setattr(decoding.TokenChooser, "__init__", patched)
    ids = torch.tensor([prompt] * rows)
    # with max_new_tokens=4: one prefill token, then a round of 2 drafts
    settings = dict(exit_layer=1, num_speculations=3) if mode == "self_speculative" else {}
    out = eedecode.generate(
        model,
        ids,
        mode=mode,
        **settings,
        max_new_tokens=4,
        do_sample=True,
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        seed=seed,
    )
    first3 = out[:, len(prompt) : len(prompt) + 3]
    flat = first3[:, 0] * V * V + first3[:, 1] * V + first3[:, 2]
    return torch.bincount(flat, minlength=V**3).reshape(V, V, V)


@pytest.fixture(scope="module")
def small_vocab_model():
    # Weights scaled up so that the early exit disagrees with the final layer often enough for a
    # wrong rule to show, while drafts are still accepted 25-70% of the time (bonus tokens occur).
    model = tiny_model("llama", seed=3, vocab_size=V, eos_token_id=None, bos_token_id=None, pad_token_id=None)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    return model


PARAMS = {
    "plain": SamplingParams(True, 1.0, 0, 1.0),
    "temperature": SamplingParams(True, 0.6, 0, 1.0),
    "top_k": SamplingParams(True, 1.0, 4, 1.0),
    "top_p": SamplingParams(True, 1.0, 0, 0.85),
    "combined": SamplingParams(True, 1.4, 6, 0.9),
}
PROMPT = [3, 1, 4, 1, 5]


@pytest.mark.parametrize("name", PARAMS)
def test_self_speculative_sampling_reproduces_the_target_distribution(small_vocab_model, name):
    params = PARAMS[name]
    exact = exact_joint(small_vocab_model, PROMPT, params)
    counts = sampled_joint(small_vocab_model, PROMPT, params, "self_speculative", seed=1)
    assert counts.sum() == 20000
    p_value = chi_square_p_value(counts, exact)
    assert p_value > 1e-3, f"{name}: self-speculative samples do not follow the target (p={p_value:.2g})"


@pytest.mark.parametrize("name", ["plain", "temperature"])
def test_gumbel_max_drafts_from_the_fused_head_reproduce_the_target(small_vocab_model, name, monkeypatch):
    """The CUDA path (drafts are the exit-head kernel's Gumbel-max samples, q rebuilt from the
    exit query cache), forced on the CPU through the kernel's reference."""
    params = PARAMS[name]
    exact = exact_joint(small_vocab_model, PROMPT, params)
    counts = sampled_joint(
        small_vocab_model, PROMPT, params, "self_speculative", seed=3, gumbel=True, monkeypatch=monkeypatch
    )
    p_value = chi_square_p_value(counts, exact)
    assert p_value > 1e-3, f"{name}: Gumbel drafts do not give the target (p={p_value:.2g})"


def test_autoregressive_sampling_reproduces_the_target_distribution(small_vocab_model):
    params = PARAMS["combined"]
    counts = sampled_joint(small_vocab_model, PROMPT, params, "autoregressive", seed=2)
    assert chi_square_p_value(counts, exact_joint(small_vocab_model, PROMPT, params)) > 1e-3


def test_the_statistical_test_fails_on_a_wrong_acceptance_rule(small_vocab_model, monkeypatch):
    """Always accepting the drafts samples from the draft model, not the target: the same check
    that passes above must reject it."""
    params = PARAMS["plain"]
    exact = exact_joint(small_vocab_model, PROMPT, params)
    counts = sampled_joint(
        small_vocab_model,
        PROMPT,
        params,
        "self_speculative",
        seed=1,
        accept_rule=always_accept,
        monkeypatch=monkeypatch,
    )
    p_value = chi_square_p_value(counts, exact)
    assert p_value < 1e-6, f"the wrong rule went unnoticed (p={p_value:.2g})"
    assert math.isfinite(p_value)


def test_same_seed_same_output_and_generator_argument(small_vocab_model):
    model = tiny_model("llama", eos_token_id=None, bos_token_id=None)
    ids = torch.randint(3, 97, (3, 6), generator=torch.Generator().manual_seed(0))
    kw = dict(exit_layer=2, num_speculations=3, max_new_tokens=20, do_sample=True, top_k=0)
    a = eedecode.generate(model, ids, seed=123, **kw)
    b = eedecode.generate(model, ids, seed=123, **kw)
    c = eedecode.generate(model, ids, generator=torch.Generator().manual_seed(123), **kw)
    d = eedecode.generate(model, ids, seed=124, **kw)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(a, d)
    torch.manual_seed(7)
    e = eedecode.generate(model, ids, **kw)  # no seed: torch's global generator, as HF
    torch.manual_seed(7)
    f = eedecode.generate(model, ids, **kw)
    assert torch.equal(e, f)
