"""Settling on plain decoding where no drafter pays: the adaptive mode's fast path.

A bandit never stops exploring: on a model, batch size or text where every drafting arm is slower
than plain decoding, it keeps playing them a share of the rounds, and each round pays the
bookkeeping that choosing needs (the lookup search, timing, the bandit's update). So once the
evidence says plain decoding wins, the mode **settles**: the next ``stretch`` rounds of that
batch-size bucket are plain steps and nothing else, in this call and the next ones (the state is
kept in the policy, per bucket).

* It settles when every arm the round could play has been measured in the round's context (at
  least ``MIN_PULLS`` rounds, as the bandit's own trials) and plain decoding's measured rate is
  at least every other current arm's in the bucket (in either context, at least ``MIN_PULLS``
  rounds). No margin: where an arm is about as fast as plain decoding, a stretch of plain
  rounds loses about nothing, and the checks keep an arm that does pay from being shut out.
* Plain decoding's rate here is that of its steps alone, as a stretch runs them: each plain
  round's step, settled or not, is timed from the step to the round's end, without the choosing
  before it (the lookup search, the bandit) or the judging of lookup drafts after it, once
  ``MIN_PULLS`` steps were timed; the estimate fades with every round of the bucket, as the
  bandit's do, and the settled rounds keep it current (two clock reads a round). A drafting arm
  pays the choosing in every round it plays, a stretch does not (it defers the lookup index's
  updates to one catch-up when the stretch ends, which no rate counts).
* When a stretch ends it checks: one drafting arm is played ``CHECK_PULLS`` rounds, and those
  fresh rounds alone (an estimate with a long history would hardly move with them) are compared
  with plain decoding's steps' rate at that time. The arm checked is the one the mode could offer
  that was checked least recently, the best measured among those: checks take turns among the
  arms, since the arm with the best estimate may not be the one that pays on the text at hand (on
  the plain demo model, exit drafts from layer 2 measured better than lookup drafts in the first
  rounds, and checking them alone held the mode on plain decoding where lookup drafts ran 1.3x).
  The check waits, up to ``CHECK_WAIT`` rounds (plain rounds), for a round in which that arm can
  play (a lookup arm: a round where the laggard found a match); then it checks the best arm the
  round can play, or passes if there is none. No faster: another stretch of the same length, and
  once every arm the mode could offer has had its check at that length (an arm that could not play
  in ``CHECK_WAIT`` rounds counts as checked), the next stretches are twice as long, up to
  ``LONGEST_STRETCH``. Faster: the checked arm's estimate (in the round's context) becomes its
  fresh rounds, so that the bandit plays it and learns whether the text changed; the other arms
  keep their estimates (a check plays an arm where it is at its best, a lookup arm on repeating
  text, and fading every estimate sent the bandit exploring every arm again, at batch 16 on the
  demo model 0.81x plain decoding), and the next stretch starts at ``FIRST_STRETCH`` again.
* Where no drafting arm can come up before the next plan (``lookup=False`` and no exit layer
  offered) there is nothing to choose: the mode settles as soon as plain decoding has its
  ``MIN_PULLS`` rounds.

A check is a couple of losing rounds per stretch, and a losing round is expensive exactly where
drafting does not pay (at batch size 16 on the demo model, a round that verifies seven tokens
per row costs 2.3 plain steps). A wrong settlement lasts until a check finds the arm faster:
with a noisy arm that can take more than one check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .arms import Arm
from .bandit import DISCOUNT, MIN_PULLS, ArmStats, Bandit

#: If False, the mode never settles (the test suite's other tests run the bandit alone).
ENABLED = True
#: Rounds of the best drafting arm when a stretch ends, judged alone against plain decoding.
CHECK_PULLS = 2
#: Rounds a check waits for one in which the arm it checks can play (a lookup match).
CHECK_WAIT = 32
#: The first stretch, in rounds; each confirmed one doubles the next, up to ``LONGEST_STRETCH``.
FIRST_STRETCH = 64
LONGEST_STRETCH = 1024


@dataclass
class Settle:
    """One batch-size bucket's settlement (kept in the policy across calls)."""

    left: int = 0  # plain rounds left in the current stretch (0: the bandit chooses)
    stretch: int = FIRST_STRETCH  # the length of the next stretch
    settled: int = 0  # stretches so far
    checking: bool = False  # a stretch ended: the next drafting rounds are the check
    waited: int = 0  # plain rounds of the current check (waiting for its arm)
    checked: dict[str, int] = field(default_factory=dict)  # arm key -> the stretch it was last checked
    due: str | None = None  # the arm the current check is for
    candidates: frozenset[str] = frozenset()  # the arms the mode could offer at the last check
    rotation: set[str] = field(default_factory=set)  # arms checked (and slower) at this length
    bare: ArmStats = field(default_factory=ArmStats)  # plain steps alone, settled or not (see timed)
    fresh: dict[Arm, list[float]] = field(default_factory=dict)  # the check's rounds: [n, tokens, s]

    @property
    def active(self) -> bool:
        return self.left > 0

    def take(self) -> None:
        """One plain round of the stretch; after the last, the check starts."""
        self.left -= 1
        if self.left == 0:
            self.checking, self.fresh, self.waited = True, {}, 0

    def timed(self, tokens: float, step_seconds: float | None) -> None:
        """A round of the bucket: the bare steps' estimate fades, as the bandit's do every round;
        a plain round, settled or not, adds its step alone (``step_seconds``, timed from the step
        to the round's end, without the choosing before it or the judging of lookup drafts after
        it; None: a drafting round)."""
        self.bare.fade(DISCOUNT)
        if step_seconds is not None and tokens > 0:
            self.bare.add(tokens, step_seconds)

    def plain(self, bandit: Bandit, plain: Arm) -> float:
        """Plain decoding's rate as a stretch runs it: its bare steps' once ``MIN_PULLS`` were
        timed, else its rounds'."""
        return self.bare.rate if self.bare.pulls >= MIN_PULLS else bandit.rate(plain)

    def forced(self, bandit: Bandit, available: list[Arm], offerable: list[Arm] | None = None) -> Arm | None:
        """During a check, the arm this round plays: the drafting arm the check is for, if the
        round can play it; else plain decoding while the check waits; after ``CHECK_WAIT`` rounds
        the available drafting arm with the best measured rate. Outside a check: None (the bandit
        chooses). ``offerable``: the arms the mode could offer in any round now (default:
        ``available``); the check is for the one of them checked least recently (the best
        measured among those)."""
        if self.active or not self.checking:
            return None
        drafting = [a for a in available if a.kind != "none"]
        candidates = [a for a in (offerable or available) if a.kind != "none"]
        if not candidates:
            self.due, self.candidates = None, frozenset()
            return None
        due = min(candidates, key=lambda a: (self.checked.get(a.key, -1), -bandit.rate(a)))
        self.due, self.candidates = due.key, frozenset(a.key for a in candidates)
        if not drafting:
            return None
        if due in drafting:
            return due
        if self.waited < CHECK_WAIT:
            return next((a for a in available if a.kind == "none"), None)  # wait for a round it can play
        self._could_not_play()  # its turn is spent: the best arm this round can play is checked
        return max(drafting, key=bandit.rate)

    def _could_not_play(self) -> None:
        """The arm a check waited ``CHECK_WAIT`` rounds for could not play: it counts as checked."""
        if self.due is not None:
            self.checked[self.due] = self.settled
            self.rotation.add(self.due)

    def decide(
        self,
        bandit: Bandit,
        available: list[Arm],
        plain: Arm,
        arm: Arm,
        tokens: float,
        seconds: float,
        idle: bool = False,
    ):
        """After a round's update: settle (again) if the evidence says plain decoding wins (see
        the module docstring). ``available``: the arms that round could have played; ``arm``,
        ``tokens``, ``seconds``: what it played and what that gave; ``idle``: no drafting arm can
        be offered before the next plan (then there is nothing to choose: plain decoding, once
        measured, settles at once, and a check passes)."""
        if not ENABLED or plain not in available:
            return
        drafting = [a for a in available if a.kind != "none"]
        if self.checking:
            if arm.kind == "none":  # waiting for a round that can play the arm checked, or none can
                self.waited += 1
                if idle or (not drafting and self.waited >= CHECK_WAIT):
                    if not idle:
                        self._could_not_play()
                    self._settle(bandit, plain)
            else:
                n, t, sec = self.fresh.get(arm, (0.0, 0.0, 0.0))
                self.fresh[arm] = [n + 1, t + tokens, sec + seconds]
                rounds, tokens, seconds = (sum(f[i] for f in self.fresh.values()) for i in range(3))
                if rounds >= CHECK_PULLS:
                    self.checking = False
                    for checked in self.fresh:
                        self.checked[checked.key] = self.settled
                    if seconds <= 0 or tokens / seconds <= self.plain(bandit, plain):
                        self._settle(bandit, plain, [a.key for a in self.fresh])
                    else:  # the text or the machine changed: the arm's estimate is its fresh rounds
                        self.stretch, self.rotation = FIRST_STRETCH, set()
                        for checked, (n, t, sec) in self.fresh.items():
                            bandit.replace(checked, t, sec, n)
            return
        if not drafting and idle and bandit.pulls(plain) >= MIN_PULLS:
            self._settle(bandit, plain)  # nothing to choose until the next plan
            return
        if not drafting or any(bandit.pulls(a) < MIN_PULLS for a in available):
            return  # a round with nothing to choose, or an arm not yet tried in this context
        best = max(rates_in(bandit, exclude=plain.key), default=0.0)
        if self.plain(bandit, plain) >= best:
            self._settle(bandit, plain)
        else:
            self.stretch, self.rotation = FIRST_STRETCH, set()

    def _settle(self, bandit: Bandit, plain: Arm, checked=()) -> None:
        """A stretch of plain rounds. ``checked``: the arms a check just found slower; once every
        arm the mode could offer was (none: at every settlement), the stretch doubles."""
        self.rotation |= set(checked)
        if self.settled and self.rotation >= self.candidates:
            self.stretch, self.rotation = min(2 * self.stretch, LONGEST_STRETCH), set()
        self.left, self.checking = self.stretch, False
        self.settled += 1


def rates_in(bandit: Bandit, exclude: str) -> list[float]:
    """The measured rates, in the current bucket and either context, of every current arm but
    ``exclude`` played at least ``MIN_PULLS`` rounds there."""
    keys = {a.key for a in bandit.arms} - {exclude}
    return [
        s.rate
        for slot, s in bandit.estimates.items()
        if slot.arm in keys and slot.bucket == bandit.bucket and s.pulls >= MIN_PULLS
    ]
