"""Drafters and the verification they share: the pieces speculative modes are made of.

A drafter proposes, per batch row, up to ``k`` tokens (a row may propose fewer: ``counts``),
with their draft distributions when sampling, and says where verification starts:

* **from the exit layer** (``entry = E``): early-exit drafts already wrote their keys and values
  in layers ``< E``, and their layer-E states are the exit query cache (LayerSkip, Elhoushi et
  al. 2024). Verification runs ``[E, L)`` over those states only;
* **from the embeddings** (``entry = 0``): lookup drafts (prompt lookup) and drafts made with
  some layers skipped (Draft & Verify, Zhang et al. 2024; SWIFT, Xia et al. 2024) have no
  usable cache entries, so verification runs every layer over the block.

:func:`verify` then accepts a prefix of each row's own drafts (:mod:`eedecode.engine.acceptance`) and
returns the round's tokens. The decoder rolls every layer back to the accepted lengths.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..engine.acceptance import sample
from ..engine.mode import Round
from .lookup import NgramIndex, lookup_drafts
from .stop_rules import ThresholdStop

Tensor = torch.Tensor


@dataclass
class Proposal:
    drafts: Tensor  # [B, k]
    counts: Tensor | None  # [B]: row b's drafts are drafts[b, :counts[b]]; None: all k
    qs: list[Tensor]  # draft distributions [B, V] per position (sampling), or []
    entry: int  # the layer verification starts at
    states: Tensor | None  # [B, k + 1, H] states entering `entry` (entry > 0), else None
    exit_states: Tensor | None = None  # [B, k, H] the drafts' exit states (for rebuilding q)
    confidences: Tensor | None = None  # [B, k] each draft's probability under the draft model
    step_seconds: list[float] | None = None  # wall time of each draft step (when the host waited on it)

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


def _context(state, drafts: list[Tensor]) -> Tensor | None:
    """The drafts so far, for logits processors that read the context (None when none do)."""
    if state.chooser.pipeline.context_free or not drafts:
        return None
    return torch.cat(drafts, 1)


def _stop_rule(stop):
    return ThresholdStop(stop) if isinstance(stop, (int, float)) else stop


@dataclass
class _Steps:
    """What the draft loop made: per step the states it drafted from, the drafts ``[B, 1]``, their
    draft distributions and confidences; per row the drafts it proposed (with a stop rule); the
    wall time of each step (when the host waited on it); the last draft ``[B, 1]``."""

    last: Tensor
    states: list
    drafts: list
    qs: list
    confidences: list
    counts: Tensor | None
    seconds: list

    def tensors(self, state) -> tuple[Tensor, Tensor | None]:
        """The drafts ``[B, k']`` and their confidences ``[B, k']`` (None without drafts)."""
        out = torch.cat(self.drafts, 1) if self.drafts else state.pending.new_zeros(state.pending.shape[0], 0)
        conf = torch.stack(self.confidences, 1) if self.confidences else None
        return out, conf


def _draft_steps(state, k: int, rule, picker, forward) -> _Steps:
    """Up to ``k`` draft steps: ``forward`` takes tokens ``[B, 1]`` to the states ``[B, 1, H]`` the
    ``picker`` drafts from. With a stop ``rule``, a row stops proposing after the draft the rule
    turns it down at, and drafting ends when no row goes on (one host read per step)."""
    x = state.pending[:, None]  # [B, 1]
    steps = _Steps(x, [], [], [], [], None, [])
    alive = rule.start(state.active) if rule is not None else None
    steps.counts = torch.zeros_like(state.pending) if rule is not None else None
    clock = time.perf_counter()
    for i in range(k):
        h = forward(x)
        steps.states.append(h)
        # without a stop rule nothing reads a greedy draft's confidence: not computed
        token, q, confidence = picker.draft(
            state, h[:, 0], _context(state, steps.drafts), i, rule is not None
        )
        x = token[:, None]
        steps.drafts.append(x)
        if confidence is not None:
            steps.confidences.append(confidence)
        if q is not None:
            steps.qs.append(q)
        if rule is not None:
            steps.counts += alive
            alive = rule.keep(alive, confidence, token)
            going_on = i + 1 < k and bool(alive.any())
            now = time.perf_counter()
            steps.seconds.append(now - clock)
            clock = now
            if not going_on:
                break
    steps.last = x
    return steps


def draft_from_exit(state, exit_layer: int, k: int, stop=None, head=None) -> Proposal:
    """Up to ``k`` drafts from layers ``[0, exit_layer)`` and the exit head (``head``: a different
    head for the draft, e.g. a translator or a smaller vocabulary; see :class:`DraftHead`).

    ``stop``: a threshold or a stop rule (:mod:`eedecode.drafting.stop_rules`). A row stops proposing after
    the draft the rule turns it down at (that draft is kept: it is already paid for, and may still
    be accepted). Drafting ends when no running row goes on (one host read per draft step)."""
    runner, cache = state.runner, state.cache
    picker = state.chooser if head is None else head.with_depth(exit_layer)
    steps = _draft_steps(
        state, k, _stop_rule(stop), picker, lambda x: runner.run_layers(runner.embed(x), 0, exit_layer, cache)
    )
    last = runner.run_layers(runner.embed(steps.last), 0, exit_layer, cache)  # the last draft's exit state
    block = torch.cat([*steps.states, last], 1)  # [B, k' + 1, H]
    out, conf = steps.tensors(state)
    kept = out.shape[1]
    return Proposal(
        out, steps.counts, steps.qs, exit_layer, block, block[:, :kept], conf, steps.seconds or None
    )


def draft_mixed(state, lookup: Proposal, exit_layer: int, k: int, stop=None, head=None) -> Proposal:
    """Per row, the lookup drafts where the row found a match, else up to ``k`` drafts from
    layers ``[0, exit_layer)`` (:func:`draft_from_exit`, every row drafting in one batch). The rows'
    drafts no longer match the exit states cached in layers ``[0, exit_layer)``, so every layer is
    moved back and verification runs them all (``entry = 0``). Greedy decoding only: a sampled
    round would need each row's draft distribution from its own drafter."""
    ex = draft_from_exit(state, exit_layer, k, stop, head)
    state.rewind()
    use = lookup.counts > 0  # [B]
    width = max(ex.k, lookup.k)

    def widen(d: Tensor) -> Tensor:
        return torch.nn.functional.pad(d, (0, width - d.shape[1]))

    drafts = torch.where(use[:, None], widen(lookup.drafts), widen(ex.drafts))
    ex_counts = ex.counts if ex.counts is not None else torch.full_like(lookup.counts, ex.k)
    counts = torch.where(use, lookup.counts, ex_counts)
    return Proposal(drafts, counts, [], 0, None, step_seconds=ex.step_seconds)


