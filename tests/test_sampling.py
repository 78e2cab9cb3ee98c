"""Sampling: speculative sampling reproduces the target distribution (after Hugging Face's own
warpers), checked by a chi-square test that is shown to fail on two wrong rules."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import SMALL_VOCAB, tiny_model
from transformers.generation.logits_process import (
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import eedecode
from eedecode.engine import chooser
from eedecode.engine.acceptance import always_accept, greedy_accept, sample, speculative_accept
from eedecode.modes.adaptive import mode as adaptive
from eedecode.modes.adaptive import options as adaptive_options
from eedecode.modes.adaptive import planner
from eedecode.modes.adaptive.arms import Arm
from eedecode.modes.adaptive.progress import BatchProgress

V = SMALL_VOCAB  # small enough to enumerate every 4-token continuation
N_NEW = 4  # the prefill's token, then one round: 2 drafts and the correction or bonus token


def test_greedy_accept_counts_the_agreeing_prefix():
    target_tokens = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8], [1, 2, 3, 4]])
    logits = torch.nn.functional.one_hot(target_tokens, 10).float()  # [B, k+1, V]
    drafts = torch.tensor([[5, 6, 7], [5, 9, 7], [0, 2, 3]])
    tokens, n = greedy_accept(drafts, logits)
    assert n.tolist() == [4, 2, 1]
    assert tokens.tolist() == target_tokens.tolist()


def test_greedy_accept_stops_at_each_rows_own_draft_count():
    target_tokens = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8]])
    logits = torch.nn.functional.one_hot(target_tokens, 10).float()
    drafts = torch.tensor([[5, 6, 7], [5, 6, 7], [5, 6, 7]])  # all agree with the target
    tokens, n = greedy_accept(drafts, logits, num_drafts=torch.tensor([3, 1, 0]))
    assert n.tolist() == [4, 2, 1] and tokens.tolist() == target_tokens.tolist()


def test_speculative_accept_after_a_rows_last_draft_draws_from_p():
    """A row with fewer drafts than the block: past them its token comes from p (a bonus), never
    from the residual of a filler draft."""
    g = torch.Generator().manual_seed(0)
    B, V = 4000, 5
    p = torch.softmax(torch.randn(1, 3, V, generator=g), -1).expand(B, 3, V)
    q = torch.zeros(B, 2, V)
    q[..., 0] = 1.0  # filler drafts: token 0 with q = 1
    drafts = torch.zeros(B, 2, dtype=torch.long)
    tokens, n = speculative_accept(drafts, q, p, g, num_drafts=torch.zeros(B, dtype=torch.long))
    assert (n == 1).all()
    freq = torch.bincount(tokens[:, 0], minlength=V).float() / B
    torch.testing.assert_close(freq, p[0, 0], atol=0.03, rtol=0)  # p itself, not max(0, p - q)


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
def warpers(params: dict) -> LogitsProcessorList:
    """HF's processors and warpers in HF's order (repetition penalty, n-gram blocking, then
    temperature, top-k, top-p), as generate() builds them."""
    out = LogitsProcessorList()
    if params.get("repetition_penalty", 1.0) != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(params["repetition_penalty"]))
    if params.get("no_repeat_ngram_size"):
        out.append(NoRepeatNGramLogitsProcessor(params["no_repeat_ngram_size"]))
    if params.get("temperature", 1.0) != 1.0:
        out.append(TemperatureLogitsWarper(params["temperature"]))
    if params.get("top_k"):
        out.append(TopKLogitsWarper(params["top_k"]))
    if params.get("top_p", 1.0) < 1.0:
        out.append(TopPLogitsWarper(params["top_p"]))
    return out


def exact_joint(model, prompt: list[int], params: dict, n: int = N_NEW) -> torch.Tensor:
    """P(t1..tn | prompt) under the full model and the warpers, for every continuation: ``[V]*n``."""
    joint = torch.ones(())
    for depth in range(n):
        prefixes = list(itertools.product(range(V), repeat=depth))
        ctx = torch.tensor([list(prompt) + list(pre) for pre in prefixes])
        with torch.no_grad():
            scores = warpers(params)(ctx, model(ctx).logits[:, -1].float())
        joint = joint.reshape(-1, 1) * scores.softmax(-1).double()  # [V^depth, V]
    return joint.reshape([V] * n)


def round_joint(joint: torch.Tensor) -> torch.Tensor:
    """The joint of the round's three tokens (two drafts, then the correction or the bonus token),
    the prefill's token summed out: ``[V, V, V]``."""
    return joint.sum(0)


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


def sampled_round(
    model, prompt, params, mode, rows=20000, seed=0, accept_rule=None, gumbel=None, monkeypatch=None
):
    """Counts of the round's three tokens over ``rows`` samples: ``[V, V, V]``."""
    if accept_rule is not None or gumbel is not None:
        original = chooser.TokenChooser.__init__

        def patched(self, do_sample=False, pipeline=None, generator=None, rule=None, gumbel_drafts=None):
            original(self, do_sample, pipeline, generator, accept_rule, gumbel)

        monkeypatch.setattr(chooser.TokenChooser, "__init__", patched)
    ids = torch.tensor([prompt] * rows)
    # with max_new_tokens=4: one prefill token, then a round of 2 drafts (k=3 is capped by the length)
    settings = {"self_speculative": dict(exit_layer=1, num_speculations=3), "adaptive": dict(max_drafts=3)}
    settings = settings.get(mode, {})
    out = eedecode.generate(
        model, ids, mode=mode, **settings, max_new_tokens=N_NEW, do_sample=True, seed=seed, **params
    )
    assert out.shape[1] == len(prompt) + N_NEW
    t = out[:, len(prompt) + 1 :]  # [rows, 3]
    flat = t[:, 0] * V * V + t[:, 1] * V + t[:, 2]
    return torch.bincount(flat, minlength=V**3).reshape(V, V, V)


