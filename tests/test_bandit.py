"""The adaptive mode's bandit: a discounted UCB1 over arms, rewarded by tokens per second, with
estimates per batch-size bucket and per context; and the reward of a batch round."""

from __future__ import annotations

import pytest

from eedecode.modes.adaptive import bandit as pol
from eedecode.modes.adaptive.arms import Arm
from eedecode.modes.adaptive.bandit import Bandit, Slot
from eedecode.modes.adaptive.progress import BatchProgress

NONE, LOOKUP = Arm("none"), Arm("lookup", max_drafts=8)
EXIT = Arm("exit", exit_layer=2, threshold=0.6, max_drafts=6)


def test_untried_arms_come_first_in_order_each_a_few_times():
    p = Bandit([NONE, LOOKUP, EXIT])
    seen = []
    for _ in range(3 * pol.MIN_PULLS):
        arm = p.choose()
        seen.append(arm)
        p.update(arm, tokens=1, seconds=1 if arm != LOOKUP else 0.01)  # lookup is far faster
    assert seen == [NONE, LOOKUP, EXIT] * pol.MIN_PULLS  # in turn, whatever the first rounds said
    assert p.choose() == LOOKUP


def test_it_settles_on_the_fastest_arm_and_still_explores(monkeypatch):
    p = Bandit([NONE, LOOKUP, EXIT])
    rates = {NONE.key: 100.0, LOOKUP.key: 60.0, EXIT.key: 180.0}  # tokens/s, noiseless
    pulls = dict.fromkeys(rates, 0)
    for _ in range(300):
        arm = p.choose()
        pulls[arm.key] += 1
        p.update(arm, tokens=2.0, seconds=2.0 / rates[arm.key])
    assert p.best() == EXIT
    assert pulls[EXIT.key] > 0.8 * 300
    assert 0 < pulls[LOOKUP.key] <= pulls[NONE.key] < pulls[EXIT.key]  # slower arms: explored, rarely


def test_discounting_follows_a_change():
    p = Bandit([NONE, EXIT])
    for _ in range(100):
        p.update(NONE, 1, 1 / 100)
        p.update(EXIT, 1, 1 / 150)
    assert p.best() == EXIT
    for _ in range(200):  # the context changes: drafts stop being accepted
        p.update(NONE, 1, 1 / 100)
        p.update(EXIT, 1, 1 / 50)
    assert p.best() == NONE
    s = p.estimates[Slot(EXIT.key, False, 1)]
    assert s.rounds < 1 / (1 - pol.DISCOUNT) + 1  # bounded memory


def test_only_available_arms_are_chosen():
    p = Bandit([NONE, LOOKUP, EXIT])
    for _ in range(pol.MIN_PULLS):
        for arm in (NONE, LOOKUP, EXIT):
            p.update(arm, 1, 1)
    p.update(LOOKUP, 100, 1)
    assert p.choose() == LOOKUP
    assert p.choose([NONE, EXIT]) in (NONE, EXIT)


def test_a_predicted_rate_counts_as_a_few_rounds(monkeypatch):
    """A prior (the plan's predicted rate) weighs PRIOR_ROUNDS rounds: a few unlucky rounds do not
    shut out an arm predicted to pay, while many measured rounds outweigh the prediction."""
    monkeypatch.setattr(pol, "EXPLORATION", 0.0)  # the estimates alone
    p = Bandit([NONE, EXIT])
    for _ in range(pol.MIN_PULLS):
        p.update(NONE, 1, 1 / 100)  # 100 tokens/s
        p.update(EXIT, 1, 1 / 80)  # unlucky rounds: 80 tokens/s
    assert p.choose() == NONE
    prior = {EXIT.key: 150.0}
    expected = (pol.MIN_PULLS * 80 + pol.PRIOR_ROUNDS * 150) / (pol.MIN_PULLS + pol.PRIOR_ROUNDS)
    assert expected > 100 and p.choose(priors=prior) == EXIT
    for _ in range(40):
        p.update(EXIT, 1, 1 / 80)
    assert p.choose(priors=prior) == NONE  # the rounds now say otherwise


def test_each_context_keeps_its_own_estimates():
    p = Bandit([NONE, LOOKUP])
    p.matched = True
    for _ in range(pol.MIN_PULLS):
        p.update(LOOKUP, 3, 1 / 100)
        p.update(NONE, 1, 1 / 100)
    assert p.choose() == LOOKUP and p.rate(LOOKUP) == pytest.approx(300)
    p.matched = False
    assert p.rate(LOOKUP) == 0  # nothing known of lookup without a match
    assert set(p.estimates) >= {Slot("none", True, 1), Slot("lookup:k=8", True, 1)}


def test_plain_decoding_is_known_in_every_context(monkeypatch):
    """A plain step's speed does not depend on the text: its estimate pools the contexts of the
    bucket, so a context where it is seldom played (and the predicted rates built on it) knows it
    from all its rounds."""
    monkeypatch.setattr(pol, "DISCOUNT", 1.0)  # plain sums
    p = Bandit([NONE, LOOKUP])
    for _ in range(10):
        p.update(NONE, 1, 1 / 100)
    p.matched = True
    p.update(NONE, 1, 1 / 50)  # one slow round with a match
    assert p.rate(NONE) == pytest.approx(11 / (10 / 100 + 1 / 50))  # every round, either context
    pulls = {(s.matched, st.pulls) for s, st in p.estimates.items() if s.arm == "none"}
    assert pulls == {(True, 1), (False, 10)}  # kept apart
    assert p.choose([NONE, LOOKUP]) == LOOKUP  # lookup untried here; plain decoding is known
    p.bucket = 4
    assert p.rate(NONE) == 0  # another bucket: nothing known


def test_a_batch_round_is_worth_how_far_it_moved_its_laggards():
    assert BatchProgress(1, 10).reward([3]) == 3  # one row: the tokens it produced
    progress = BatchProgress(3, 10)
    assert progress.laggards() == [0, 1, 2]  # all tied at the start
    # the rows gained 5, 1 and 4: the batch's end came one token closer (row 1), not their mean
    assert progress.reward([5, 1, 4]) == 3 * 1
    assert progress.laggards() == [1]
    # row 1 (the laggard) gained 2, row 2 emitted all it may (done): the frontier is row 1's 3
    assert progress.reward([1, 2, 7]) == 3 * 2
    assert progress.progress == [6, 3, 11] and progress.done == [False, False, True]
    assert progress.laggards() == [1]
    # row 1 stopped (EOS): the frontier is taken over the rows that ran (row 0: 6 -> 8), still
    # times the batch size (a stopped row is computed until the batch ends)
    assert progress.reward([2, 0, 0]) == 3 * 2
    assert progress.done == [False, True, True] and progress.laggards() == [0]
    # over a call the rewards sum to the batch's progress: plain rounds are worth the batch size
    plain = BatchProgress(4, 6)
    assert [plain.reward([1, 1, 1, 1]) for _ in range(5)] == [4.0] * 5 and all(plain.done)


def test_batch_rewards_telescope_to_the_batch_end():
    """Summed over a call (no EOS), the rewards are the batch size times the tokens the last row
    needed, however the gains were spread: racing rows ahead earns nothing."""
    progress, total = BatchProgress(2, 9), 0.0
    for counts in ([3, 1], [1, 3], [1, 1], [3, 3]):
        total += progress.reward(counts)
    assert all(progress.done) and total == 2 * 8