def plain_step(state) -> Round:
    """A round without drafts: the pending token through every layer, one new token per row."""
    runner = state.runner
    h = runner.run_layers(runner.embed(state.pending[:, None]), 0, runner.num_layers, state.cache)
    token = state.chooser.choose(state, runner.logits(h[:, 0]))  # [B]: as autoregressive decoding
    return Round(token[:, None], torch.ones_like(token))


def segments(layers) -> list[tuple[int, int]]:
    """Sorted layer indices -> the contiguous runs ``[start, end)`` they form."""
    runs: list[tuple[int, int]] = []
    for i in sorted(layers):
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def draft_with_skips(state, layers, k: int, stop=None, head=None) -> Proposal:
    """Up to ``k`` drafts from the model with every layer not in ``layers`` skipped, through the
    final norm and LM head (Draft & Verify; SWIFT). The drafts' keys and values in the layers they
    ran are not the full model's, so every layer is moved back before a verification that runs
    them all (``entry = 0``). ``stop``: as :func:`draft_from_exit`."""
    runner = state.runner
    runs = segments(layers)

    def forward(x: Tensor) -> Tensor:
        h = runner.embed(x)
        for a, b in runs:
            h = runner.run_layers(h, a, b, state.cache)
        return h

    steps = _draft_steps(state, k, _stop_rule(stop), head or state.chooser, forward)
    state.rewind()  # the layers the drafts ran through hold their (not the full model's) keys
    out, conf = steps.tensors(state)
    return Proposal(out, steps.counts, steps.qs, 0, None, confidences=conf)


class DraftHead:
    """A draft's exit head other than the model's own: a translator in front of the final norm
    (a tuned lens, :mod:`eedecode.study`; the model itself is unchanged) and/or scores over a
    subset of the vocabulary (the tokens a corpus uses most). Verification keeps the model's full
    head, so drafts made this way stay lossless: only their acceptance changes."""

    def __init__(self, runner, vocab: Tensor | None = None, translator=None, depth: int | None = None):
        self.runner, self.translator, self.depth = runner, translator, depth
        self.vocab = None if vocab is None else vocab.to(runner.head_device, torch.long)
        self.weight = None
        if self.vocab is not None and runner.fused_head:
            self.weight = runner.lm_head.weight[self.vocab].contiguous()  # [V', H], made once

    def with_depth(self, depth: int) -> DraftHead:
        head = DraftHead.__new__(DraftHead)
        head.__dict__.update(self.__dict__, depth=depth)
        return head

    def _translate(self, h: Tensor) -> Tensor:
        if self.translator is None or self.depth not in self.translator.depths:
            return h
        return self.translator(self.depth, h.float()).to(h.dtype)

    def draft(self, state, h: Tensor, context=None, i: int = 0, confidence: bool = True):
        h = self._translate(h)
        runner, chooser = self.runner, state.chooser
        if self.vocab is None and not chooser.do_sample:
            return chooser.draft(state, h, context, i, confidence)
        # sampling keeps q explicitly: a Gumbel draft's q is rebuilt from untranslated states
        if self.weight is not None and not chooser.do_sample and chooser.pipeline.empty:
            from ..kernels import DRAFT_STATS, exit_head

            stats = exit_head(h, runner.norm.weight, runner.norm_eps, self.weight, stats=DRAFT_STATS)
            return self.vocab[stats.argmax], None, stats.max_prob
        logits = runner.exit_head_logits(h)  # [B, V]
        if self.vocab is not None:  # scores outside the subset are ruled out
            logits = torch.full_like(logits, float("-inf")).index_copy_(1, self.vocab, logits[:, self.vocab])
        scores = chooser.pipeline(logits[:, None], state, context, i)[:, 0]
        q = scores.softmax(-1)
        token = q.argmax(-1) if not chooser.do_sample else sample(q, chooser.generator)
        return token, q if chooser.do_sample else None, q.max(-1).values


