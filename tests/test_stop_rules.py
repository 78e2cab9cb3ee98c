"""Draft stop rules: a fixed threshold, and a calibrated rule that weighs survival against cost."""

from __future__ import annotations

import torch

from eedecode.drafting import stop_rules as stopping
from eedecode.drafting.stop_rules import BINS, PRIOR, CalibratedStop, Calibration, ThresholdStop


def test_threshold_stop():
    rule = ThresholdStop(0.5)
    alive = rule.start(torch.tensor([True, True, False]))
    alive = rule.keep(alive, torch.tensor([0.9, 0.2, 0.9]))
    assert alive.tolist() == [True, False, False]


def test_calibration_counts_only_the_judged_drafts(monkeypatch):
    monkeypatch.setattr(stopping, "DISCOUNT", 1.0)
    cal = Calibration("cpu")
    before_acc, before_judged = cal.accepted.clone(), cal.judged.clone()
    conf = torch.tensor([[0.95, 0.95, 0.05, 0.95], [0.55, 0.55, 0.55, 0.55]])
    # row 0: 2 of its 4 drafts accepted -> drafts 0, 1 accepted, draft 2 rejected, draft 3 not judged
    # row 1: proposed 1 draft, accepted it -> only draft 0 judged (and accepted)
    cal.update(conf, num_drafts=torch.tensor([4, 1]), accepted=torch.tensor([2, 1]))
    acc, judged = cal.accepted - before_acc, cal.judged - before_judged
    assert acc[9] == 2 and judged[9] == 2  # the two accepted 0.95 drafts; the last one unjudged
    assert acc[0] == 0 and judged[0] == 1  # the rejected 0.05 draft
    assert acc[5] == 1 and judged[5] == 1  # row 1's one draft
    assert judged.sum() == 4


def test_prior_is_the_identity_and_data_moves_it():
    cal = Calibration("cpu")
    torch.testing.assert_close(
        cal.probability(torch.tensor([0.05, 0.95])), torch.tensor([0.05, 0.95], dtype=torch.float64)
    )
    for _ in range(50):  # drafts of confidence 0.95 are always rejected here
        cal.update(torch.tensor([[0.95]]), torch.tensor([1]), torch.tensor([0]))
    assert cal.probability(torch.tensor([0.95])).item() < 0.1
    assert cal.judged[9].item() > PRIOR and len(cal.state()["accepted"]) == BINS


def test_calibrated_stop_weighs_survival_against_cost():
    cal = Calibration("cpu")  # prior: P(accept | c) = bin centre; mean acceptance 0.5
    rule = CalibratedStop(cal, cost=0.2)
    alive = rule.start(torch.tensor([True, True]))
    alive = rule.keep(alive, torch.tensor([0.95, 0.55]))  # survive 0.95, 0.55; x 0.5 -> 0.475, 0.275
    assert alive.tolist() == [True, True]
    alive = rule.keep(alive, torch.tensor([0.95, 0.55]))  # 0.9025 x 0.5 = 0.45; 0.3025 x 0.5 = 0.15 < 0.2
    assert alive.tolist() == [True, False]
