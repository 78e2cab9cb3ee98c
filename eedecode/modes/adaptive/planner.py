"""The adaptive mode's plan: which exit layer to offer and how many drafts each drafter makes.

At the start of a call and every ``PLAN_EVERY`` rounds the plan reads what the draft-length model
(:class:`~eedecode.drafting.run_lengths.RunLengths`) knows of each drafter: how likely draft
``j`` is accepted once the drafts before it were, seeded by the prompt's probe (:mod:`.probe`) and
updated by every round since (lookup drafts are judged in every round with a match, whichever arm
played). With the cost model (:mod:`eedecode.model.costs`: a draft step, and a verification of
``T`` tokens, in plain decoding steps; measured tables first, then this mode's own timings) it
gives each drafter the draft length with the most expected tokens per unit of cost, and picks the
one exit layer worth offering: the best predicted by the probe, if it is predicted to pay. (DEL's
reasoning, Zarch et al. 2025.)
"""

from __future__ import annotations

from ...drafting.run_lengths import RunLengths
from ...model.costs import layer_cost, linear_block_costs
from .arms import Arm
from .bandit import bucket_of
from .store import Policy, StepTimes

#: Offer an exit layer when its predicted speed-up over plain decoding is at least this.
PAYS = 1.0
#: Rounds after which a call plans again, with what its rounds have measured since.
PLAN_EVERY = 32
#: A round without a stop rule drafts one more than its best length once in this many rounds.
EXPLORE_LONGER = 8
#: The prefix of a draft-length model fed by the probe alone.
PROBED = "probe:"
#: Timings of each of the verification cost table's two points (its minimum over this many passes).
COST_TABLE_REPS = 2


class Planner:
    """One call's plan, remade every ``PLAN_EVERY`` rounds (:meth:`plan`)."""

    def __init__(self, runner, policy: Policy, max_drafts: int, fixed_exit: int | None = None):
        self.runner, self.policy, self.K = runner, policy, max_drafts
        self.fixed_exit = fixed_exit  # an exit layer the caller asked for: always offered
        self.device = runner.head_device
        self.bucket = 1
        self.paying: set[str] | None = None  # exit drafters predicted to pay at this batch size
        self.predicted: dict[str, float] = {}  # each drafter's predicted speed-up this call
        self.speedups: dict[str, float] = {}  # each exit layer's, by the probe and the table
        self.lengths: dict[str, int] = {}  # each drafter's best draft length this call
        self.explored: dict[str, int] = {}  # rounds per drafter without a stop rule (see length)
        self.rounds = 0  # since the last plan
        self.costs: list[float] = []  # the verification cost table of this batch size

    @property
    def due(self) -> bool:
        return self.paying is None or self.rounds >= PLAN_EVERY

    @property
    def times(self) -> StepTimes:
        return self.policy.times_at(self.bucket)

    def runs(self, drafter: str) -> RunLengths:
        """How far ``drafter``'s drafts run (from the probe, then from every round)."""
        if drafter.startswith(PROBED):
            return self.policy.probe_stats(drafter[len(PROBED) :], self.device, self.K)
        return self.policy.draft_stats(drafter, self.device, self.K).runs

    def plan(self, batch_size: int) -> None:
        """The exit layer to offer and each drafter's draft length.

        The layer offered is the one with the best predicted speed-up, if that reaches ``PAYS``
        (none otherwise). Every layer is judged on the probe's statistics alone and the measured
        cost table: the same evidence and the same cost model for all, so they compare fairly
        and the choice does not flip with the noise of the rounds. A draft length is the best by
        the draft-length model (probe and rounds) and the costs measured at this batch size."""
        self.rounds = 0
        self.bucket = bucket_of(batch_size)
        self.costs = linear_block_costs(self.runner, batch_size, self.K + 1, reps=COST_TABLE_REPS)
        arms = self.policy.arms
        exits = {a.drafter: a.exit_layer for a in arms if a.kind in ("exit", "mixed")}
        drafters = [d for d in exits if self.policy.probed.get(d, 0) > 0]
        if any(a.kind == "lookup" for a in arms):
            drafters.append("lookup")
        # per drafter, the draft-length model of every round, then (exit layers) the probe's alone
        keys = drafters + [PROBED + d for d in drafters if d in exits]
        models = [self.runs(key) for key in keys]
        rates = dict(zip(keys, RunLengths.rates_of(models), strict=True))  # one host read
        self.predicted, self.speedups = {}, {}
        for d, r in zip(drafters, models, strict=False):
            entry = exits.get(d, 0)
            if d in exits:
                # Which exit layer to offer, and whether it pays: each layer judged on the same
                # evidence (the probe's positions) and the same cost table, so that the layer in
                # use, whose statistics also count its own rounds, is not compared with layers
                # only the probe has seen. The bandit then judges the offered layer's arms on
                # their measured wall time against plain decoding.
                prior = layer_cost(self.runner, entry)
                self.speedups[d] = r.best_length(prior, self.costs, rates[PROBED + d])[1]
            # its draft length: from every round so far, with measured costs where there are some
            measured = self.times.verify_costs(entry, self.costs)
            cost = self.draft_cost(Arm("exit", exit_layer=entry)) if d in exits else 0.0
            self.lengths[d], self.predicted[d] = r.best_length(cost, measured, rates[d])
        best = max(self.speedups, key=self.speedups.get, default=None)
        self.paying = {best} if best is not None and self.speedups[best] >= PAYS else set()
        if self.fixed_exit is not None:  # the layer asked for is offered; the bandit decides
            self.paying = {f"exit:E={self.fixed_exit}"}

    def priors(self, available: list[Arm], plain_rate: float) -> dict[str, float]:
        """The plan's predicted rate (its predicted speed-up times plain decoding's measured
        rate) of each arm it predicts, for the bandit: lookup drafts and exit drafts of the plan's
        length."""
        out = {}
        for arm in available:
            if arm.kind == "lookup" or (arm.kind == "exit" and arm.fixed):
                predicted = self.predicted.get(arm.drafter)
                if predicted is not None and plain_rate > 0:
                    out[arm.key] = predicted * plain_rate
        return out

    def length(self, drafter: str, k: int) -> int:
        """The draft length of a round without a stop rule: the model's best, one more every
        ``EXPLORE_LONGER`` rounds (so that the next position keeps being judged), at most ``k``."""
        n = self.explored[drafter] = self.explored.get(drafter, 0) + 1
        best = self.lengths.get(drafter, 1)
        return min(k, best + (n % EXPLORE_LONGER == 0))

    def draft_cost(self, arm: Arm) -> float:
        """One draft step of ``arm`` in plain decoding steps: measured when both are known, else
        the share of the weights it reads (its layers and the LM head)."""
        measured = self.times.draft_cost(arm.drafter)
        if measured is not None:
            return measured
        layers = arm.exit_layer if arm.kind in ("exit", "mixed") else len(arm.layers)
        return layer_cost(self.runner, layers)

    def verify_slope(self) -> float:
        """What each verified token beyond the first adds to a verification, in plain steps (the
        mean increment of the cost table)."""
        costs = self.costs
        return (costs[-1] - costs[0]) / (len(costs) - 1) if len(costs) > 1 else 0.0
