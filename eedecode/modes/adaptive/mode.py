"""Adaptive self-speculation: how to draft is chosen at run time, per call and per round.

At the start of a call and every ``PLAN_EVERY`` rounds, a **plan** (:meth:`Adaptive.plan`)
reads what the draft-length model (:class:`eedecode.drafting.run_lengths.RunLengths`) knows of each drafter:
how likely draft ``j`` is accepted once the drafts before it were, seeded by the prompt's probe
(:mod:`eedecode.modes.adaptive.probe`) and updated by every round since (lookup drafts are judged in
every round with a match, whichever arm played it). With the costs of a draft step and of a
verification, in plain decoding steps (a prior, then measured in this mode's own rounds), it
gives each drafter the draft length with the most expected tokens per unit of cost, and picks
the one exit layer worth offering: the best predicted by the probe, if it is predicted to pay.
(DEL's reasoning, Zarch et al. 2025.)

Each round, a bandit (:class:`eedecode.modes.adaptive.policy.Policy`) then picks one arm among those offered:

* ``none``: plain decoding (one token, every layer). This is the fallback when no draft pays,
  on a model whose shallow layers agree badly with its last;
* ``lookup``: drafts copied from the latest earlier occurrence of the current n-gram
  (:mod:`eedecode.drafting.lookup`), as many as the plan says. They cost no layers, and on code they are
  often long and right. The arm is offered only in rounds where the laggard (the running row
  furthest behind, the one a batch waits for; at batch size 1 the one row) found a match;
* ``exit`` at layer ``E``: LayerSkip drafts from the model's first ``E`` layers, verified over
  the exit query cache: as many as the plan says (``fixed``), or, with a stop rule, each row
  stops proposing when its next draft is no longer worth a draft step. That is when the
  probability that all its drafts so far are accepted, learned online per exit layer as a
  function of the drafts' confidence (:mod:`eedecode.drafting.stop_rules`), falls below the draft's cost.
  So rows draft different lengths;
* ``mixed`` at layer ``E``: in a batch where some rows found a lookup match and some did not,
  the former take their lookup drafts and the latter draft from layer ``E``; verification then
  runs every layer (greedy decoding only);
* ``skip``: drafts through a layer set found by ``eedecode tune``, when a tuned policy is given.

The arm's reward is the tokens the round produced (in a batch: the running rows times what the
laggards gained, :class:`eedecode.modes.adaptive.policy.Pace`), per second of wall time, kept
per batch-size bucket
and per context (whether the laggard found a lookup match: repeating text is easier for every
arm). The plan's predicted rate of an arm counts as a few rounds of its estimate, so a few
unlucky rounds on a shared machine do not shut out an arm predicted to pay. The policy
therefore learns what pays on this model, this machine and this text. It
needs no training, and it is kept per model for the life of the process, so later calls start
warm. It can also be saved and loaded (``policy_out`` / ``policy_in``). Every arm is verified by
the full model, so the output is lossless: greedy output equals plain decoding, and sampling is
exact. DEL and the survey's bandit thresholds (UCBEE, CeeBERT) motivate the design.
"""

from __future__ import annotations

import time

import torch

from ...drafting.drafters import (
    Lookout,
    draft_from_exit,
    draft_mixed,
    draft_with_skips,
    plain_step,
    verify,
    with_point_masses,
)
from ...drafting.run_lengths import RunLengths
from ...drafting.stop_rules import CalibratedStop, Calibration
from ...engine.mode import Mode, Round, register
from . import probe
from .options import (  # noqa: F401 (re-exported)
    _POLICIES,
    AUTO,
    AdaptiveOptions,
    _is_int,
    _policy_key,
    draft_head,
    exit_layer_candidates,
    make_arms,
    policy_for,
)
from .policy import MATCHED, Arm, Pace, Policy

