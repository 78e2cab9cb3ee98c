"""Settling on plain decoding where no drafter pays: when the adaptive mode stops choosing (a
stretch of plain rounds with no bookkeeping), how it checks again, and that nothing it does
changes the output."""

from __future__ import annotations

import pytest
import torch
from conftest import cached_tiny_model

import eedecode
from eedecode.engine.steps import plain_step
from eedecode.model.memory import memory_of
from eedecode.modes.adaptive import mode as adaptive
from eedecode.modes.adaptive import planner, probe, settle
from eedecode.modes.adaptive.arms import Arm
from eedecode.modes.adaptive.bandit import DISCOUNT, MIN_PULLS, Bandit
from eedecode.modes.adaptive.settle import (
    CHECK_PULLS,
    CHECK_WAIT,
    FIRST_STRETCH,
    LONGEST_STRETCH,
    Settle,
)

NONE = Arm("none")
LOOKUP = Arm("lookup", max_drafts=4)
EXIT = Arm("exit", exit_layer=2, max_drafts=4, fixed=True)
ARMS = [NONE, LOOKUP, EXIT]


def played(bandit: Bandit, arm: Arm, rounds: int, rate: float, matched: bool = False) -> None:
    """``rounds`` rounds of ``arm`` at ``rate`` tokens/s."""
    bandit.matched = matched
    for _ in range(rounds):
        bandit.update(arm, 1.0, 1.0 / rate)


def round_of(s: Settle, bandit: Bandit, available, arm: Arm, rate: float) -> None:
    """One round of ``arm`` at ``rate``, told to the bandit and then to the settlement."""
    bandit.update(arm, 1.0, 1.0 / rate)
    s.decide(bandit, available, NONE, arm, 1.0, 1.0 / rate)


def measured_bandit(lookup_rounds: int = 5) -> Bandit:
    """Plain decoding at 100 tokens/s, exit drafts at 60, lookup drafts at 80."""
    bandit = Bandit(ARMS)
    played(bandit, NONE, 10, 100.0)
    played(bandit, EXIT, 5, 60.0)
    played(bandit, LOOKUP, lookup_rounds, 80.0)
    return bandit


def settled_with(bandit: Bandit) -> Settle:
    """A settlement whose first stretch has just ended (its check starts)."""
    s = Settle()
    s.decide(bandit, ARMS, NONE, NONE, 1.0, 0.01)
    assert s.active
    for _ in range(s.left):
        s.take()
    assert not s.active and s.checking
    return s


def test_it_settles_only_once_every_arm_is_measured_and_plain_is_fastest():
    bandit, s = Bandit(ARMS), Settle()
    played(bandit, NONE, MIN_PULLS, 100.0)
    played(bandit, EXIT, MIN_PULLS - 1, 50.0)
    s.decide(bandit, [NONE, EXIT], NONE, EXIT, 1.0, 0.02)
    assert not s.active  # the exit arm has fewer than MIN_PULLS rounds
    played(bandit, EXIT, 1, 50.0)
    s.decide(bandit, [NONE], NONE, NONE, 1.0, 0.01)
    assert not s.active  # a round with nothing to choose decides nothing
    s.decide(bandit, [NONE, EXIT], NONE, NONE, 1.0, 0.01)
    assert s.active and s.left == FIRST_STRETCH and s.stretch == FIRST_STRETCH  # doubles once checks agree
    for _ in range(FIRST_STRETCH):
        s.take()
    assert not s.active and s.checking


def test_an_arm_faster_than_plain_in_either_context_keeps_the_bandit_choosing():
    bandit, s = Bandit(ARMS), Settle(stretch=4 * FIRST_STRETCH)
    played(bandit, NONE, 10, 100.0)
    played(bandit, EXIT, 10, 80.0)
    played(bandit, LOOKUP, MIN_PULLS, 130.0, matched=True)  # repeating text: lookup pays there
    bandit.matched = False
    s.decide(bandit, [NONE, EXIT], NONE, NONE, 1.0, 0.01)
    assert not s.active and s.stretch == FIRST_STRETCH  # and the next stretch starts short again


