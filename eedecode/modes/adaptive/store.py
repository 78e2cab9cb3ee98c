"""What the adaptive mode learns for one model, in typed fields: the bandit's estimates, each
drafter's statistics (its stop rule's calibration and its draft-length model), what the prompt's
probe has seen, and the measured step times per batch-size bucket. A :class:`Policy` is kept in the
model's memory (:class:`~eedecode.model.memory.ModelMemory`), one per set of drafting options, and
can be saved to a file and read back (:mod:`.policy_file`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...drafting.base import DraftStats
from ...drafting.run_lengths import RunLengths
from .arms import Arm
from .bandit import Bandit
from .settle import Settle

#: Smoothing of measured step times (exponential moving average weight of a new round).
COST_EMA = 0.1
#: A round the machine preempted counts as at most this many times the running estimate.
TIME_CAP = 2.0


def smoothed(current: float | None, value: float) -> float:
    """The moving average of a measured time after one more measurement."""
    if current is None:
        return value
    return (1 - COST_EMA) * current + COST_EMA * min(value, TIME_CAP * current)


@dataclass
class StepTimes:
    """Measured seconds (moving averages) in one batch-size bucket."""

    plain: float | None = None  # a plain decoding round
    overhead: float | None = None  # a round's bookkeeping beyond its drafting and verification
    verify: dict[tuple[int, int], float] = field(default_factory=dict)  # (entry layer, tokens T)
    draft: dict[str, float] = field(default_factory=dict)  # drafter name -> one draft step

    def draft_cost(self, drafter: str) -> float | None:
        """One draft step of ``drafter`` in plain decoding rounds, when both are measured."""
        step = self.draft.get(drafter)
        return step / self.plain if step and self.plain else None

    def verify_costs(self, entry: int, prior: list[float]) -> list[float]:
        """A verification of ``T`` tokens entering at layer ``entry`` and its round's bookkeeping,
        in plain decoding rounds; ``prior[T - 1]`` where not measured. Exit drafts add the pass
        that makes the last draft's exit state."""
        overhead = (self.overhead or 0.0) + (self.draft.get(f"exit:E={entry}", 0.0) if entry else 0.0)
        out = []
        for T, p in enumerate(prior, start=1):
            v = self.verify.get((entry, T))
            out.append((v + overhead) / self.plain if v and self.plain else p)
        return out


@dataclass
class Tuned:
    """What ``eedecode tune`` found for a model: a layer set to draft through (empty: none pays)
    and the tuning text's tokens ranked by frequency."""

    skip_layers: tuple[int, ...] = ()
    draft_vocab: tuple[int, ...] = ()


@dataclass
class Policy:
    """The adaptive mode's learned state for one model and one set of drafting options."""

    arms: list[Arm]
    bandit: Bandit
    model: str = ""  # what it was learned on (a fingerprint of the model's config)
    tuned: Tuned = field(default_factory=Tuned)
    drafters: dict[str, DraftStats] = field(default_factory=dict)  # live, by drafter name
    probe_runs: dict[str, RunLengths] = field(default_factory=dict)  # the probe's alone, by drafter
    probed: dict[str, int] = field(default_factory=dict)  # prompt positions the probe has seen
    calls: int = 0
    reprobe_due: bool = False  # a probe of every layer is due at the next call not settled
    times: dict[int, StepTimes] = field(default_factory=dict)  # by batch-size bucket
    settled: dict[int, Settle] = field(default_factory=dict)  # by batch-size bucket (not saved)
    #: Statistics read from a file and not yet used (they become live on a device, at a length).
    saved_drafters: dict[str, dict] = field(default_factory=dict)
    saved_probe_runs: dict[str, dict] = field(default_factory=dict)

    def draft_stats(self, name: str, device, max_drafts: int) -> DraftStats:
        """``name``'s statistics (from the file it was read from, or new)."""
        stats = self.drafters.get(name)
        if stats is None:
            stats = self.drafters[name] = DraftStats.new(device, max_drafts, self.saved_drafters.get(name))
        return stats

    def probe_stats(self, name: str, device, max_drafts: int) -> RunLengths:
        """How far ``name``'s drafts run by the probe's evidence alone."""
        runs = self.probe_runs.get(name)
        if runs is None:
            runs = self.probe_runs[name] = RunLengths(device, max_drafts, self.saved_probe_runs.get(name))
        return runs

    def has_probe_stats(self, name: str) -> bool:
        return name in self.probe_runs or name in self.saved_probe_runs

    def times_at(self, bucket: int) -> StepTimes:
        if bucket not in self.times:
            self.times[bucket] = StepTimes()
        return self.times[bucket]

    def settle_at(self, bucket: int) -> Settle:
        if bucket not in self.settled:
            self.settled[bucket] = Settle()
        return self.settled[bucket]

    def best(self) -> Arm:
        return self.bandit.best()