def draft_from_lookup(state, k: int, ngram_max: int = 3) -> Proposal:
    """Up to ``k`` drafts continuing each row's latest earlier occurrence of its last n-gram
    (:mod:`eedecode.drafting.lookup`). Their draft distribution is a point mass, which sampling needs once
    the drafts are to be verified: :func:`with_point_masses`."""
    context = torch.cat([state.prompt, state.out], 1)  # [B, P + W]
    start = state.cache.pad  # left padding
    end = state.prompt.shape[1] + state.out_len
    drafts, counts = lookup_drafts(context, start, end, k, ngram_max)
    return Proposal(drafts, counts, [], 0, None)


class Lookout:
    """Lookup drafts looked for every round, whoever drafts it (the adaptive mode): whether rows
    found a match says what kind of text the round is in, and the drafts are judged against
    the round's tokens afterwards (:meth:`judge`). On a CPU they come from the host's n-gram
    index, as lists, with no tensor arithmetic: there a round's bookkeeping runs right after a
    forward pass, with cold caches, where each operation costs several times its usual time.
    Elsewhere: the batched search on the device and one host read."""

    def __init__(self, state, input_ids: Tensor, ngram_max: int, on_cpu: bool):
        self.ngram_max = ngram_max
        self.index = NgramIndex(input_ids, state.cache.pad, ngram_max) if on_cpu else None
        self.found = None  # this round's drafts: (drafts, counts) lists, or a Proposal
        self.judged = None  # this round's (drafts, drafts per running row), for judge

    def look(self, state, k: int, laggards: list[int]) -> tuple[bool, bool, bool]:
        """Up to ``k`` drafts per row; whether some running row found a match, whether every one
        did, whether the ``laggards`` did."""
        if self.index is None:
            found = draft_from_lookup(state, k, self.ngram_max)
            matched = (found.counts > 0) & state.active
            done = matched | ~state.active
            self.found, self.judged = found, (found.drafts, found.per_row(state.active))
            some, every, behind = torch.stack([matched.any(), done.all(), done[laggards].all()]).tolist()
            return some, every, behind
        self.index.update(state.out, state.out_len.tolist())
        drafts, counts = self.index.drafts(k)
        active = state.active.tolist()
        matched = [c > 0 and a for c, a in zip(counts, active, strict=True)]
        done = [m or not a for m, a in zip(matched, active, strict=True)]
        self.found = (drafts, counts)
        self.judged = (drafts, [c * a for c, a in zip(counts, active, strict=True)])
        return any(matched), all(done), all(done[b] for b in laggards)

    def proposal(self) -> Proposal:
        """This round's lookup drafts, to be verified."""
        if not isinstance(self.found, Proposal):  # the host's lists
            drafts, counts = self.found
            self.found = Proposal(torch.tensor(drafts), torch.tensor(counts), [], 0, None)
        return self.found

    def judge(self, runs, rnd: Round, counts: list[int]) -> None:
        """Tell the draft-length model ``runs`` (:class:`eedecode.drafting.run_lengths.RunLengths`) how far
        this round's lookup drafts would have run, against the tokens it emitted (``counts``:
        per row, on the host)."""
        if self.judged is None:
            return
        (drafts, per_row), self.judged, self.found = self.judged, None, None
        if isinstance(drafts, list):
            runs.judge_rows(drafts, per_row, rnd.tokens.tolist(), counts)
        else:
            runs.judge(drafts, per_row, rnd.tokens, rnd.counts, runs.judged.device)


def with_point_masses(state, proposal: Proposal) -> Proposal:
    """``proposal`` with its drafts' point-mass distributions when sampling (``[B, V]`` each)."""
    if state.chooser.do_sample and not proposal.qs:
        V = state.runner.vocab_size
        d = proposal.drafts
        proposal.qs = [torch.nn.functional.one_hot(d[:, j], V).float() for j in range(d.shape[1])]
    return proposal


def verify(state, proposal: Proposal) -> Round:
    """One verification pass over the pending tokens and the proposal, then acceptance."""
    runner, cache = state.runner, state.cache
    if proposal.entry > 0:
        h = runner.run_layers(proposal.states, proposal.entry, runner.num_layers, cache)
    else:
        block = torch.cat([state.pending[:, None], proposal.drafts], 1)  # [B, k + 1]
        h = runner.run_layers(runner.embed(block), 0, runner.num_layers, cache)
    tokens, counts = state.chooser.accept(
        state, proposal.drafts, proposal.exit_states, proposal.qs, runner.logits(h), proposal.counts
    )
    return Round(tokens, counts, drafted=proposal.drafted(state.active))
