"""The drafting policy: a discounted UCB1 bandit over arms, rewarded by tokens per second."""

from __future__ import annotations

import pytest

from eedecode.modes.adaptive import policy as pol
from eedecode.modes.adaptive.policy import Arm, Policy

NONE, LOOKUP = Arm("none"), Arm("lookup", max_drafts=8)
EXIT = Arm("exit", exit_layer=2, threshold=0.6, max_drafts=6)


def test_untried_arms_come_first_in_order_each_a_few_times():
    p = Policy([NONE, LOOKUP, EXIT])
    seen = []
    for _ in range(3 * pol.MIN_PULLS):
        arm = p.choose()
        seen.append(arm)
        p.update(arm, tokens=1, seconds=1 if arm != LOOKUP else 0.01)  # lookup is far faster
    assert seen == [NONE, LOOKUP, EXIT] * pol.MIN_PULLS  # in turn, whatever the first rounds said
    assert p.choose() == LOOKUP


def test_it_settles_on_the_fastest_arm_and_still_explores(monkeypatch):
    p = Policy([NONE, LOOKUP, EXIT])
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
    p = Policy([NONE, EXIT])
    for _ in range(100):
        p.update(NONE, 1, 1 / 100)
        p.update(EXIT, 1, 1 / 150)
    assert p.best() == EXIT
    for _ in range(200):  # the context changes: drafts stop being accepted
        p.update(NONE, 1, 1 / 100)
        p.update(EXIT, 1, 1 / 50)
    assert p.best() == NONE
    s = p.stats[EXIT.key]
    assert s.rounds < 1 / (1 - pol.DISCOUNT) + 1  # bounded memory


def test_only_available_arms_are_chosen():
    p = Policy([NONE, LOOKUP, EXIT])
    for _ in range(pol.MIN_PULLS):
        for arm in (NONE, LOOKUP, EXIT):
            p.update(arm, 1, 1)
    p.update(LOOKUP, 100, 1)
    assert p.choose() == LOOKUP
    assert p.choose([NONE, EXIT]) in (NONE, EXIT)


def test_save_and_load_round_trip(tmp_path):
    p = Policy([NONE, EXIT], model="llama-8x256")
    p.update(EXIT, 5, 0.5)
    path = tmp_path / "policy.json"
    p.save(path)
    q = Policy.load(path)
    assert q.arms == p.arms and q.model == "llama-8x256"
    assert q.stats[EXIT.key].rate == pytest.approx(10.0)
    with pytest.raises(ValueError, match="policy: .*missing.json does not exist"):
        Policy.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="policy_in: .* is a directory"):
        Policy.load(tmp_path, "policy_in")
    with pytest.raises(ValueError, match="policy_in: must be a path"):
        Policy.load(5, "policy_in")
    for text in ('{"format": "other"}', "not json", "[1, 2]", '{"format": "eedecode-policy/1"}'):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(ValueError, match="not an eedecode policy file"):
            Policy.load(tmp_path / "bad.json")


def test_a_file_saved_without_rates_keeps_its_estimates():
    data = Policy([NONE, EXIT]).to_json()
    data["stats"] = {
        NONE.key: {"tokens": 900.0, "seconds": 3.0, "rounds": 900.0},
        EXIT.key: {"tokens": 9000.0, "seconds": 10.0, "rounds": 3000.0},
    }
    p = Policy.from_json(data)
    assert p.stats[EXIT.key].rate == pytest.approx(900.0) and p.stats[NONE.key].rate == pytest.approx(300.0)
    assert p.stats[NONE.key].pulls == 900  # saved before pulls were kept: at least its rounds
    p.update(EXIT, 3, 0.003)  # one new round at 1000 tokens/s
    assert 899.0 < p.stats[EXIT.key].rate < 1000.0
    assert p.choose([NONE, EXIT]) == EXIT


def test_a_predicted_rate_counts_as_a_few_rounds(monkeypatch):
    """A prior (the plan's predicted rate) weighs PRIOR_ROUNDS rounds: a few unlucky rounds do not
    shut out an arm predicted to pay, while many measured rounds outweigh the prediction."""
    monkeypatch.setattr(pol, "EXPLORATION", 0.0)  # the estimates alone
    p = Policy([NONE, EXIT])
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
    p = Policy([NONE, LOOKUP])
    p.context = pol.MATCHED
    for _ in range(pol.MIN_PULLS):
        p.update(LOOKUP, 3, 1 / 100)
        p.update(NONE, 1, 1 / 100)
    assert p.choose() == LOOKUP and p.rate(LOOKUP) == pytest.approx(300)
    p.context = ""
    assert p.rate(LOOKUP) == 0  # nothing known of lookup without a match
    assert set(p.stats) >= {"none+match", "lookup:k=8+match"}


def test_plain_decoding_is_known_in_every_context(monkeypatch):
    """A plain step's speed does not depend on the text: its estimate pools the contexts of the
    bucket, so a context where it is seldom played (and the predicted rates built on it) knows it
    from all its rounds."""
    monkeypatch.setattr(pol, "DISCOUNT", 1.0)  # plain sums
    p = Policy([NONE, LOOKUP])
    for _ in range(10):
        p.update(NONE, 1, 1 / 100)
    p.context = pol.MATCHED
    p.update(NONE, 1, 1 / 50)  # one slow round with a match
    assert p.rate(NONE) == pytest.approx(11 / (10 / 100 + 1 / 50))  # every round, either context
    assert p.stats["none+match"].pulls == 1 and p.stats["none"].pulls == 10  # kept apart
    assert p.choose([NONE, LOOKUP]) == LOOKUP  # lookup untried here; plain decoding is known
    p.bucket = "@B4"
    assert p.rate(NONE) == 0  # another bucket: nothing known


def test_a_batch_round_is_worth_what_its_laggards_gained():
    from eedecode.modes.adaptive.policy import Pace

    assert Pace(1, 10).reward([3]) == 3  # one row: the tokens it produced
    pace = Pace(3, 10)
    assert pace.laggards() == [0, 1, 2]  # all tied at the start
    assert pace.reward([5, 1, 4]) == 3 * (5 + 1 + 4) / 3  # every row is a laggard: their mean gain
    assert pace.laggards() == [1]
    assert pace.reward([1, 2, 7]) == 3 * 2  # the one laggard's gain, whatever the others gained
    assert pace.progress == [6, 3, 11] and pace.done == [False, False, True]  # row 2 emitted all
    assert pace.laggards() == [1]
    assert pace.reward([2, 0, 0]) == 1 * 2  # row 1 stopped (EOS): the running rows' mean instead
    assert pace.done == [False, True, True] and pace.laggards() == [0]


def test_a_file_saved_before_contexts_counts_for_both(tmp_path):
    p = Policy([NONE, LOOKUP])
    for _ in range(pol.MIN_PULLS):
        p.update(LOOKUP, 3, 1 / 100)
    data = p.to_json()
    data["stats"] = {k: v for k, v in data["stats"].items() if pol.MATCHED not in k}
    data["stats"]["none@B4"] = {"tokens": 4.0, "seconds": 0.01, "rounds": 1.0, "rates": 400.0, "pulls": 1}
    old = Policy.from_json(data)
    assert old.stats["lookup:k=8+match"].pulls == pol.MIN_PULLS and "none+match@B4" in old.stats
    old.context = pol.MATCHED
    assert old.rate(LOOKUP) == pytest.approx(300)
    old.context = ""
    assert old.best() == LOOKUP
