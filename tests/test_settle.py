"""Settling on plain decoding where no drafter pays: when the adaptive mode stops choosing (a
stretch of plain rounds with no bookkeeping), when it checks again, and that nothing it does
changes the output."""

from __future__ import annotations

import torch
from conftest import cached_tiny_model

import eedecode
from eedecode.model.memory import memory_of
from eedecode.modes.adaptive.arms import Arm
from eedecode.modes.adaptive.bandit import MIN_PULLS, Bandit
from eedecode.modes.adaptive.settle import FIRST_STRETCH, LONGEST_STRETCH, Settle

NONE, LOOKUP, EXIT = (
    Arm("none"),
    Arm("lookup", max_drafts=4),
    Arm("exit", exit_layer=2, max_drafts=4, fixed=True),
)


def played(bandit: Bandit, arm: Arm, rounds: int, rate: float, matched: bool = False) -> None:
    """``rounds`` rounds of ``arm`` at ``rate`` tokens/s."""
    bandit.matched = matched
    for _ in range(rounds):
        bandit.update(arm, 1.0, 1.0 / rate)


def test_it_settles_only_once_every_arm_is_measured_and_plain_is_fastest():
    bandit, s = Bandit([NONE, LOOKUP, EXIT]), Settle()
    played(bandit, NONE, MIN_PULLS, 100.0)
    played(bandit, EXIT, MIN_PULLS - 1, 50.0)
    s.decide(bandit, [NONE, EXIT], NONE)
    assert not s.active  # the exit arm has fewer than MIN_PULLS rounds
    played(bandit, EXIT, 1, 50.0)
    s.decide(bandit, [NONE], NONE)
    assert not s.active  # a round with one arm to play decided nothing
    s.decide(bandit, [NONE, EXIT], NONE)
    assert s.active and s.left == FIRST_STRETCH and s.stretch == 2 * FIRST_STRETCH
    for _ in range(FIRST_STRETCH):
        s.take()
    assert not s.active


def test_an_arm_faster_than_plain_in_any_context_keeps_the_bandit_choosing():
    bandit, s = Bandit([NONE, LOOKUP, EXIT]), Settle(stretch=4 * FIRST_STRETCH)
    played(bandit, NONE, 10, 100.0)
    played(bandit, EXIT, 10, 80.0)
    played(bandit, LOOKUP, MIN_PULLS, 130.0, matched=True)  # repeating text: lookup pays there
    bandit.matched = False
    s.decide(bandit, [NONE, EXIT], NONE)
    assert not s.active and s.stretch == FIRST_STRETCH  # and the next stretch starts short again


def test_after_a_stretch_the_best_drafting_arm_is_checked_then_the_stretch_doubles():
    bandit, s = Bandit([NONE, LOOKUP, EXIT]), Settle()
    played(bandit, NONE, 10, 100.0)
    played(bandit, EXIT, 5, 60.0)
    played(bandit, LOOKUP, 5, 80.0)
    s.decide(bandit, [NONE, LOOKUP, EXIT], NONE)
    assert s.active and s.forced(bandit, [NONE, LOOKUP, EXIT]) is None  # no check while settled
    s.left = 0  # the stretch ran out
    assert s.forced(bandit, [NONE, LOOKUP, EXIT]) == LOOKUP  # the best challenger
    assert s.forced(bandit, [NONE, EXIT]) == EXIT  # the best of those this round can play
    s.decide(bandit, [NONE, LOOKUP, EXIT], NONE)
    assert not s.active  # no fresh drafting round yet
    played(bandit, LOOKUP, 1, 80.0)
    assert s.forced(bandit, [NONE, LOOKUP, EXIT]) is None  # checked: the bandit chooses again
    s.decide(bandit, [NONE, LOOKUP, EXIT], NONE)
    assert s.left == 2 * FIRST_STRETCH and s.settled == 2
    for _ in range(10):  # stretches stop growing
        s.left = 0
        played(bandit, LOOKUP, 1, 80.0)
        s.decide(bandit, [NONE, LOOKUP, EXIT], NONE)
    assert s.left == LONGEST_STRETCH


def test_a_check_that_finds_a_faster_arm_ends_the_settlement():
    bandit, s = Bandit([NONE, LOOKUP]), Settle()
    played(bandit, NONE, 10, 100.0)
    played(bandit, LOOKUP, MIN_PULLS, 80.0)
    s.decide(bandit, [NONE, LOOKUP], NONE)
    s.left = 0
    played(bandit, LOOKUP, 30, 400.0)  # the text changed: lookup drafts now pay
    s.decide(bandit, [NONE, LOOKUP], NONE)
    assert not s.active and s.stretch == FIRST_STRETCH


def test_settled_rounds_are_plain_steps_and_the_output_is_unchanged():
    """A batch with padding: the mode settles, runs plain rounds with no bookkeeping, checks when
    a stretch ends mid-call and drafts again; the tokens equal plain decoding's throughout."""
    model = cached_tiny_model("llama", eos_token_id=None, num_hidden_layers=4)
    memory_of(model).reset()
    x = torch.randint(3, 97, (3, 9), generator=torch.Generator().manual_seed(1))
    x = torch.cat([x, x, x[:, :4]], 1)  # repeating prompts: lookup drafts exist
    x[0, :2] = 0
    mask = (x != 0).long()
    kw = dict(attention_mask=mask, max_new_tokens=48)
    ar = eedecode.generate(model, x, mode="autoregressive", **kw)
    settled = 0
    for _ in range(6):
        out = eedecode.generate(model, x, return_dict_in_generate=True, **kw)
        assert torch.equal(out.sequences, ar)
        settled += out.stats.details["settled_rounds"]
    policy = next(iter(memory_of(model).modes["adaptive"].values()))
    state = policy.settled[2]  # batch 3: the bucket of 2..3 rows
    # plain decoding beat the drafts of a random tiny model: it settled, checked and settled again
    assert settled > 0 and state.settled >= 2
    assert out.stats.details["arms"]["none"] >= out.stats.details["settled_rounds"]


def test_a_settled_call_skips_the_probe_and_the_plan(monkeypatch):
    """While the bucket is settled the prefill probes no exit layer and no round plans or looks
    up drafts: plain steps only, the same tokens."""
    from eedecode.modes.adaptive import mode as adaptive
    from eedecode.modes.adaptive import planner, probe

    model = cached_tiny_model("llama", eos_token_id=None, num_hidden_layers=4)
    memory_of(model).reset()
    x = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(2))
    eedecode.generate(model, x, max_new_tokens=8)  # the policy exists
    policy = next(iter(memory_of(model).modes["adaptive"].values()))
    policy.settle_at(2).left = 1000

    def forbidden(*a, **k):
        raise AssertionError("called while settled")

    monkeypatch.setattr(probe, "probed_prefill", forbidden)
    monkeypatch.setattr(planner.Planner, "plan", forbidden)
    monkeypatch.setattr(adaptive.Adaptive, "available", forbidden)
    out = eedecode.generate(model, x, max_new_tokens=20, return_dict_in_generate=True)
    assert torch.equal(out.sequences, eedecode.generate(model, x, max_new_tokens=20, mode="autoregressive"))
    assert out.stats.details["settled_rounds"] == 19 and policy.settle_at(2).left == 1000 - 19
