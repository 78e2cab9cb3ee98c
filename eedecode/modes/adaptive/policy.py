"""Choosing how to draft at run time: a bandit over drafting arms, rewarded by tokens per second.

Each arm is one way to run a round: plain decoding, lookup drafts, or early-exit drafts from
exit layer ``E`` stopped by a confidence threshold. After each round the policy is told how many
tokens the round produced and how long it took. It keeps each arm's discounted throughput
(tokens over seconds), and picks the arm with the best upper confidence bound (UCB1, Auer et al.
2002, with discounting for a changing context, Garivier and Moulines 2011), once each arm has been
tried a few times in turn. Each batch-size bucket, and each context within it (whether the
round's text repeats), keeps its own estimates (plain decoding's, which does not depend on the
text, pool the contexts); a predicted rate can count as a few rounds.
Nothing is trained: the policy adapts within one generation and across the rows of a batch. It
carries over to the next call on the same model, and its state can be saved to a JSON file and
loaded, so a second run starts warm.
The survey's UCBEE and CeeBERT tune early-exit thresholds with bandits the same way.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

#: The exploration weight of UCB1 (relative to the best arm's rate).
EXPLORATION = 0.3
#: Per-round discount of past observations (an effective memory of about 1 / (1 - DISCOUNT) rounds).
DISCOUNT = 0.995
#: Rounds an arm is tried, in turn with the other untried ones, before the bound decides: one
#: round is too noisy a first estimate (a lookup round that missed would bury the arm).
MIN_PULLS = 3
#: A round's seconds count at most this many times its arm's mean round (see ArmStats.add).
ROUND_CAP = 2.0
#: The weight, in rounds, of a predicted rate given to :meth:`Policy.choose`.
PRIOR_ROUNDS = 4
FORMAT = "eedecode-policy/1"
#: The contexts a round can be in: its text does not repeat, or the laggard found a lookup match.
MATCHED = "+match"
CONTEXTS = ("", MATCHED)
#: Arms whose speed does not depend on the round's context (a plain step reads no drafts): their
#: estimates pool every context of the bucket, so a context where they are seldom played still
#: knows them well (and the predicted rates built on plain decoding's are steady).
CONTEXT_FREE = ("none",)


def _in_context(key: str, context: str) -> str:
    """A stats key (``arm.key`` + context + bucket) with ``context`` in place of none."""
    arm, at, bucket = key.partition("@B")
    return arm + context + at + bucket


@dataclass(frozen=True)
class Arm:
    """One way to draft a round. ``kind``: ``"none"`` (plain decoding), ``"lookup"``, ``"exit"``
    (the first ``exit_layer`` layers: up to ``max_drafts`` drafts stopped by a rule, or when
    ``fixed`` as many as the draft-length model chooses for the round), ``"mixed"`` (rows with a
    lookup match take their lookup drafts, the others draft from ``exit_layer``) or ``"skip"``
    (the layers in ``layers``, others skipped)."""

    kind: str
    exit_layer: int | None = None
    threshold: float | None = None  # stop a row's drafting below this draft probability
    max_drafts: int = 0
    layers: tuple[int, ...] | None = None  # "skip": the layers a draft runs through
    fixed: bool = False  # "exit": as many drafts as the draft-length model says (no stop rule)

    @functools.cached_property
    def drafter(self) -> str:
        """What the arm drafts with (arms that differ only in their stop rule share it)."""
        if self.kind in ("exit", "mixed"):
            return f"exit:E={self.exit_layer}"
        if self.kind == "skip":
            return f"skip:{','.join(map(str, self.layers))}"
        return self.kind

    @functools.cached_property
    def key(self) -> str:
        if self.kind == "exit" and self.fixed:
            return f"{self.drafter}:k<={self.max_drafts}"
        if self.kind in ("exit", "skip"):
            stop = "auto" if self.threshold is None else self.threshold
            return f"{self.drafter}:t={stop}:k={self.max_drafts}"
        if self.kind == "lookup":
            return f"lookup:k={self.max_drafts}"
        if self.kind == "mixed":
            stop = "auto" if self.threshold is None else self.threshold
            return f"mixed:lookup+E={self.exit_layer}:t={stop}:k={self.max_drafts}"
        return "none"


@dataclass
class ArmStats:
    tokens: float = 0.0  # discounted tokens produced
    seconds: float = 0.0  # discounted seconds spent (each round's capped, see add)
    rounds: float = 0.0  # discounted rounds
    rates: float = 0.0  # discounted sum of each round's tokens / seconds (kept for old readers)
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
        self.rates += tokens / seconds if seconds > 0 else 0.0


@dataclass
class Policy:
    """A discounted UCB1 bandit over drafting arms (see the module docstring)."""

    arms: list[Arm]
    stats: dict[str, ArmStats] = field(default_factory=dict)
    model: str = ""  # what the state was learned on (a fingerprint of the model's config)
    #: What ``eedecode tune`` found for this model: ``skip_layers`` (a layer set to draft
    #: through), ``draft_vocab`` (token ids drafts are scored over); empty when not tuned.
    tuned: dict = field(default_factory=dict)
    #: What drafting learned besides the arms' rates, JSON-able: per drafter, the acceptance
    #: calibration of its stop rule and the cost of one draft step (see eedecode.drafting.stop_rules).
    learned: dict = field(default_factory=dict)

    def __post_init__(self):
        for arm in self.arms:
            self.stats.setdefault(arm.key, ArmStats())
        #: The batch-size bucket rounds are chosen and counted in ("" for one row, "@B4" for 4..7
        #: rows): an arm's speed depends on the batch size, so each bucket keeps its own estimates.
        self.bucket = ""
        #: The round's context (``""``, or ``"+match"`` when the laggard found a lookup match):
        #: each context keeps its own estimates within the bucket.
        self.context = ""
        self.calibrations: dict = {}  # live stop-rule calibrations (saved into `learned`)
        self.run_lengths: dict = {}  # live draft-length models (saved into `learned`)
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
        """One round with ``arm`` was worth ``tokens`` tokens (at batch size 1 the tokens it
        produced, in a batch :meth:`Pace.reward`) in ``seconds``."""
        s = self._stats(arm)
        for other in self._in_bucket():  # the memory of this batch-size bucket fades
            other.tokens *= DISCOUNT
            other.seconds *= DISCOUNT
            other.rounds *= DISCOUNT
            other.rates *= DISCOUNT
        s.add(tokens, seconds)

    def _in_bucket(self) -> list[ArmStats]:
        """The estimates of the current bucket (every context), found again only when a bucket
        or an estimate is new."""
        if self._bucketed[:2] != (self.bucket, len(self.stats)):
            found = [
                s
                for k, s in self.stats.items()
                if k.endswith(self.bucket) and ("@B" in k) == bool(self.bucket)
            ]
            self._bucketed = (self.bucket, len(self.stats), found)
        return self._bucketed[2]

    def rate(self, arm: Arm) -> float:
        """``arm``'s estimated rate (tokens/s) in the current bucket and context (0: not played)."""
        return self._known(arm).rate

    def _known(self, arm: Arm) -> ArmStats:
        """What is known of ``arm`` in the current bucket and context: its own estimates, or
        for an arm in ``CONTEXT_FREE`` those of every context of the bucket, summed."""
        if arm.key not in CONTEXT_FREE:
            return self._stats(arm)
        found = [s for s in (self.stats.get(arm.key + c + self.bucket) for c in CONTEXTS) if s is not None]
        return ArmStats(*(sum(getattr(s, f.name) for s in found) for f in fields(ArmStats)))

    def _stats(self, arm: Arm) -> ArmStats:
        return self.stats.setdefault(arm.key + self.context + self.bucket, ArmStats())

    @staticmethod
    def bucket_of(batch_size: int) -> str:
        """``""`` for one row, else ``"@B<n>"`` with ``n`` the power of two at or below the batch size."""
        return "" if batch_size <= 1 else f"@B{1 << (batch_size.bit_length() - 1)}"

    def best(self) -> Arm:
        """The arm with the best estimated rate in any context of the current bucket (no
        exploration)."""

        def rate(arm: Arm) -> float:
            found = (self.stats.get(arm.key + c + self.bucket) for c in CONTEXTS)
            return max((s.rate for s in found if s is not None), default=0.0)

        return max(self.arms, key=rate)

    # -- persistence ---------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "model": self.model,
            "arms": [asdict(a) for a in self.arms],
            "stats": {k: asdict(v) for k, v in self.stats.items()},
            "tuned": self.tuned,
            "learned": self.learned,
        }

    @classmethod
    def from_json(cls, data: dict) -> Policy:
        if data.get("format") != FORMAT:
            raise ValueError(f"policy: not an eedecode policy file (format {data.get('format')!r})")
        arms = [Arm(**{**a, "layers": tuple(a["layers"]) if a.get("layers") else None}) for a in data["arms"]]
        stats = {k: ArmStats(**v) for k, v in data["stats"].items()}
        for st in stats.values():  # a file saved before rates were kept: their mean from the totals
            if not st.rates and st.rounds > 0 and st.seconds > 0:
                st.rates = st.rounds * st.tokens / st.seconds
            if not st.pulls and st.rounds > 0:  # ... or before pulls were: at least its rounds
                st.pulls = math.ceil(st.rounds)
        if not any(MATCHED in k for k in stats):  # saved before contexts: the same for both
            stats.update({_in_context(k, MATCHED): ArmStats(**asdict(v)) for k, v in stats.items()})
        return cls(arms, stats, data.get("model", ""), data.get("tuned", {}), data.get("learned", {}))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path, what: str = "policy") -> Policy:
        """Read a policy file; ``what`` names the argument in errors (a ValueError for anything
        that is not a readable eedecode policy file)."""
        if not isinstance(path, (str, Path)):
            raise ValueError(f"{what}: must be a path to a policy file (JSON), got {path!r}")
        path = Path(path)
        if not path.is_file():
            why = "is a directory" if path.is_dir() else "does not exist"
            raise ValueError(f"{what}: {path} {why}; expected a policy file (JSON) from `eedecode tune`")
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format') if isinstance(data, dict) else None!r}")
            return cls.from_json(data)
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
            raise ValueError(f"{what}: {path} is not an eedecode policy file ({e})") from None


