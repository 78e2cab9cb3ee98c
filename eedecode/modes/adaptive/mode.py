"""Adaptive self-speculation: how to draft is chosen at run time, per call and per round.

At the start of a call and every ``PLAN_EVERY`` rounds, a **plan** (:mod:`.planner`) reads what
the draft-length model (:class:`eedecode.drafting.run_lengths.RunLengths`) knows of each
drafter: how likely draft ``j`` is accepted once the drafts before it were, seeded by the
prompt's probe (:mod:`eedecode.modes.adaptive.probe`) and updated by every round since (lookup
drafts are judged in every round with a match, whichever arm played it). With the costs of a
draft step and of a verification, in plain decoding steps (a prior, then measured in this mode's
own rounds), it gives each drafter the draft length with the most expected tokens per unit of
cost, and picks the one exit layer worth offering: the best predicted by the probe, if it is
predicted to pay. (DEL's reasoning, Zarch et al. 2025.)

Each round, a bandit (:mod:`.bandit`) then picks one arm among those offered:

* ``none``: plain decoding (one token, every layer). This is the fallback when no draft pays,
  on a model whose shallow layers agree badly with its last;
* ``lookup``: drafts copied from the latest earlier occurrence of the current n-gram
  (:mod:`eedecode.drafting.lookup`), as many as the plan says. They cost no layers, and on code
  they are often long and right. The arm is offered only in rounds where the laggard (the running row
  furthest behind, the one a batch waits for; at batch size 1 the one row) found a match;
* ``exit`` at layer ``E``: LayerSkip drafts from the model's first ``E`` layers, verified over
  the exit query cache: as many as the plan says (``fixed``), or, with a stop rule, each row
  stops proposing when its next draft is no longer worth a draft step. That is when the
  probability that all its drafts so far are accepted, learned online per exit layer as a
  function of the drafts' confidence (:mod:`eedecode.drafting.stop_rules`), falls below the
  draft's cost. So rows draft different lengths;
* ``mixed`` at layer ``E``: in a batch where some rows found a lookup match and some did not,
  the former take their lookup drafts and the latter draft from layer ``E``; verification then
  runs every layer (greedy decoding only);
* ``skip``: drafts through a layer set found by ``eedecode tune``, when a tuned policy is given.

The arm's reward is the tokens the round produced (in a batch: the batch size times how far it
moved the laggards, :class:`.progress.BatchProgress`), per second of wall time, kept per batch-size
bucket and per context (whether the laggard found a lookup match: repeating text is easier for every arm).
The plan's predicted rate of an arm counts as a few rounds of its estimate, so a few unlucky
rounds on a shared machine do not shut out an arm predicted to pay. The policy therefore learns
what pays on this model, this machine and this text. It needs no training, and it is kept per
model for the life of the process, so later calls start warm. It can also be saved and loaded
(``policy_out`` / ``policy_in``, :mod:`.policy_file`). Where plain decoding's measured rate (its
steps', without the choosing) beats every arm's, the mode settles (:mod:`.settle`): a stretch of
plain rounds with no bookkeeping, then a check of two rounds of one drafting arm, the arms
taking turns, the stretches doubling once every arm was checked and found slower. Every arm is
verified by the full model, so the output is lossless: greedy output equals plain decoding, and
sampling is exact. DEL and the survey's bandit thresholds (UCBEE, CeeBERT) motivate the design."""

from __future__ import annotations

import time

import torch

from ...drafting.exit import ExitDrafter
from ...drafting.lookup import MEMORY, LookupDrafter, LookupMemory
from ...drafting.mixed import MixedDrafter
from ...drafting.skip import SkipDrafter
from ...drafting.stop_rules import CalibratedStop
from ...drafting.verify import verify, with_point_masses
from ...engine.mode import Mode, Round, register
from ...engine.steps import plain_step
from ...model.memory import memory_of
from . import policy_file, probe
from .arms import Arm
from .bandit import MIN_PULLS, bucket_of
from .options import AdaptiveOptions, draft_head, policy_for
from .planner import PROBED, Planner
from .progress import BatchProgress
from .store import smoothed as _smoothed