def test_plain_decoding_is_judged_by_its_bare_steps_once_they_are_timed():
    """Plain rounds pay the choosing (the lookup search, the bandit) that a settled round does
    not: an arm faster than plain rounds but slower than their steps alone loses to settling,
    and a check is judged against the steps' rate at the time of the check."""
    bandit, s = Bandit([NONE, EXIT]), Settle()
    played(bandit, NONE, 10, 100.0)  # plain rounds, choosing included
    played(bandit, EXIT, 10, 110.0)
    for _ in range(MIN_PULLS - 1):
        s.timed(1.0, 1.0 / 125.0)  # the same rounds' steps alone
    s.decide(bandit, [NONE, EXIT], NONE, NONE, 1.0, 0.01)
    assert not s.active  # too few bare steps timed: the rounds' rate decides, and the arm wins
    s.timed(1.0, 1.0 / 125.0)
    s.decide(bandit, [NONE, EXIT], NONE, NONE, 1.0, 0.01)
    assert s.active and s.plain(bandit, NONE) == pytest.approx(125.0)
    for _ in range(s.left):
        s.take()
        s.timed(1.0, 1.0 / 125.0)  # the settled steps
    for _ in range(CHECK_PULLS):
        round_of(s, bandit, [NONE, EXIT], EXIT, 115.0)
    assert s.active  # the check's rounds beat plain rounds, not the steps a stretch runs
    for _ in range(s.left):
        s.take()
        s.timed(1.0, 1.0 / 105.0)  # the steps slowed down during the stretch (a longer context)
    for _ in range(CHECK_PULLS):
        round_of(s, bandit, [NONE, EXIT], EXIT, 115.0)
    assert not s.active and not s.checking  # now the arm is faster than the steps are


def test_the_bare_steps_estimate_fades_with_every_round():
    s = Settle()
    for _ in range(10):
        s.timed(1.0, 0.01)
    rounds = s.bare.rounds
    s.timed(3.0, None)  # a drafting round: nothing added, the old steps fade
    assert s.bare.rounds == pytest.approx(DISCOUNT * rounds) and s.bare.pulls == 10
    assert s.bare.rate == pytest.approx(100.0)


def test_the_mode_times_its_plain_rounds_steps_alone(monkeypatch):
    """Each plain round the mode plays, settled or not, gives the settlement its step's seconds:
    the step and the round's end, not the choosing before it. (A clock that moves only where the
    test says.)"""
    model = cached_tiny_model("llama", eos_token_id=None, num_hidden_layers=4)
    memory_of(model).reset()
    monkeypatch.setattr(settle, "ENABLED", False)
    now = [0.0]
    monkeypatch.setattr(adaptive, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: now[0])}))
    timed = []
    real = Settle.timed
    monkeypatch.setattr(Settle, "timed", lambda self, t, sec: timed.append(sec) or real(self, t, sec))

    def slow_available(self, state, k):
        now[0] += 0.02  # the choosing
        return [NONE]  # plain rounds only

    def timed_step(state):
        now[0] += 0.001  # the step
        return plain_step(state)

    monkeypatch.setattr(adaptive.Adaptive, "available", slow_available)
    monkeypatch.setattr(adaptive, "plain_step", timed_step)
    x = torch.randint(3, 97, (1, 9), generator=torch.Generator().manual_seed(5))
    out = eedecode.generate(model, x, max_new_tokens=12, return_dict_in_generate=True)
    assert torch.equal(out.sequences, eedecode.generate(model, x, max_new_tokens=12, mode="autoregressive"))
    assert out.stats.details["arms"]["none"] == 11 and timed == [pytest.approx(0.001)] * 11
    policy = next(iter(memory_of(model).modes["adaptive"].values()))
    assert policy.settle_at(1).bare.rate == pytest.approx(1000.0)
    assert policy.bandit.rate(NONE) == pytest.approx(1 / 0.021)  # the rounds, choosing included
    assert out.stats.speedup_over_plain is not None  # reported against the steps' rate
    # settled rounds time their steps too, and nothing else
    timed.clear()
    monkeypatch.setattr(settle, "ENABLED", True)
    policy.settle_at(1).left = 100
    out = eedecode.generate(model, x, max_new_tokens=12, return_dict_in_generate=True)
    assert out.stats.details["settled_rounds"] == 11 and timed == [pytest.approx(0.001)] * 11