class Pace:
    """A batch's progress, for the reward of its rounds. A batch runs until its last row is done,
    so a round that lets some rows race ahead while the **laggards** (the running rows furthest
    behind) gain one token brings the end no closer than a plain step. The reward of a round in
    a batch is therefore the running rows times what the laggards gained (their mean: the least
    of several rows' gains would undervalue drafting, whose gains vary from row to row and even
    out over the rounds); at batch size 1, the tokens the round produced."""

    def __init__(self, batch_size: int, max_new_tokens: int):
        self.progress = [0] * batch_size  # tokens each row emitted in rounds
        self.done = [False] * batch_size
        self.max_new = max_new_tokens
        self.behind: list[int] = list(range(batch_size))

    def laggards(self) -> list[int]:
        """The rows not known to be done with the fewest tokens, for this round (every row tied
        at the start; a row that stopped in the last round may still be among them)."""
        going = [b for b, done in enumerate(self.done) if not done]
        least = min((self.progress[b] for b in going), default=0)
        self.behind = [b for b in going if self.progress[b] == least] or [0]
        return self.behind

    def reward(self, counts: list[int]) -> float:
        """The round's reward in tokens, from the tokens each row's round produced (0: a row
        that did not run); then each row's progress (a row that emitted nothing, or all it may,
        is done)."""
        running = [c for c in counts if c > 0]
        if len(counts) == 1 or not running:
            tokens = sum(running)
        else:
            gained = [counts[b] for b in self.behind if b < len(counts) and counts[b] > 0] or running
            tokens = len(running) * sum(gained) / len(gained)
        for b, c in enumerate(counts[: len(self.progress)]):
            self.progress[b] += c
            self.done[b] = self.done[b] or c == 0 or self.progress[b] >= self.max_new - 1
        return tokens
