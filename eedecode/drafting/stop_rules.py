"""When should a row stop drafting? Stop rules for confidence-stopped drafts.

A row drafts on while the next draft is worth its cost. :class:`ThresholdStop` is HF's rule
(``assistant_confidence_threshold``): stop after the first draft whose probability under the
draft model is below a fixed threshold. :class:`CalibratedStop` needs no threshold. It learns,
per exit layer, the probability that a draft of a given confidence is accepted (a binned
histogram, updated after every verification from the drafts that were actually judged). It keeps
each row's probability that all its drafts so far are accepted. A row goes on while that
probability, times the mean acceptance of a next draft, is worth more than a draft step costs,
measured in full steps. This is the same reasoning as DEL's dynamic draft length (Zarch et al.
2025), fitted online with no training. Both rules are batched: every row stops on its own.
A rule is any object with ``start(active) -> alive`` and ``keep(alive, confidence, token) ->
alive`` (``[B]`` tensors).

:class:`~eedecode.drafting.run_lengths.RunLengths` answers the question for a whole round
instead: how far a drafter's drafts run, and so how many drafts per round give the most tokens per
unit of cost.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

BINS = 10  # confidence bins of the calibration histogram
PRIOR = 2.0  # pseudo-counts per bin before any data: P(accept | confidence c) = c
DISCOUNT = 0.995  # per-update forgetting of the histogram


class ThresholdStop:
    """Stop after the first draft less likely than ``threshold``."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def start(self, active: Tensor) -> Tensor:
        return active.clone()

    def keep(self, alive: Tensor, confidence: Tensor, token: Tensor | None = None) -> Tensor:
        return alive & (confidence >= self.threshold)


class Calibration:
    """P(draft accepted | its confidence, the drafts before it accepted), per confidence bin."""

    def __init__(self, device, accepted: list[float] | None = None, judged: list[float] | None = None):
        centres = (torch.arange(BINS, dtype=torch.float64) + 0.5) / BINS
        self.accepted = torch.tensor(accepted, dtype=torch.float64) if accepted else PRIOR * centres
        self.judged = (
            torch.tensor(judged, dtype=torch.float64)
            if judged
            else torch.full((BINS,), PRIOR, dtype=torch.float64)
        )
        self.accepted, self.judged = self.accepted.to(device), self.judged.to(device)

    @staticmethod
    def bins(confidence: Tensor) -> Tensor:
        return (confidence.double() * BINS).long().clamp(0, BINS - 1)

    def probability(self, confidence: Tensor) -> Tensor:
        b = self.bins(confidence)
        return self.accepted[b] / self.judged[b]

    def mean(self) -> Tensor:
        return self.accepted.sum() / self.judged.sum()

    def update(self, confidences: Tensor, num_drafts: Tensor, accepted: Tensor) -> None:
        """After verification: drafts ``j < accepted[b]`` were accepted, draft ``accepted[b]`` (if
        row b proposed it) was rejected, later ones were never judged. ``confidences`` ``[B, k]``."""
        if confidences.shape[1] == 0:
            return
        j = torch.arange(confidences.shape[1], device=confidences.device)[None, :]
        judged = (j <= accepted[:, None]) & (j < num_drafts[:, None])
        hit = j < accepted[:, None]
        b = self.bins(confidences)
        self.accepted.mul_(DISCOUNT).scatter_add_(0, b[hit], torch.ones_like(b[hit], dtype=torch.float64))
        self.judged.mul_(DISCOUNT).scatter_add_(0, b[judged], torch.ones_like(b[judged], dtype=torch.float64))

    def observe(self, confidence: Tensor, agreed: Tensor) -> None:
        """Add judged drafts (or probes) one by one: ``confidence`` ``[N]``, ``agreed`` ``[N]`` bool."""
        b = self.bins(confidence)
        self.accepted.scatter_add_(0, b[agreed], torch.ones_like(b[agreed], dtype=torch.float64))
        self.judged.scatter_add_(0, b, torch.ones_like(b, dtype=torch.float64))

    def state(self) -> dict:
        return {"accepted": self.accepted.tolist(), "judged": self.judged.tolist()}


class CalibratedStop:
    """Go on while P(all drafts so far accepted) x mean acceptance >= ``cost`` (a draft step in
    full steps)."""

    def __init__(self, calibration: Calibration, cost: float):
        self.calibration, self.cost = calibration, cost
        self.survive: Tensor | None = None

    def start(self, active: Tensor) -> Tensor:
        self.survive = torch.ones(active.shape, dtype=torch.float64, device=active.device)
        return active.clone()

    def keep(self, alive: Tensor, confidence: Tensor, token: Tensor | None = None) -> Tensor:
        self.survive = self.survive * self.calibration.probability(confidence)
        return alive & (self.survive * self.calibration.mean() >= self.cost)
