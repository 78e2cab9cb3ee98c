"""Settling on plain decoding where no drafter pays: the adaptive mode's fast path.

A bandit never stops exploring: on a model, batch size or text where every drafting arm is slower
than plain decoding, it keeps playing them a share of the rounds, and each round pays the
bookkeeping that choosing needs (the lookup search, timing, the bandit's update). So once the
evidence says plain decoding wins, the mode **settles**: the next ``stretch`` rounds of that
batch-size bucket are plain steps and nothing else, in this call and the next ones (the state is
kept in the policy, per bucket).

* It settles when every arm the round could play has been measured (at least ``MIN_PULLS``
  rounds) and plain decoding's measured rate is at least every other arm's measured in the
  bucket (in any context, at least ``MIN_PULLS`` rounds). No margin: where an arm is about as
  fast as plain decoding, a stretch of plain rounds loses about nothing, and the checks keep an
  arm that does pay from being shut out.
* When a stretch ends it checks: the drafting arm with the best measured rate among those the
  round can play is played ``CHECK_PULLS`` fresh rounds (its estimate keeps its history, which
  the fresh rounds move). Plain decoding still wins: the next stretch is twice as long, up to
  ``LONGEST_STRETCH``. An arm beats it: the bandit goes on as before, and the next stretch starts
  at ``FIRST_STRETCH`` again.

A check is one losing round per stretch, and a losing round is expensive exactly where drafting
does not pay (at batch size 16 on the demo model, a round that verifies seven tokens per row
costs 2.3 plain steps); the cost of a wrong settlement is bounded by one stretch.
"""

from __future__ import annotations

from dataclasses import dataclass

from .arms import Arm
from .bandit import MIN_PULLS, Bandit

#: Fresh rounds of the best drafting arm when a stretch ends.
CHECK_PULLS = 1
#: The first stretch, in rounds; each confirmed one doubles the next, up to ``LONGEST_STRETCH``.
FIRST_STRETCH = 64
LONGEST_STRETCH = 1024


@dataclass
class Settle:
    """One batch-size bucket's settlement (kept in the policy across calls)."""

    left: int = 0  # plain rounds left in the current stretch (0: the bandit chooses)
    stretch: int = FIRST_STRETCH  # the length of the next stretch
    settled: int = 0  # stretches so far
    checked: dict[str, int] | None = None  # arm key -> its pulls when the last stretch ended

    @property
    def active(self) -> bool:
        return self.left > 0

    def take(self) -> None:
        """One plain round of the stretch; when it is the last, the check starts."""
        self.left -= 1

    def forced(self, bandit: Bandit, available: list[Arm]) -> Arm | None:
        """During a check (after a stretch, until ``CHECK_PULLS`` fresh drafting rounds), the
        available drafting arm with the best measured rate; else None (the bandit chooses)."""
        if self.active or self.checked is None or self._fresh(bandit) >= CHECK_PULLS:
            return None
        drafting = [a for a in available if a.kind != "none"]
        return max(drafting, key=bandit.rate, default=None)

    def decide(self, bandit: Bandit, available: list[Arm], plain: Arm) -> None:
        """After a round's update: settle if the evidence says plain decoding wins (see the
        module docstring). ``available``: the arms that round could have played."""
        if plain not in available or len(available) == 1:
            return  # a forced plain round (the last token of a row): nothing was chosen
        if any(pulls_in(bandit, a.key) < MIN_PULLS for a in available):
            return
        if self.checked is not None and self._fresh(bandit) < CHECK_PULLS:
            return
        best = max(rates_in(bandit, exclude=plain.key), default=0.0)
        if bandit.rate(plain) >= best:
            self.left = self.stretch
            self.stretch = min(2 * self.stretch, LONGEST_STRETCH)
            self.settled += 1
            self.checked = {
                key: pulls_in(bandit, key) for key in {a.key for a in bandit.arms if a.kind != "none"}
            }
        elif best > bandit.rate(plain):
            self.stretch = FIRST_STRETCH

    def _fresh(self, bandit: Bandit) -> int:
        """Drafting rounds since the last stretch ended."""
        return sum(pulls_in(bandit, key) - n for key, n in (self.checked or {}).items())


def pulls_in(bandit: Bandit, key: str) -> int:
    """Rounds ``key`` was played in the bandit's current bucket, every context."""
    return sum(
        s.pulls for slot, s in bandit.estimates.items() if slot.arm == key and slot.bucket == bandit.bucket
    )


def rates_in(bandit: Bandit, exclude: str) -> list[float]:
    """The measured rates, in the current bucket and any context, of every arm but ``exclude``
    played at least ``MIN_PULLS`` rounds there."""
    return [
        s.rate
        for slot, s in bandit.estimates.items()
        if slot.arm != exclude and slot.bucket == bandit.bucket and s.pulls >= MIN_PULLS
    ]