def bonus_from_the_draft(drafts, q, p, generator):
    """A deliberately *wrong* rule: speculative sampling, except that when every draft is accepted
    the bonus token is drawn from the last draft distribution instead of the target's."""
    B, k = drafts.shape
    tokens, n = speculative_accept(drafts, q, p, generator)
    if k == 0:
        return tokens, n
    wrong = sample(q[:, -1], generator)
    all_in = n == k + 1
    tokens[:, k] = torch.where(all_in, wrong, tokens[:, k])
    return tokens, n


PARAMS = {
    "plain": dict(top_k=0),
    "temperature": dict(temperature=0.6, top_k=0),
    "top_k": dict(top_k=4),
    "top_p": dict(top_k=0, top_p=0.85),
    "combined": dict(temperature=1.4, top_k=6, top_p=0.9),
    # processors that read the context: the drafts before each position must be part of it
    "context": dict(top_k=0, repetition_penalty=2.0, no_repeat_ngram_size=2),
}
PROMPT = [3, 1, 4, 1, 5]


@pytest.mark.parametrize("name", PARAMS)
def test_self_speculative_sampling_reproduces_the_target_distribution(small_vocab_model, name):
    params = PARAMS[name]
    exact = round_joint(exact_joint(small_vocab_model, PROMPT, params))
    counts = sampled_round(small_vocab_model, PROMPT, params, "self_speculative", seed=1)
    assert counts.sum() == 20000
    p_value = chi_square_p_value(counts, exact)
    assert p_value > 1e-3, f"{name}: self-speculative samples do not follow the target (p={p_value:.2g})"


@pytest.mark.parametrize("name", ["plain", "temperature"])
def test_gumbel_max_drafts_from_the_fused_head_reproduce_the_target(small_vocab_model, name, monkeypatch):
    """The CUDA path (drafts are the exit-head kernel's Gumbel-max samples, q rebuilt from the
    exit query cache), forced on the CPU through the kernel's reference."""
    params = PARAMS[name]
    exact = round_joint(exact_joint(small_vocab_model, PROMPT, params))
    counts = sampled_round(
        small_vocab_model, PROMPT, params, "self_speculative", seed=3, gumbel=True, monkeypatch=monkeypatch
    )
    p_value = chi_square_p_value(counts, exact)
    assert p_value > 1e-3, f"{name}: Gumbel drafts do not give the target (p={p_value:.2g})"


def test_autoregressive_sampling_reproduces_the_target_distribution(small_vocab_model):
    params = PARAMS["combined"]
    counts = sampled_round(small_vocab_model, PROMPT, params, "autoregressive", seed=2)
    assert chi_square_p_value(counts, round_joint(exact_joint(small_vocab_model, PROMPT, params))) > 1e-3


@pytest.mark.parametrize(
    "arm",
    [
        Arm("exit", exit_layer=1, threshold=0.35, max_drafts=3),
        Arm("exit", exit_layer=1, max_drafts=3, fixed=True),
        Arm("lookup", max_drafts=3),
    ],
    ids=["exit-with-confidence-stops", "exit-draft-length-model", "lookup"],
)
def test_adaptive_sampling_reproduces_the_target_distribution(small_vocab_model, monkeypatch, arm):
    """Rows that stop drafting at different lengths (a confidence threshold), drafts as long as
    the draft-length model says, and point-mass drafts (lookup) still sample exactly from the
    target, after the processors."""
    monkeypatch.setattr(adaptive_options, "make_arms", lambda *a: [arm])
    monkeypatch.setattr(planner, "PAYS", 0.0)  # offered whatever the prompt's probe predicts
    # lookup is offered where the laggards found a match: in the round sampled here every row is
    # a laggard and only some match, so it is offered wherever some row did (no laggards)
    monkeypatch.setattr(BatchProgress, "laggards", lambda self: [])
    drafted = []
    real_verify = adaptive.verify

    def spy(state, proposal):
        drafted.append(proposal.k)
        return real_verify(state, proposal)

    monkeypatch.setattr(adaptive, "verify", spy)
    params = PARAMS["context"]
    exact = round_joint(exact_joint(small_vocab_model, PROMPT, params))
    counts = sampled_round(small_vocab_model, PROMPT, params, "adaptive", seed=4)
    assert drafted and max(drafted) > 0  # the round drafted (and verified) with this arm
    p_value = chi_square_p_value(counts, exact)
    assert p_value > 1e-3, f"{arm.key}: adaptive samples do not follow the target (p={p_value:.2g})"


@pytest.mark.parametrize("rule", [always_accept, bonus_from_the_draft], ids=lambda r: r.__name__)
def test_the_statistical_test_fails_on_a_wrong_rule(small_vocab_model, monkeypatch, rule):
    """Always accepting the drafts samples from the draft model; drawing the bonus token from the
    draft distribution is wrong only after a fully accepted round. The check that passes above
    must reject both."""
    params = PARAMS["plain"]
    exact = round_joint(exact_joint(small_vocab_model, PROMPT, params))
    counts = sampled_round(
        small_vocab_model,
        PROMPT,
        params,
        "self_speculative",
        seed=1,
        accept_rule=rule,
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