def test_an_arm_no_longer_offered_does_not_block_settling():
    bandit = Bandit([NONE, EXIT])
    played(bandit, NONE, 10, 100.0)
    played(bandit, EXIT, 10, 80.0)
    played(bandit, LOOKUP, 10, 500.0)  # an estimate of an arm these options do not have
    s = Settle()
    s.decide(bandit, [NONE, EXIT], NONE, NONE, 1.0, 0.01)
    assert s.active


def test_checks_that_find_every_arm_slower_double_the_stretch():
    bandit = measured_bandit()
    s = settled_with(bandit)
    assert s.forced(bandit, [NONE, EXIT]) == EXIT  # the best of those this round can play
    assert s.forced(bandit, ARMS) == LOOKUP  # the best challenger (neither checked yet)
    for _ in range(CHECK_PULLS):
        assert not s.active
        round_of(s, bandit, ARMS, LOOKUP, 90.0)  # still slower than plain decoding
    assert s.active and s.left == FIRST_STRETCH and s.settled == 2  # exit drafts not checked yet
    assert s.forced(bandit, ARMS) is None  # no check while settled
    for _ in range(s.left):
        s.take()
    assert s.forced(bandit, ARMS) == EXIT
    for _ in range(CHECK_PULLS):
        round_of(s, bandit, ARMS, EXIT, 50.0)
    assert s.active and s.left == 2 * FIRST_STRETCH  # every arm checked at this length: twice as long
    for _ in range(20):  # stretches stop growing
        s.left = 1
        s.take()
        arm = s.forced(bandit, ARMS)
        for _ in range(CHECK_PULLS):
            round_of(s, bandit, ARMS, arm, 50.0)
    assert s.left == LONGEST_STRETCH


def test_a_check_judges_its_fresh_rounds_alone_and_a_fast_arm_ends_the_settlement():
    """An arm with a long slow history that is now fast: two fresh rounds decide, however heavy
    its history, and then are its estimate, so that the bandit plays it."""
    bandit = measured_bandit(lookup_rounds=200)
    s = settled_with(bandit)
    exit_before = bandit._known(EXIT).rounds
    round_of(s, bandit, ARMS, LOOKUP, 300.0)
    assert bandit.rate(LOOKUP) < bandit.rate(NONE)  # its whole history still says slower
    round_of(s, bandit, ARMS, LOOKUP, 300.0)
    assert not s.active and not s.checking and s.stretch == FIRST_STRETCH
    assert bandit.rate(LOOKUP) == pytest.approx(300.0)  # its estimate is the fresh rounds now
    assert bandit._known(EXIT).rounds == pytest.approx(DISCOUNT**2 * exit_before)  # the others keep theirs
    s.decide(bandit, [NONE, LOOKUP], NONE, NONE, 1.0, 0.01)
    assert not s.active  # plain decoding no longer measures fastest


def test_a_check_waits_for_a_round_that_can_draft_then_plays_it():
    """A stale estimate (lookup slow on other text) must not hold the mode on plain decoding: rounds
    without a lookup match wait, and the first round with one is checked."""
    bandit = measured_bandit()
    s = settled_with(bandit)
    for _ in range(CHECK_WAIT - 1):
        s.decide(bandit, [NONE], NONE, NONE, 1.0, 0.01)  # no match, no exit layer offered
        assert not s.active and s.checking
    assert s.forced(bandit, [NONE, LOOKUP]) == LOOKUP  # a match: the check plays lookup
    for _ in range(CHECK_PULLS):
        round_of(s, bandit, [NONE, LOOKUP], LOOKUP, 300.0)  # faster than plain decoding now
    assert not s.active and not s.checking and s.stretch == FIRST_STRETCH


