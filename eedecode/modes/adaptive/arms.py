"""The arms of the adaptive mode: each one way to run a round."""

from __future__ import annotations

import functools
from dataclasses import dataclass

#: Exit layers tried when none is given, as fractions of the depth.
EXIT_FRACTIONS = (0.0, 0.125, 0.25, 0.375, 0.5)
KINDS = ("none", "lookup", "exit", "mixed", "skip")


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
        """What the arm drafts with (arms that differ only in their stop rule share it): the name
        of its drafter, under which what it learns is kept."""
        if self.kind in ("exit", "mixed"):
            return f"exit:E={self.exit_layer}"
        if self.kind == "skip":
            return f"skip:{','.join(map(str, self.layers))}"
        return self.kind

    @functools.cached_property
    def key(self) -> str:
        """The arm's name in statistics and files."""
        stop = "auto" if self.threshold is None else self.threshold
        if self.kind == "exit" and self.fixed:
            return f"{self.drafter}:k<={self.max_drafts}"
        if self.kind in ("exit", "skip"):
            return f"{self.drafter}:t={stop}:k={self.max_drafts}"
        if self.kind == "lookup":
            return f"lookup:k={self.max_drafts}"
        if self.kind == "mixed":
            return f"mixed:lookup+E={self.exit_layer}:t={stop}:k={self.max_drafts}"
        return "none"

    def describe(self) -> str:
        """The arm in words."""
        if self.kind == "none":
            return "plain decoding (no drafts)"
        if self.kind == "lookup":
            return "lookup drafts (copied from the context)"
        how = "length from the draft-length model" if self.fixed else "stopped by confidence"
        if self.kind == "exit":
            return f"drafts from layer {self.exit_layer} ({how})"
        if self.kind == "mixed":
            return f"lookup drafts where rows found a match, else drafts from layer {self.exit_layer}"
        return f"drafts through layers {list(self.layers)} ({how})"


def exit_layer_candidates(num_layers: int) -> list[int]:
    """Exit layers the policy tries on a model of ``num_layers`` layers: 1, then L/8 .. L/2."""
    layers = {max(1, min(num_layers - 1, round(f * num_layers))) for f in EXIT_FRACTIONS}
    return sorted(layers | {1})


def make_arms(num_layers: int, options, skip_layers=None, depths: list[int] | None = None) -> list[Arm]:
    """The arms of a call: plain decoding, lookup (if enabled), early exit at each candidate layer
    (with a translator: at each layer it translates, ``depths``) with a stop rule and with the
    draft-length model's length, mixed rounds, and drafting through a tuned layer set
    (``skip_layers``, from ``eedecode tune``)."""
    E = options.exit_layer
    if E not in ("auto", None):
        exits = [E]
    elif depths:
        exits = sorted(d for d in depths if 1 <= d < num_layers)
    else:
        exits = exit_layer_candidates(num_layers)
    k = options.max_drafts
    arms = [Arm("none")]
    if options.lookup:
        arms.append(Arm("lookup", max_drafts=k))
    if options.exit_drafts and num_layers > 1:
        for e in exits:
            arms.append(Arm("exit", exit_layer=e, max_drafts=k))  # confidence-stopped drafts
            arms.append(Arm("exit", exit_layer=e, max_drafts=k, fixed=True))  # the length model's
        if options.lookup:  # offered only in batch rounds where some rows found a match and some did not
            arms += [Arm("mixed", exit_layer=e, max_drafts=k) for e in exits]
    if skip_layers:
        arms.append(Arm("skip", max_drafts=k, layers=tuple(skip_layers)))
    return arms
