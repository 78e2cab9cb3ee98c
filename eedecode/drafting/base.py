"""What every drafter is: one small class that proposes drafts and learns from their fate.

A drafter (the shape of Hugging Face's ``CandidateGenerator`` and vLLM's proposers) has two
methods: :meth:`Drafter.propose` makes up to ``k`` drafts per batch row (a row may propose fewer:
``counts``), with their draft distributions when sampling, and says where verification starts;
:meth:`Drafter.observe` is told, right after verification, how many of them each row accepted.
What a drafter learns (how its drafts' confidence maps to acceptance, how far its drafts run) is
a :class:`DraftStats` the caller hands it and keeps: a mode that adapts reads it to plan, and
saves it with its policy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from .run_lengths import RunLengths
from .stop_rules import Calibration, ThresholdStop

Tensor = torch.Tensor


@dataclass
class Proposal:
    """A round's drafts. Verification runs layers ``[entry, L)`` over ``states`` when ``entry > 0``
    (early-exit drafts already wrote their keys and values below ``entry``), else every layer over
    the pending token and the drafts."""

    drafts: Tensor  # [B, k]
    counts: Tensor | None  # [B]: row b's drafts are drafts[b, :counts[b]]; None: all k
    qs: list[Tensor]  # draft distributions [B, V] per position (sampling), or []
    entry: int  # the layer verification starts at
    states: Tensor | None  # [B, k + 1, H] states entering `entry` (entry > 0), else None
    exit_states: Tensor | None = None  # [B, k, H] the drafts' exit states (for rebuilding q)
    confidences: Tensor | None = None  # [B, k] each draft's probability under the draft model
    step_seconds: list[float] | None = None  # wall time of each draft step (when the host waited on it)
    ruled: bool = False  # a stop rule cut the rows' drafts (their lengths say how confident, not how far)

    @property
    def k(self) -> int:
        return self.drafts.shape[1]

    def per_row(self, active: Tensor) -> Tensor:
        """Drafts proposed by each row, ``[B]`` (none by rows that do not run)."""
        per_row = (
            self.counts if self.counts is not None else torch.full_like(active, self.k, dtype=torch.long)
        )
        return per_row * active

    def drafted(self, active: Tensor) -> Tensor:
        """Drafts proposed by running rows (a statistic)."""
        return self.per_row(active).sum()


@dataclass
class DraftStats:
    """What one drafter has learned: P(accepted | confidence) for its stop rule, and how far its
    drafts run (the draft-length model)."""

    calibration: Calibration
    runs: RunLengths

    @classmethod
    def new(cls, device, max_drafts: int, saved: dict | None = None) -> DraftStats:
        saved = saved or {}
        cal = saved.get("calibration") or {}
        return cls(
            Calibration(device, cal.get("accepted"), cal.get("judged")),
            RunLengths(device, max_drafts, saved.get("runs")),
        )

    def state(self) -> dict:
        return {"calibration": self.calibration.state(), "runs": self.runs.state()}


def stop_rule(stop):
    """A stop rule from a threshold (HF's ``assistant_confidence_threshold``) or a rule object."""
    return ThresholdStop(stop) if isinstance(stop, (int, float)) else stop


class Drafter(ABC):
    """Proposes drafts; learns from how many were accepted (into ``stats``, when given)."""

    #: What it drafts with; a mode keeps its statistics under this name ("exit:E=2", "lookup", ...).
    name: str

    def __init__(self, stats: DraftStats | None = None):
        self.stats = stats

    @abstractmethod
    def propose(self, state, k: int, stop=None) -> Proposal:
        """Up to ``k`` drafts per running row of ``state``. ``stop``: a threshold or a draft stop
        rule (:mod:`eedecode.drafting.stop_rules`): a row stops proposing after the draft the rule
        turns it down at (that draft is kept: it is paid for, and may still be accepted)."""

    def observe(self, state, proposal: Proposal, counts: Tensor) -> None:
        """Right after verification (``counts`` ``[B]``: each row's accepted drafts plus one, on the
        device): the calibration learns from the drafts' confidences, the draft-length model from
        drafts that no stop rule cut short. No host synchronisation."""
        if self.stats is None:
            return
        judged = proposal.per_row(state.active)
        if proposal.confidences is not None:
            self.stats.calibration.update(proposal.confidences, judged, counts - 1)
        if not proposal.ruled:
            device = self.stats.runs.judged.device
            self.stats.runs.update(judged.to(device), counts.to(device))
