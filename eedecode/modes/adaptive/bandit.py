"""Choosing how to draft at run time: a bandit over drafting arms, rewarded by tokens per second.

After each round the bandit is told how many tokens the round produced and how long it took. It
keeps each arm's discounted throughput (tokens over seconds) and picks the arm with the best upper
confidence bound (UCB1, Auer et al. 2002, with discounting for a changing context, Garivier and
Moulines 2011), once each arm has been tried a few times in turn. Each batch-size bucket, and each
context within it (whether the round's text repeats: the laggard found a lookup match), keeps its
own estimates; plain decoding's, which do not depend on the text, pool the contexts. A predicted
rate can count as a few rounds. Nothing is trained. The survey's UCBEE and CeeBERT tune early-exit
thresholds with bandits the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .arms import Arm

#: The exploration weight of UCB1 (relative to the best arm's rate).
EXPLORATION = 0.3
#: Per-round discount of past observations (an effective memory of about 1 / (1 - DISCOUNT) rounds).
DISCOUNT = 0.995
#: Rounds an arm is tried, in turn with the other untried ones, before the bound decides: one
#: round is too noisy a first estimate (a lookup round that missed would bury the arm).
MIN_PULLS = 3
#: A round's seconds count at most this many times its arm's mean round (see ArmStats.add).
ROUND_CAP = 2.0
#: The weight, in rounds, of a predicted rate given to :meth:`Bandit.choose`.
PRIOR_ROUNDS = 4
#: Arm kinds whose speed does not depend on the round's context (a plain step reads no drafts):
#: their estimates pool every context of the bucket.
CONTEXT_FREE = ("none",)


@dataclass
class ArmStats:
    tokens: float = 0.0  # discounted tokens produced
    seconds: float = 0.0  # discounted seconds spent (each round's capped, see add)
    rounds: float = 0.0  # discounted rounds
    pulls: int = 0  # rounds ever played (not discounted)

    @property
    def rate(self) -> float:
        """Tokens per second: the tokens over the seconds of the arm's rounds, each round's
        seconds counted at most ``ROUND_CAP`` times the arm's mean round (see :meth:`add`)."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def add(self, tokens: float, seconds: float) -> None:
        """One round. Its seconds count at most ``ROUND_CAP`` times the mean round so far: a round
        the machine preempted (tens of milliseconds on a shared CPU, against a few for a round)
        cannot bury the estimate. Otherwise the estimate is total tokens over total time, the
        throughput, which a mean of the rounds' own rates is not (it favours short rounds)."""
        if self.pulls >= 1 and self.rounds > 0:  # the mean round (discounting keeps the ratio)
            seconds = min(seconds, ROUND_CAP * self.seconds / self.rounds)
        self.tokens += tokens
        self.seconds += seconds
        self.rounds += 1.0
        self.pulls += 1

    def fade(self, factor: float) -> None:
        self.tokens *= factor
        self.seconds *= factor
        self.rounds *= factor


@dataclass(frozen=True)
class Slot:
    """Where an arm's estimate is kept: the arm, the round's context, the batch-size bucket."""

    arm: str  # Arm.key
    matched: bool  # the laggard found a lookup match (repeating text)
    bucket: int  # a power of two: 1, 2, 4, ... (the batch size rounded down)


def bucket_of(batch_size: int) -> int:
    """The power of two at or below ``batch_size``: batch sizes in one bucket share estimates."""
    return 1 << (max(batch_size, 1).bit_length() - 1)