#: A layer whose probe has seen enough is probed again once in this many calls, so that a layer
#: not offered can come back.
REPROBE_EVERY = 16
PLAIN = Arm("none")


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
        E = options.exit_layer
        self.planner = Planner(runner, self.policy, options.max_drafts, E if isinstance(E, int) else None)
        self.on_cpu = torch.device(runner.device).type == "cpu"
        self.memory = None  # earlier calls' n-grams (lookup_memory; a CPU model, checked before)
        if options.lookup_memory and self.on_cpu:
            self.memory = memory_of(runner.model).of_mode(MEMORY, LookupMemory)
        self.state = None  # this call's (for the memory, at the end)
        self.lookup: LookupDrafter | None = None  # lookup drafts, looked for every round (if an arm)
        self.lookup_behind = False  # settled rounds ran: the lookup index must catch up first
        self.drafters: dict[str, object] = {}  # by arm key
        self.arm: Arm | None = None  # this round's (None: a settled round)
        self.offered: list[Arm] = []  # the arms this round could play
        self.offerable: list[Arm] = []  # the arms a round could play now, lookup match or not
        self.settle = self.policy.settle_at(1)
        self.settled_rounds = 0  # plain rounds played settled (no choice, no bookkeeping)
        self.proposal = None
        self.started = 0.0
        self.timed = 0.0  # seconds of this round's drafting and verification, when timed
        self.stepped = 0.0  # when this round's plain step started (a plain round)
        self.pulls: dict[str, int] = {}
        self.exit_layers: list[int] = []
        self.progress = BatchProgress(1, 0)  # the batch's progress, row by row (set by prefill)

    @property
    def max_drafts(self) -> int:
        return self.options.max_drafts

    # -- the drafters of the arms ------------------------------------------------------------------
    def stats(self, name: str):
        return self.policy.draft_stats(name, self.runner.head_device, self.options.max_drafts)

    def drafter(self, arm: Arm):
        """The drafter an arm drafts with (made once per call)."""
        found = self.drafters.get(arm.drafter)
        if found is None:
            if arm.kind in ("exit", "mixed"):
                found = ExitDrafter(arm.exit_layer, self.head, self.stats(arm.drafter))
            else:
                found = SkipDrafter(arm.layers, self.head, self.stats(arm.drafter))
            self.drafters[arm.drafter] = found
        return MixedDrafter(self.lookup, found) if arm.kind == "mixed" else found

    # -- the prompt's probe --------------------------------------------------------------------
    def prefill(self, state, input_ids):
        self.progress = BatchProgress(input_ids.shape[0], state.max_new)
        policy = self.policy
        policy.calls += 1
        policy.reprobe_due = policy.reprobe_due or policy.calls % REPROBE_EVERY == 0
        policy.bandit.bucket = bucket_of(input_ids.shape[0])  # this call's (a settled call never plans)
        self.settle = policy.settle_at(policy.bandit.bucket)
        self.lookup_behind = False
        self.state = state
        if any(a.kind in ("lookup", "mixed") for a in policy.arms):
            self.lookup = LookupDrafter(self.options.lookup_ngram, self.stats("lookup"))
            self.lookup_behind = self.settle.active
            if not self.lookup_behind:  # else started when a round first looks (a stretch ended)
                self.lookup.start(state, input_ids, self.on_cpu, self.memory)
        if self.settle.active:
            return super().prefill(state, input_ids)  # settled on plain decoding: no probe
        again, policy.reprobe_due = policy.reprobe_due, False
        exits = sorted({a.exit_layer for a in policy.arms if a.kind in ("exit", "mixed")})
        layers = [
            E
            for E in exits
            if again
            or policy.probed.get(f"exit:E={E}", 0) < probe.ENOUGH
            or not policy.has_probe_stats(f"exit:E={E}")
        ]
        if not layers:
            return super().prefill(state, input_ids)
        translate = None
        if self.head is not None and self.head.translator is not None:
            translate = lambda E, h: self.head.with_depth(E).translate(h)  # noqa: E731
        last, probes, real = probe.probed_prefill(state, input_ids, layers, translate)
        seen = int(real.sum())
        for E, (confidence, agreed) in probes.items():
            name = f"exit:E={E}"
            stats = self.stats(name)
            stats.calibration.observe(confidence[real], agreed[real])
            stats.runs.observe_runs(agreed, real, probe.RUN_WEIGHT)
            self.planner.runs(PROBED + name).observe_runs(agreed, real)  # the probe's alone
            policy.probed[name] = policy.probed.get(name, 0) + seen
        return last

    # -- a round ---------------------------------------------------------------------------------
    def available(self, state, k: int) -> list[Arm]:
        """The arms this round may play: plain decoding always; lookup where the laggards found a
        match; the exit layer the plan offers; mixed rounds where some rows found a match."""
        paying = self.planner.paying
        can_mix = state.active.shape[0] > 1 and not state.chooser.do_sample
        available = [
            a
            for a in self.policy.arms
            if a.kind in ("none", "skip", "lookup")
            or (a.kind == "exit" and a.drafter in paying)
            or (a.kind == "mixed" and can_mix and a.drafter in paying)
        ]
        self.offerable = available  # before this round's lookup: what a settled check may wait for
        if k == 0 or not available:  # the last token of a row, or nothing else to choose
            return [PLAIN]
        self.policy.bandit.matched = False
        if any(a.kind in ("lookup", "mixed") for a in available):
            # Lookup drafts are looked for every round, and whether the laggards found some is
            # the round's context: the arms' estimates are kept apart for rounds with and without
            # a match, since text that repeats is easier for every arm. Lookup is offered where
            # the laggards (the running rows furthest behind, those the batch waits for) found a
            # match; mixed, where some but not every row did.
            some, every, behind = self.lookup.look(
                state, self.planner.length("lookup", k), self.progress.laggards()
            )
            behind = behind and some
            mixed_ok = some and not every and not state.chooser.do_sample
            available = [
                a
                for a in available
                if (a.kind == "lookup" and behind)  # else the laggard gains no more than plainly
                or (a.kind == "mixed" and mixed_ok)
                or a.kind not in ("lookup", "mixed")
            ] or [PLAIN]  # only lookup, and nothing to look up
            self.policy.bandit.matched = behind
        return available

    def round(self, state, max_tokens: int) -> Round:
        k = min(self.options.max_drafts, max_tokens - 1)
        settle = self.settle = self.policy.settle_at(bucket_of(state.batch_size))
        if settle.active:  # settled on plain decoding: a plain step, nothing else
            settle.take()
            self.arm = None
            self.settled_rounds += 1
            self.stepped = time.perf_counter()  # keeps the plain steps' rate current
            return plain_step(state)
        planner, bandit = self.planner, self.policy.bandit
        if planner.due:  # plan the call, and again later
            planner.plan(state.active.shape[0])
            bandit.bucket = planner.bucket
        planner.rounds += 1
        if self.lookup_behind:  # after a stretch: index the tokens it emitted, untimed
            self.lookup_behind = False
            self.lookup.start(state, state.prompt, self.on_cpu, self.memory)
            self.lookup.catch_up(state)
        self.started = time.perf_counter()
        available = self.offered = self.available(state, k)
        arm = settle.forced(bandit, available, self.offerable) or bandit.choose(
            available, planner.priors(available, bandit.rate(PLAIN))
        )
        self.arm = arm
        self.pulls[arm.key] = self.pulls.get(arm.key, 0) + 1
        if arm.kind == "none":
            self.stepped = time.perf_counter()  # the bare step, as a settled round runs it
            return plain_step(state)
        if arm.kind == "lookup":
            return self._verify(state, with_point_masses(state, self.lookup.propose(state, k)))
        stop = arm.threshold
        if arm.fixed:  # the length model's draft length, no stop rule
            k = planner.length(arm.drafter, k)
        elif stop is None:
            # a draft costs its step and what it adds to the verification (the mean increment)
            stats = self.stats(arm.drafter)
            stop = CalibratedStop(stats.calibration, planner.draft_cost(arm) + planner.verify_slope())
        drafter = self.drafter(arm)
        if arm.kind in ("exit", "mixed"):
            self.exit_layers.append(arm.exit_layer)
        if arm.kind == "mixed":
            self.proposal = drafter.propose(state, k, stop)
            return verify(state, self.proposal)
        t0 = time.perf_counter()
        proposal = drafter.propose(state, k, stop)
        if arm.kind == "exit" and arm.fixed and self.on_cpu and proposal.k:  # the host waited
            drafting = time.perf_counter() - t0  # k draft steps and the last draft's exit state
            times = planner.times
            times.draft[arm.drafter] = _smoothed(times.draft.get(arm.drafter), drafting / (proposal.k + 1))
            self.timed += drafting
        rnd = self._verify(state, proposal)
        drafter.observe(state, proposal, rnd.counts)
        self.proposal = proposal
        return rnd

    def _nothing_to_offer(self) -> bool:
        """No drafting arm can come up before the next plan: no lookup drafts (``lookup=False``),
        no layer set to draft through, and no exit layer offered."""
        if self.lookup is not None:
            return False
        paying = self.planner.paying
        arms = self.policy.arms
        return not any(a.kind == "skip" or (a.kind != "none" and a.drafter in paying) for a in arms)

    def _verify(self, state, proposal) -> Round:
        """:func:`verify`, timed on a CPU (where the host waits for the work) for the cost model."""
        if not self.on_cpu:
            return verify(state, proposal)
        t0 = time.perf_counter()
        rnd = verify(state, proposal)
        verifying = time.perf_counter() - t0
        times, key = self.planner.times, (proposal.entry, proposal.k + 1)
        times.verify[key] = _smoothed(times.verify.get(key), verifying)
        self.timed += verifying
        return rnd

    def observe(self, rnd: Round, view) -> None:
        ended = time.perf_counter()  # a plain step's end, before this round's judging
        if self.arm is None:  # a settled round: the batch's progress and the step's time
            if view.counts is not None:
                self.settle.timed(self.progress.reward(view.counts), ended - self.stepped)
            self.lookup_behind = self.lookup is not None
            return
        if self.lookup is not None:  # the lookup drafts of this round, whichever arm played
            self.lookup.judge(rnd, view.counts)
        seconds = time.perf_counter() - self.started
        tokens = self.progress.reward(view.counts) if view.counts is not None else 0
        arm, times = self.arm, self.planner.times
        self.policy.bandit.update(arm, tokens, seconds)
        self.settle.timed(tokens, ended - self.stepped if arm.kind == "none" else None)
        self.settle.decide(
            self.policy.bandit, self.offered, PLAIN, arm, tokens, seconds, idle=self._nothing_to_offer()
        )
        if self.timed and (arm.kind == "lookup" or arm.fixed):
            times.overhead = _smoothed(times.overhead, seconds - self.timed)  # the round's bookkeeping
        self.timed = 0.0
        if arm.kind == "none":
            times.plain = _smoothed(times.plain, seconds)
        elif self.proposal is not None and self.proposal.step_seconds:
            steps = sorted(self.proposal.step_seconds)
            times.draft[arm.drafter] = _smoothed(times.draft.get(arm.drafter), steps[len(steps) // 2])
        self.proposal = None

    def finish(self) -> None:
        if self.memory is not None and self.lookup is not None and self.state is not None:
            self.lookup.remember(self.state, self.memory)  # settled or not
        if self.options.policy_out is not None:
            policy_file.save(self.policy, self.options.policy_out)

    def report(self) -> dict:
        exits = self.exit_layers
        pulls = sorted(self.pulls.items(), key=lambda kv: -kv[1])
        words = {a.key: a.describe() for a in self.policy.arms}
        return {
            "arms": dict(pulls),
            "rounds_by_arm": {words.get(key, key): n for key, n in pulls}
            | (
                {"plain decoding, settled (no bookkeeping)": self.settled_rounds}
                if self.settled_rounds
                else {}
            ),
            "mean_exit_layer": sum(exits) / len(exits) if exits else None,
            "settled_rounds": self.settled_rounds,
        }

    def speedup_over_plain(self, stats, decode_rate: float):
        """Against plain decoding's rate as the mode settles on it: its steps timed alone (an
        estimate kept across calls on this model), else, before enough were timed, its rounds."""
        bandit = self.policy.bandit
        plain = self.settle.plain(bandit, PLAIN)
        if plain <= 0 or decode_rate <= 0:
            return None
        alone = self.settle.bare.pulls >= MIN_PULLS
        what = "plain steps timed alone" if alone else "plain rounds, choosing included"
        n = self.pulls.get(PLAIN.key, 0) + self.settled_rounds
        rates = f"{decode_rate:.1f} tok/s after the prefill against {plain:.1f} tok/s of {what}"
        kept = f"{n} plain rounds in this call; the estimate is kept across calls"
        return decode_rate / plain, f"{rates} ({kept})"

    def describe(self) -> str:
        return f"adaptive (best so far: {self.policy.best().describe()})"