def test_checks_take_turns_and_wait_for_a_round_where_their_arm_can_play():
    """The arm with the best estimate is not always the one that pays on the text at hand: checks
    take turns (the arm checked least recently, the best measured among those), and a check for
    lookup drafts waits through rounds without a match (plain rounds) for one with a match."""
    bandit = measured_bandit()  # lookup drafts 80 tokens/s, exit drafts 60, plain decoding 100
    s = settled_with(bandit)
    no_match, match = [NONE, EXIT], [NONE, LOOKUP, EXIT]
    assert s.forced(bandit, match, ARMS) == LOOKUP  # neither checked yet: the best measured
    for _ in range(CHECK_PULLS):
        round_of(s, bandit, match, LOOKUP, 70.0)  # slower than plain decoding
    assert s.active
    for _ in range(s.left):
        s.take()
    assert s.forced(bandit, match, ARMS) == EXIT  # exit drafts' turn, though measured slower
    for _ in range(CHECK_PULLS):
        round_of(s, bandit, match, EXIT, 60.0)
    assert s.active
    for _ in range(s.left):
        s.take()
    assert s.forced(bandit, no_match, ARMS) == NONE  # lookup is due: wait for a match
    s.decide(bandit, no_match, NONE, NONE, 1.0, 0.01)
    assert not s.active and s.checking and s.waited == 1
    assert s.forced(bandit, match, ARMS) == LOOKUP
    for _ in range(CHECK_PULLS):
        round_of(s, bandit, match, LOOKUP, 300.0)  # on this text lookup drafts pay now
    assert not s.active and not s.checking and s.stretch == FIRST_STRETCH
    assert bandit.rate(LOOKUP) == pytest.approx(300.0)


def test_a_check_that_waited_long_enough_plays_the_best_arm_it_can():
    """The arm waited for counts as checked: the turn moves on, and once both arms had theirs the
    stretch doubles (on text without repeats, lookup is not waited for at every stretch)."""
    bandit = measured_bandit()
    s = settled_with(bandit)  # lookup is due (the best measured, never checked)
    for _ in range(CHECK_WAIT):
        assert s.forced(bandit, [NONE, EXIT], ARMS) == NONE
        s.decide(bandit, [NONE, EXIT], NONE, NONE, 1.0, 0.01)
    assert s.forced(bandit, [NONE, EXIT], ARMS) == EXIT
    for _ in range(CHECK_PULLS):
        round_of(s, bandit, [NONE, EXIT], EXIT, 50.0)
    assert s.active and s.left == 2 * FIRST_STRETCH  # lookup (could not play) and exit: both had a turn
    assert s.checked[LOOKUP.key] == s.checked[EXIT.key]


def test_a_check_with_no_arm_to_offer_does_not_keep_an_earlier_checks_arms():
    bandit = measured_bandit()
    s = settled_with(bandit)
    assert s.forced(bandit, ARMS, ARMS) == LOOKUP  # candidates: lookup and exit
    for _ in range(CHECK_PULLS):
        round_of(s, bandit, ARMS, LOOKUP, 50.0)
    for _ in range(s.left):
        s.take()
    assert s.forced(bandit, [NONE], [NONE]) is None  # nothing the mode could offer now
    assert s.due is None and s.candidates == frozenset()
    s.decide(bandit, [NONE], NONE, NONE, 1.0, 0.01, idle=True)
    assert s.active and s.left == 2 * FIRST_STRETCH  # nothing left to check: twice as long