class Bandit:
    """A discounted UCB1 bandit over ``arms`` (see the module docstring). ``bucket`` and
    ``matched`` say where the next rounds count (set by the mode)."""

    def __init__(self, arms: list[Arm], estimates: dict[Slot, ArmStats] | None = None):
        self.arms = arms
        self.estimates: dict[Slot, ArmStats] = dict(estimates or {})
        self.bucket = 1
        self.matched = False
        self._bucketed: tuple = (None, 0, [])  # (bucket, number of estimates, the bucket's)

    def choose(self, available: list[Arm] | None = None, priors: dict[str, float] | None = None) -> Arm:
        """The arm with the highest upper confidence bound among ``available`` (default: all).
        First, while some arm has been played fewer than ``MIN_PULLS`` rounds, the least played
        (the first of them, in order). ``priors``: a predicted rate per arm key (tokens/s), which
        counts as ``PRIOR_ROUNDS`` rounds of that rate in the arm's estimate, so that a few
        unlucky rounds do not shut out an arm that the draft-length model says pays."""
        candidates = available if available is not None else self.arms
        if len(candidates) == 1:
            return candidates[0]
        known = {arm.key: self._known(arm) for arm in candidates}
        fewest = min(candidates, key=lambda a: known[a.key].pulls)
        if known[fewest.key].pulls < MIN_PULLS:
            return fewest
        priors = priors or {}
        estimates = {}
        for arm in candidates:
            s, prior = known[arm.key], priors.get(arm.key)
            if prior is None:
                estimates[arm.key] = (s.rate, s.rounds)
            else:
                n = s.rounds + PRIOR_ROUNDS
                estimates[arm.key] = ((s.rounds * s.rate + PRIOR_ROUNDS * prior) / n, n)
        best = max(rate for rate, _ in estimates.values()) or 1.0
        total = sum(n for _, n in estimates.values())

        def bound(arm: Arm) -> float:
            rate, n = estimates[arm.key]
            return rate + EXPLORATION * best * math.sqrt(math.log(max(total, 1.0)) / max(n, 1e-9))

        return max(candidates, key=bound)

    def update(self, arm: Arm, tokens: float, seconds: float) -> None:
        """One round with ``arm`` was worth ``tokens`` tokens in ``seconds``. The memory of the
        bucket (every context) fades."""
        stats = self._stats(arm)
        for other in self._in_bucket():
            other.fade(DISCOUNT)
        stats.add(tokens, seconds)

    def pulls(self, arm: Arm) -> int:
        """Rounds ``arm`` was played in the current bucket and context (plain decoding: either)."""
        return self._known(arm).pulls

    def replace(self, arm: Arm, tokens: float, seconds: float, rounds: float) -> None:
        """``arm``'s estimate in the current bucket and context becomes these rounds alone."""
        stats = self._stats(arm)
        stats.tokens, stats.seconds, stats.rounds = tokens, seconds, rounds

    def rate(self, arm: Arm) -> float:
        """``arm``'s estimated rate (tokens/s) in the current bucket and context (0: not played)."""
        return self._known(arm).rate

    def best(self) -> Arm:
        """The arm with the best estimated rate in any context of the current bucket (no
        exploration)."""

        def rate(arm: Arm) -> float:
            found = (self.estimates.get(Slot(arm.key, m, self.bucket)) for m in (False, True))
            return max((s.rate for s in found if s is not None), default=0.0)

        return max(self.arms, key=rate)

    def _in_bucket(self) -> list[ArmStats]:
        """The estimates of the current bucket, found again only when a bucket or an estimate is new."""
        if self._bucketed[:2] != (self.bucket, len(self.estimates)):
            found = [s for slot, s in self.estimates.items() if slot.bucket == self.bucket]
            self._bucketed = (self.bucket, len(self.estimates), found)
        return self._bucketed[2]

    def _known(self, arm: Arm) -> ArmStats:
        """What is known of ``arm`` in the current bucket and context: its own estimates, or for
        an arm in ``CONTEXT_FREE`` those of every context of the bucket, summed."""
        if arm.kind not in CONTEXT_FREE:
            return self._stats(arm)
        found = [s for s in (self.estimates.get(Slot(arm.key, m, self.bucket)) for m in (False, True)) if s]
        return ArmStats(*(sum(getattr(s, f.name) for s in found) for f in fields(ArmStats)))

    def _stats(self, arm: Arm) -> ArmStats:
        slot = Slot(arm.key, self.matched, self.bucket)
        stats = self.estimates.get(slot)
        if stats is None:
            stats = self.estimates[slot] = ArmStats()
        return stats