#: Smoothing of the measured step costs (exponential moving average weight of a new round).
COST_EMA = 0.1
#: A round without a stop rule drafts one more than its best length once in this many rounds.
EXPLORE_LONGER = 8
#: Rounds after which a call plans again, with what its rounds have measured since.
PLAN_EVERY = 32
#: A layer whose probe has seen enough is probed again once in this many calls, so that a layer
#: not offered can come back.
REPROBE_EVERY = 16

PLAIN = Arm("none")
#: The prefix of a draft-length model fed by the probe alone (see :meth:`Adaptive.plan`).
PROBED = "probe:"


@register
class Adaptive(Mode):
    name, short = "adaptive", "auto"
    description = "drafting chosen at run time: plain, lookup or early-exit drafts (a bandit)"
    Options = AdaptiveOptions
    observes_counts = True
    benchmark_settings = ()  # it chooses its own exit layer and draft lengths

    def __init__(self, options, runner):
        super().__init__(options, runner)
        self.policy = policy_for(runner, options)
        self.head = draft_head(runner, options, self.policy)
        self.arm: Arm | None = None
        self.proposal = None
        self.started = 0.0
        self.pulls: dict[str, int] = {}
        self.exit_layers: list[int] = []
        self.paying: set[str] | None = None  # exit drafters predicted to pay at this batch size
        self.predicted: dict[str, float] = {}  # each drafter's predicted speed-up this call
        self.speedups: dict[str, float] = {}  # each exit layer's, by the probe and the prior costs
        self.lengths: dict[str, int] = {}  # each drafter's best draft length this call
        self.on_cpu = torch.device(runner.device).type == "cpu"
        self.timed = 0.0  # seconds of this round's drafting and verification, when timed
        self.planned = 0  # rounds since the last plan
        self.explored: dict[str, int] = {}  # rounds per drafter without a stop rule (see length)
        self.lookout: Lookout | None = None  # lookup drafts, looked for every round (if an arm)
        self.pace = Pace(1, 0)  # the batch's progress, row by row (set by prefill)

    # -- the prompt's probe and the draft-length model -----------------------------------------
    def prefill(self, state, input_ids):
        self.pace = Pace(input_ids.shape[0], state.max_new)
        if any(a.kind in ("lookup", "mixed") for a in self.policy.arms):
            self.lookout = Lookout(state, input_ids, self.options.lookup_ngram, self.on_cpu)
        probed = self.policy.learned.setdefault("probed", {})  # drafter -> positions probed
        calls = self.policy.learned["calls"] = self.policy.learned.get("calls", 0) + 1
        again = calls % REPROBE_EVERY == 0
        exits = sorted({a.exit_layer for a in self.policy.arms if a.kind in ("exit", "mixed")})
        saved = self.policy.learned.get("runs", {})
        layers = [
            E
            for E in exits
            if again
            or probed.get(f"exit:E={E}", 0) < probe.ENOUGH
            or not any(PROBED + f"exit:E={E}" in runs for runs in (saved, self.policy.run_lengths))
        ]
        if not layers:
            return super().prefill(state, input_ids)
        translate = None
        if self.head is not None and self.head.translator is not None:
            translate = lambda E, h: self.head.with_depth(E)._translate(h)  # noqa: E731
        last, probes, real = probe.probed_prefill(state, input_ids, layers, translate)
        seen = int(real.sum())
        for E, (confidence, agreed) in probes.items():
            arm = Arm("exit", exit_layer=E)
            self.calibration(arm).observe(confidence[real], agreed[real])
            self.runs(arm.drafter).observe_runs(agreed, real, probe.RUN_WEIGHT)
            self.runs(PROBED + arm.drafter).observe_runs(agreed, real)  # the probe's alone
            probed[arm.drafter] = probed.get(arm.drafter, 0) + seen
        return last

    def runs(self, drafter: str) -> RunLengths:
        """How far ``drafter``'s drafts run (:class:`eedecode.drafting.run_lengths.RunLengths`)."""
        runs = self.policy.run_lengths
        if drafter not in runs:
            saved = self.policy.learned.setdefault("runs", {}).get(drafter)
            runs[drafter] = RunLengths(self.runner.head_device, self.options.max_drafts, saved)
        return runs[drafter]

    def plan(self, batch_size: int) -> None:
        """At the start of a call and every ``PLAN_EVERY`` rounds: the exit layer to offer and
        each drafter's draft length. (DEL's choice of exit layer and draft length, from
        statistics rather than trial.)

        The layer offered is the one with the best predicted speed-up, if that reaches ``PAYS``
        (none otherwise). Every layer is judged on the probe's statistics alone and the prior
        costs: the same evidence and the same cost model for all, so they compare fairly and
        the choice does not flip with the noise of the rounds. A draft length is the best by the
        draft-length model (probe and rounds) and the costs measured at this batch size."""
        self.planned = 0
        self.policy.bucket = Policy.bucket_of(batch_size)
        K = self.options.max_drafts
        # the prior of a verification's cost: a slope on a CPU (measured in rounds later); the
        # block cost table, measured once per model and batch size, elsewhere
        costs = probe.prior_costs(K) if self.on_cpu else self.runner.block_costs(batch_size, K + 1)
        exits = {a.drafter: a.exit_layer for a in self.policy.arms if a.kind in ("exit", "mixed")}
        probed = self.policy.learned.get("probed", {})
        drafters = [d for d in exits if probed.get(d, 0) > 0]
        if any(a.kind == "lookup" for a in self.policy.arms):
            drafters.append("lookup")
        # per drafter, the draft-length model of every round, then (exit layers) the probe's alone
        keys = drafters + [PROBED + d for d in drafters if d in exits]
        models = [self.runs(key) for key in keys]
        rates = dict(zip(keys, RunLengths.rates_of(models), strict=True))  # one host read
        runs = models[: len(drafters)]
        survival = [rates[d] for d in drafters]
        self.predicted, self.speedups = {}, {}
        for d, r, s in zip(drafters, runs, survival, strict=True):
            entry = exits.get(d, 0)
            if d in exits:
                # Which exit layer to offer, and whether it pays: each layer judged on the same
                # evidence (the probe's positions, the same for every layer) and the same prior
                # cost model, so that the layer in use, whose statistics also count its own
                # rounds, is not compared with layers only the probe has seen. The bandit then
                # judges the offered layer's arms on their measured wall time against plain
                # decoding: a layer is never kept out by a noisy measurement it cannot repeat.
                prior = probe.layer_cost(self.runner, entry)
                self.speedups[d] = r.best_length(prior, costs, rates[PROBED + d])[1]
            # its draft length: from every round so far, with measured costs where there are some
            measured = probe.measured_costs(self.seconds, entry, costs)
            cost = self.draft_cost(Arm("exit", exit_layer=entry)) if d in exits else 0.0
            self.lengths[d], self.predicted[d] = r.best_length(cost, measured, s)
        best = max(self.speedups, key=self.speedups.get, default=None)
        self.paying = {best} if best is not None and self.speedups[best] >= probe.PAYS else set()
        if _is_int(self.options.exit_layer):  # the layer asked for is offered; the bandit decides
            self.paying = {f"exit:E={self.options.exit_layer}"}

    def priors(self, available: list[Arm]) -> dict[str, float]:
        """The plan's predicted rate (its predicted speed-up times plain decoding's measured
        rate) of each arm it predicts, for the bandit (:meth:`Policy.choose`): lookup drafts and
        exit drafts of the plan's length."""
        plain = self.policy.rate(PLAIN)
        out = {}
        for arm in available:
            if arm.kind == "lookup" or (arm.kind == "exit" and arm.fixed):
                predicted = self.predicted.get(arm.drafter)
                if predicted is not None and plain > 0:
                    out[arm.key] = predicted * plain
        return out

    @property
    def seconds(self) -> dict:
        """Measured times (moving averages) in this call's batch-size bucket."""
        return self.policy.learned.setdefault("seconds" + self.policy.bucket, {})

    def length(self, drafter: str, k: int) -> int:
        """The draft length of a round without a stop rule: the model's best, one more every
        ``EXPLORE_LONGER`` rounds (so that the next position keeps being judged), at most ``k``."""
        n = self.explored[drafter] = self.explored.get(drafter, 0) + 1
        best = self.lengths.get(drafter, 1)
        return min(k, best + (n % EXPLORE_LONGER == 0))

    # -- what the policy learned besides rates -------------------------------------------------
    def calibration(self, arm: Arm) -> Calibration:
        cals = self.policy.calibrations
        if arm.drafter not in cals:
            saved = self.policy.learned["calibration"].get(arm.drafter, {})
            cals[arm.drafter] = Calibration(
                self.runner.head_device, saved.get("accepted"), saved.get("judged")
            )
        return cals[arm.drafter]

    def draft_cost(self, arm: Arm) -> float:
        """One draft step of ``arm`` in full decoding steps: measured when both are known, else
        the share of the weights it reads (its layers and the LM head)."""
        seconds = self.seconds
        step, full = seconds.get(arm.drafter), seconds.get("none")
        if step and full:
            return step / full
        layers = arm.exit_layer if arm.kind in ("exit", "mixed") else len(arm.layers)
        return probe.layer_cost(self.runner, layers)

    def _remember(self, key: str, value: float) -> None:
        seconds = self.seconds
        if key in seconds:  # a round the machine preempted counts as at most twice the estimate
            value = (1 - COST_EMA) * seconds[key] + COST_EMA * min(value, 2 * seconds[key])
        seconds[key] = value

    @property
    def max_drafts(self) -> int:
        return self.options.max_drafts

    def round(self, state, max_tokens: int) -> Round:
        if self.paying is None or self.planned >= PLAN_EVERY:  # plan the call, and again later
            self.plan(state.active.shape[0])
        laggards = self.pace.laggards()
        self.planned += 1
        self.started = time.perf_counter()
        k = min(self.options.max_drafts, max_tokens - 1)
        can_mix = state.active.shape[0] > 1 and not state.chooser.do_sample
        available = [
            a
            for a in self.policy.arms
            if a.kind in ("none", "skip", "lookup")
            or (a.kind == "exit" and a.drafter in self.paying)
            or (a.kind == "mixed" and can_mix and a.drafter in self.paying)
        ]
        if k == 0 or not available:  # the last token of a row, or nothing else to choose
            available = [Arm("none")]
        context = ""
        if any(a.kind in ("lookup", "mixed") for a in available):
            # Lookup drafts are looked for every round, and whether the laggards found some is
            # the round's context: the arms' estimates are kept apart for rounds with and without
            # a match, since text that repeats is easier for every arm. Lookup is offered where
            # the laggards (the running rows furthest behind, those the batch waits for) found a
            # match; mixed, where some but not every row did.
            some, every, behind = self.lookout.look(state, self.length("lookup", k), laggards)
            behind = behind and some
            mixed_ok = some and not every and not state.chooser.do_sample
            available = [
                a
                for a in available
                if (a.kind == "lookup" and behind)  # else the laggard gains no more than plainly
                or (a.kind == "mixed" and mixed_ok)
                or a.kind not in ("lookup", "mixed")
            ] or [Arm("none")]  # only lookup, and nothing to look up
            context = MATCHED if behind else ""
        self.policy.context = context
        arm = self.policy.choose(available, self.priors(available))
        self.arm = arm
        self.pulls[arm.key] = self.pulls.get(arm.key, 0) + 1
        if arm.kind == "none":
            return plain_step(state)
        if arm.kind == "lookup":
            return self._verify(state, with_point_masses(state, self.lookout.proposal()))
        stop = arm.threshold
        if arm.fixed:  # the length model's draft length, no stop rule
            k = self.length(arm.drafter, k)
        elif stop is None:
            # a draft costs its step and what it adds to the verification (the mean increment)
            stop = CalibratedStop(self.calibration(arm), self.draft_cost(arm) + probe.VERIFY_SLOPE)
        if arm.kind == "mixed":
            self.exit_layers.append(arm.exit_layer)
            self.proposal = draft_mixed(state, self.lookout.proposal(), arm.exit_layer, k, stop, self.head)
            return verify(state, self.proposal)
        if arm.kind == "exit":
            self.exit_layers.append(arm.exit_layer)
            t0 = time.perf_counter()
            proposal = draft_from_exit(state, arm.exit_layer, k, stop, self.head)
            if arm.fixed and self.on_cpu and proposal.k:  # the host waited: a draft step's time
                drafting = time.perf_counter() - t0  # k draft steps and the last draft's exit state
                self._remember(arm.drafter, drafting / (proposal.k + 1))
                self.timed += drafting
        else:
            proposal = draft_with_skips(state, arm.layers, k, stop, self.head)
        rnd = self._verify(state, proposal)
        if proposal.confidences is not None:  # on the device: no synchronisation
            judged = proposal.per_row(state.active)
            self.calibration(arm).update(proposal.confidences, judged, rnd.counts - 1)
        if arm.fixed:  # a stop rule's drafts would tell how far confident drafts run, not all
            self._judge(arm.drafter, proposal, rnd, state.active)
        self.proposal = proposal
        return rnd

    def _verify(self, state, proposal) -> Round:
        """:func:`verify`, timed on a CPU (where the host waits for the work) for the cost model."""
        if not self.on_cpu:
            return verify(state, proposal)
        t0 = time.perf_counter()
        rnd = verify(state, proposal)
        verifying = time.perf_counter() - t0
        self._remember(f"verify:{proposal.entry}:{proposal.k + 1}", verifying)
        self.timed += verifying
        return rnd

    def _judge(self, drafter: str, proposal, rnd: Round, active) -> None:
        """Tell the draft-length model how far each running row's drafts were accepted."""
        device = self.runner.head_device
        self.runs(drafter).update(proposal.per_row(active).to(device), rnd.counts.to(device))

    def observe(self, rnd: Round, view) -> None:
        if self.lookout is not None:  # the lookup drafts of this round, whichever arm played
            self.lookout.judge(self.runs("lookup"), rnd, view.counts)
        seconds = time.perf_counter() - self.started
        tokens = self.pace.reward(view.counts) if view.counts is not None else 0
        arm = self.arm
        if arm is not None:
            self.policy.update(arm, tokens, seconds)
        if self.timed and arm is not None and (arm.kind == "lookup" or arm.fixed):
            self._remember("overhead", seconds - self.timed)  # the round's bookkeeping
        self.timed = 0.0
        if arm is not None and arm.kind == "none":
            self._remember("none", seconds)
        elif self.proposal is not None and self.proposal.step_seconds:
            steps = sorted(self.proposal.step_seconds)
            self._remember(arm.drafter, steps[len(steps) // 2])
        self.proposal = None

    def finish(self) -> None:
        if self.options.policy_out is not None:
            learned, cals, runs = self.policy.learned, self.policy.calibrations, self.policy.run_lengths
            # what this process learned, over what the file held (a drafter not used here keeps it)
            learned["calibration"] = {**learned["calibration"], **{k: c.state() for k, c in cals.items()}}
            learned["runs"] = {**learned.get("runs", {}), **{k: r.state() for k, r in runs.items()}}
            self.policy.save(self.options.policy_out)

    def report(self) -> dict:
        exits = self.exit_layers
        return {
            "arms": dict(sorted(self.pulls.items(), key=lambda kv: -kv[1])),
            "mean_exit_layer": sum(exits) / len(exits) if exits else None,
        }

    def describe(self) -> str:
        best = self.policy.best()
        return f"adaptive (best arm so far: {best.key})"
