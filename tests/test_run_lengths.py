"""The draft-length model: judged and accepted positions, teacher-forced runs, the best length."""

from __future__ import annotations

import pytest
import torch

from eedecode.drafting import run_lengths
from eedecode.drafting.run_lengths import RunLengths


def test_run_lengths_count_judged_and_accepted_positions(monkeypatch):
    monkeypatch.setattr(run_lengths, "DISCOUNT", 1.0)
    runs = RunLengths("cpu", 4)
    before_acc, before_judged = runs.accepted.clone(), runs.judged.clone()
    # row 0 drafted 3, 1 accepted: positions 1 (accepted) and 2 (rejected) judged, 3 not
    # row 1 drafted 2, both accepted; row 2 (not running) drafted none. The round's tokens are
    # the accepted drafts and one more.
    runs.update(torch.tensor([3, 2, 0]), torch.tensor([2, 3, 1]))
    assert runs.pending and torch.equal(runs.judged, before_judged)  # counted in batches
    runs.flush()
    assert (runs.accepted - before_acc).tolist() == [2, 1, 0, 0]
    assert (runs.judged - before_judged).tolist() == [2, 2, 0, 0]


def test_run_lengths_from_teacher_forced_runs(monkeypatch):
    monkeypatch.setattr(run_lengths, "RUN_PRIOR", 1e-9)  # no prior: the counts alone
    runs = RunLengths("cpu", 3)
    agreed = torch.tensor([[True, True, False, True, True, True]])
    real = torch.tensor([[False, True, True, True, True, True]])  # the first position is padding
    runs.observe_runs(agreed, real)
    # draft 1 from each real start t=1..5: agreed at t = 1, 3, 4, 5 -> 4 of 5
    # draft 2 from t=1,3,4 (draft 1 agreed, t+1 < 6): agreed at t+1 for t = 3, 4 (t=1: position 2 no)
    # draft 3 from t=3 (t=4 would need position 6): position 5 agreed
    torch.testing.assert_close(
        runs.judged, torch.tensor([5.0, 3.0, 1.0], dtype=torch.float64), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        runs.accepted, torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64), atol=1e-6, rtol=0
    )


def test_best_length_weighs_tokens_against_cost():
    runs = RunLengths("cpu", 6)
    flat = [1.0] * 7  # a verification costs one step whatever its size
    # drafts always accepted and free: the longest draft wins, k + 1 tokens per step
    assert runs.best_length(0.0, flat, survival=[1.0] * 6) == (6, 7.0)
    # never accepted: one draft, one token for (c + 1)
    assert runs.best_length(0.5, flat, survival=[0.0] * 6) == (1, pytest.approx(1 / 1.5))
    # half accepted, drafts at 0.2 of a step, v(T) = 1 + 0.2 (T - 1): k=1 1.5/1.4, k=2 1.75/1.8
    costs = [1.0 + 0.2 * t for t in range(7)]
    k, speedup = runs.best_length(0.2, costs, survival=[0.5] * 6)
    assert k == 1 and speedup == pytest.approx(1.5 / 1.4)
    # k is bounded by the cost table's length
    assert runs.best_length(0.0, [1.0, 1.0, 1.0], survival=[1.0] * 6)[0] == 2


def test_run_lengths_state_round_trip_and_other_maximum():
    runs = RunLengths("cpu", 3)
    runs.update(torch.tensor([3]), torch.tensor([3]))
    again = RunLengths("cpu", 5, runs.state())  # the state counts what was pending
    assert again.judged[:3].tolist() == runs.judged.tolist()
    assert again.judged[3:].tolist() == [0.0] * 2  # beyond the saved maximum: no data


def test_run_lengths_batched_counting_equals_counting_each_round(monkeypatch):
    monkeypatch.setattr(run_lengths, "FLUSH_EVERY", 1000)
    g = torch.Generator().manual_seed(0)
    rounds = [
        (torch.randint(0, 5, (3,), generator=g), torch.randint(1, 6, (3,), generator=g)) for _ in range(40)
    ]
    batched, each = RunLengths("cpu", 4), RunLengths("cpu", 4)
    for drafted, counts in rounds:
        batched.update(drafted, counts)
        each.update(drafted, counts)
        each.flush()
    assert batched.rates() == pytest.approx(each.rates())


def test_run_lengths_prior_carries_each_position_to_the_next():
    runs = RunLengths("cpu", 3)
    assert runs.rates() == [0.5, 0.5, 0.5]  # nothing known: one half
    # 9 of 9 first drafts accepted, nothing judged further: position 1 near (9 + 0.5) / 10, and the
    # positions never reached at that estimate too, not at one half
    runs.update(torch.tensor([1]), torch.tensor([2]))
    for _ in range(8):
        runs.update(torch.tensor([1]), torch.tensor([2]))
    s = runs.rates()
    first = (run_lengths.DISCOUNT ** torch.arange(9.0, dtype=torch.float64)).sum().item()  # discounted
    assert s[0] == pytest.approx((first + run_lengths.RUN_PRIOR * 0.5) / (first + run_lengths.RUN_PRIOR))
    assert s[1] == pytest.approx(s[0]) and s[2] == pytest.approx(s[0])


def test_run_lengths_count_rounds_of_another_batch_size():
    runs = RunLengths("cpu", 3)
    runs.update(torch.tensor([2, 2]), torch.tensor([3, 1]))  # two rows, then one
    runs.update(torch.tensor([1]), torch.tensor([2]))
    runs.flush()
    # first round discounted once: row 0 judged 1, 2 (both hit), row 1 judged 1 (missed); then 1 hit
    d = run_lengths.DISCOUNT
    torch.testing.assert_close(runs.judged, torch.tensor([2 * d + 1, d, 0.0], dtype=torch.float64))
    torch.testing.assert_close(runs.accepted, torch.tensor([d + 1, d, 0.0], dtype=torch.float64))


def test_judging_drafts_against_the_tokens_a_round_emitted():
    """A draft would have been accepted when it and the drafts before it equal the round's tokens;
    past the round's tokens nothing is known. Rows: drafts a b c against tokens a b x (3 tokens):
    positions 1-3 judged, 1-2 accepted; against a b (2 tokens): 1-2 judged and accepted, 3 not;
    no drafts; a draft that differs at once; a row that did not run."""
    runs = RunLengths("cpu", 4)
    drafts = torch.tensor([[1, 2, 3], [1, 2, 3], [1, 2, 3], [5, 2, 3], [1, 2, 3]])
    tokens = torch.tensor([[1, 2, 9], [1, 2, 0], [1, 0, 0], [1, 2, 3], [1, 2, 3]])
    counts = torch.tensor([3, 2, 1, 3, 3])
    num_drafts = torch.tensor([3, 3, 0, 3, 0])  # row 2 has no drafts, row 4 did not run
    runs.judge(drafts, num_drafts, tokens, counts, "cpu")
    runs.flush()
    assert runs.judged.tolist() == [3.0, 2.0, 1.0, 0.0]  # rows 0, 1, 3 | rows 0, 1 | row 0
    assert runs.accepted.tolist() == [2.0, 2.0, 0.0, 0.0]  # rows 0, 1 | rows 0, 1 | none
    played = RunLengths("cpu", 4)  # drafts that were played: the same as update
    played.update(torch.tensor([3, 1]), torch.tensor([3, 1]))
    again = RunLengths("cpu", 4)
    again.judge(
        drafts[:2], torch.tensor([3, 1]), torch.tensor([[1, 2, 7], [9, 0, 0]]), torch.tensor([3, 1]), "cpu"
    )
    assert again.rates() == pytest.approx(played.rates())