def test_a_check_that_finds_nothing_to_draft_passes_after_waiting():
    bandit = measured_bandit()
    s = settled_with(bandit)
    assert s.forced(bandit, [NONE], [NONE, LOOKUP]) is None  # lookup is due, and cannot play
    for _ in range(CHECK_WAIT - 1):
        s.decide(bandit, [NONE], NONE, NONE, 1.0, 0.01)
    assert not s.active
    s.decide(bandit, [NONE], NONE, NONE, 1.0, 0.01)
    assert s.active and s.settled == 2 and s.left == 2 * FIRST_STRETCH
    for _ in range(s.left):  # the next check waits afresh
        s.take()
    s.decide(bandit, [NONE], NONE, NONE, 1.0, 0.01)
    assert not s.active and s.waited == 1


def test_a_check_with_nothing_to_offer_until_the_next_plan_passes_at_once():
    bandit = measured_bandit()
    s = settled_with(bandit)
    s.decide(bandit, [NONE], NONE, NONE, 1.0, 0.01, idle=True)  # lookup off, no exit layer offered
    assert s.active and s.settled == 2


def test_with_nothing_to_offer_until_the_next_plan_it_settles_once_plain_is_measured():
    bandit, s = Bandit(ARMS), Settle()
    played(bandit, NONE, MIN_PULLS - 1, 100.0)
    s.decide(bandit, [NONE], NONE, NONE, 1.0, 0.01, idle=True)
    assert not s.active  # plain decoding not yet measured
    played(bandit, NONE, 1, 100.0)
    s.decide(bandit, [NONE], NONE, NONE, 1.0, 0.01, idle=False)
    assert not s.active  # a round without a match, where lookup drafts may come: nothing decided
    s.decide(bandit, [NONE], NONE, NONE, 1.0, 0.01, idle=True)
    assert s.active and s.left == FIRST_STRETCH


def test_lookup_off_and_no_exit_layer_offered_settles_on_plain_decoding(monkeypatch):
    """``lookup=False`` where the plan offers no exit layer: nothing to choose, so the rounds
    after plain decoding's first measured ones are settled (no bookkeeping); the same tokens."""
    monkeypatch.setattr(planner, "PAYS", float("inf"))  # no exit layer predicted to pay
    model = cached_tiny_model("llama", eos_token_id=None, num_hidden_layers=4)
    memory_of(model).reset()
    x = torch.randint(3, 97, (1, 9), generator=torch.Generator().manual_seed(4))
    out = eedecode.generate(model, x, max_new_tokens=24, lookup=False, return_dict_in_generate=True)
    assert torch.equal(out.sequences, eedecode.generate(model, x, max_new_tokens=24, mode="autoregressive"))
    rounds = out.stats.details["rounds_by_arm"]
    assert rounds.get("plain decoding, settled (no bookkeeping)", 0) == 23 - MIN_PULLS
    assert out.stats.drafted_tokens == 0


def test_settling_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(settle, "ENABLED", False)
    bandit, s = Bandit(ARMS), Settle()
    played(bandit, NONE, 10, 100.0)
    played(bandit, EXIT, 10, 50.0)
    s.decide(bandit, [NONE, EXIT], NONE, NONE, 1.0, 0.01)
    assert not s.active


def test_stretches_that_end_mid_call_leave_the_output_unchanged(monkeypatch):
    """A padded batch of repeating prompts: a short first stretch ends inside a call, the check
    drafts from the lookup index caught up with the settled rounds' tokens, the mode settles
    again; the tokens equal plain decoding's throughout."""
    monkeypatch.setattr(settle, "FIRST_STRETCH", 5)
    model = cached_tiny_model("llama", eos_token_id=None, num_hidden_layers=4)
    memory_of(model).reset()
    x = torch.randint(3, 97, (3, 9), generator=torch.Generator().manual_seed(1))
    x = torch.cat([x, x, x[:, :4]], 1)  # repeating prompts: lookup drafts exist
    x[0, :2] = 0
    mask = (x != 0).long()
    kw = dict(attention_mask=mask, max_new_tokens=48)
    ar = eedecode.generate(model, x, mode="autoregressive", **kw)
    eedecode.generate(model, x, **kw)  # the policy exists
    policy = next(iter(memory_of(model).modes["adaptive"].values()))
    bucket = policy.settle_at(2)  # batch 3: the bucket of 2..3 rows
    checks = []
    real_forced = Settle.forced

    def spy(self, bandit, available, offerable=None):
        arm = real_forced(self, bandit, available, offerable)
        if arm is not None and arm.kind != "none":
            checks.append(arm.key)
        return arm

    monkeypatch.setattr(Settle, "forced", spy)
    for _ in range(3):
        # settle for 5 rounds from the start of the call, as if plain decoding had measured fastest
        bucket.left, bucket.stretch, bucket.checking = 5, 5, False
        out = eedecode.generate(model, x, return_dict_in_generate=True, **kw)
        assert torch.equal(out.sequences, ar)
        assert out.stats.details["settled_rounds"] >= 5
        assert out.stats.drafted_tokens > 0 or not checks  # a check drafts (where a round can)
    assert checks  # the stretch ended mid-call and a drafting arm was checked


def test_a_settled_call_skips_the_probe_the_plan_and_the_lookup_index(monkeypatch):
    """While the bucket is settled the prefill probes no exit layer, builds no lookup index, and
    no round plans or looks up drafts: plain steps only, the same tokens."""
    model = cached_tiny_model("llama", eos_token_id=None, num_hidden_layers=4)
    memory_of(model).reset()
    x = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(2))
    eedecode.generate(model, x, max_new_tokens=8)  # the policy exists
    policy = next(iter(memory_of(model).modes["adaptive"].values()))
    policy.settle_at(2).left = 1000

    def forbidden(*a, **k):
        raise AssertionError("called while settled")

    from eedecode.drafting.lookup import LookupDrafter

    monkeypatch.setattr(probe, "probed_prefill", forbidden)
    monkeypatch.setattr(planner.Planner, "plan", forbidden)
    monkeypatch.setattr(adaptive.Adaptive, "available", forbidden)
    monkeypatch.setattr(LookupDrafter, "start", forbidden)
    out = eedecode.generate(model, x, max_new_tokens=20, return_dict_in_generate=True)
    assert torch.equal(out.sequences, eedecode.generate(model, x, max_new_tokens=20, mode="autoregressive"))
    assert out.stats.details["settled_rounds"] == 19 and policy.settle_at(2).left == 1000 - 19
    assert "none" not in out.stats.details["arms"]  # no measured plain round: the settled ones apart
    assert out.stats.details["rounds_by_arm"] == {"plain decoding, settled (no bookkeeping)": 19}


def test_a_reprobe_due_during_a_settled_call_waits_for_the_next_call_not_settled(monkeypatch):
    model = cached_tiny_model("llama", eos_token_id=None, num_hidden_layers=4)
    memory_of(model).reset()
    x = torch.randint(3, 97, (1, 9), generator=torch.Generator().manual_seed(3))
    eedecode.generate(model, x, max_new_tokens=4)
    policy = next(iter(memory_of(model).modes["adaptive"].values()))
    policy.calls = adaptive.REPROBE_EVERY - 1  # the next call is due a reprobe
    policy.settle_at(1).left = 1000
    eedecode.generate(model, x, max_new_tokens=4)
    assert policy.reprobe_due
    probed = []
    real = probe.probed_prefill
    monkeypatch.setattr(
        probe,
        "probed_prefill",
        lambda state, ids, layers, t: probed.append(layers) or real(state, ids, layers, t),
    )
    policy.settle_at(1).left = 0
    eedecode.generate(model, x, max_new_tokens=4)
    assert probed and len(probed[0]) == len({a.exit_layer for a in policy.arms if a.kind == "exit"})
    assert not policy.reprobe_due
