"""Early-exit decoding, lossy by design. Each new token leaves at the first exit point whose
criterion fires, and goes through every layer otherwise. The confidence-based exit follows CALM
(Schuster et al. 2022); the KV cache of the layers an exited token skipped is copied from its
exit state (CALM) or recomputed later (FREE, Bae et al. 2023; SkipDecode, Del Corro et al.
2023), see :mod:`.skipped_kv`.

A round emits one token per row:

1. **Walk.** The pending token goes up the layers, one exit point at a time (every layer from
   ``min_exit_layer``, or the ``exit_layers`` given). At each exit point the exit head's
   statistics of its state go to the criterion (:mod:`eedecode.model.exit_criteria`, the same objects as
   the agreement study's gates), and the rows for which it fires exit there.
2. **Stop.** Once every running row has exited, no further layer runs. Otherwise the walk ends at
   full depth.
3. **Choose.** A row that exited takes its exit state's token. Greedy without logits processors,
   that is the exit head's argmax; otherwise it is chosen from the exit state's logits as plain
   decoding chooses from the last layer's (processors, sampling). The other rows take the full
   model's token.
4. **Settle.** The skipped layers' KV is copied, or deferred to the next deep token
   (``kv_strategy``).

Host synchronisations per round: one per exit point the walk passes. The host has to know whether
any row is still running before it launches the next layer. One row that exits at its ``j``-th
exit point costs ``j`` reads, and a token that goes to full depth costs one per exit point. The
decoder's end of round adds one. A batch takes its per-layer decision as one reduction over the
rows, with no Python loop over them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..engine.mode import Mode, Round, is_int, option, register
from ..model.exit_criteria import (
    Cosine,
    Criterion,
    ExitPoint,
    Patience,
    parse_criterion,
    stats_needed,
    update_unchanged,
)
from .skipped_kv import KV_STRATEGIES

Tensor = torch.Tensor


@dataclass(frozen=True)
class EarlyExitOptions:
    criterion: str | Callable = option(
        "max-prob:0.9",
        "exit when this fires: max-prob:P, entropy:NATS, margin:M, patience:N (top-1 unchanged over "
        "N exit points), cosine:C (consecutive layers' states), or a callable (eedecode.model.exit_criteria)",
    )
    min_exit_layer: int | None = option(None, "exit points: every layer from this one to L-1 (default 1)")
    exit_layers: str | tuple[int, ...] | None = option(
        None, "exit points as a list instead, e.g. 4,8,12 (each in 1..L-1)"
    )
    kv_strategy: str = option(
        "recompute",
        "K/V of the layers an exited token skipped: 'copy' (from its exit state, CALM) or "
        "'recompute' (run later with the next token that goes deeper, FREE/SkipDecode)",
    )

    def validate(self, num_layers: int) -> None:
        parse_criterion(self.criterion)
        exit_points(self, num_layers)
        if self.kv_strategy not in KV_STRATEGIES:
            raise ValueError(f"kv_strategy: must be one of {tuple(KV_STRATEGIES)}, got {self.kv_strategy!r}")


def exit_points(options: EarlyExitOptions, num_layers: int) -> tuple[int, ...]:
    """The exit depths, ascending: ``exit_layers``, else every layer from ``min_exit_layer``."""
    top = num_layers - 1
    if options.exit_layers is None:
        first = 1 if options.min_exit_layer is None else options.min_exit_layer
        if not is_int(first) or not 1 <= first <= top:
            raise ValueError(
                f"min_exit_layer: must be an int in 1..{top} for a model of {num_layers} layers, "
                f"got {first!r}"
            )
        return tuple(range(first, num_layers))
    if options.min_exit_layer is not None:
        raise ValueError("exit_layers: give exit_layers or min_exit_layer, not both")
    layers = options.exit_layers
    if isinstance(layers, str):
        try:
            layers = [int(x) for x in layers.split(",")]
        except ValueError:
            raise ValueError(f"exit_layers: expected comma-separated ints, got {layers!r}") from None
    if isinstance(layers, (int, bool)) or not all(is_int(x) for x in layers) or not layers:
        raise ValueError(f"exit_layers: must be one or more ints in 1..{top}, got {options.exit_layers!r}")
    bad = [x for x in layers if not 1 <= x <= top]
    if bad or len(set(layers)) != len(layers):
        raise ValueError(
            f"exit_layers: must be distinct ints in 1..{top} for a model of {num_layers} layers, "
            f"got {list(layers)}"
        )
    return tuple(sorted(layers))


class _Exits:
    """One round's exit decisions per row, on the device: who has exited, at what depth, with which
    state and exit-head token; and what patience needs carried from one exit point to the next."""

    def __init__(self, mode: EarlyExit, running: Tensor):
        self.runner, self.criterion, self.stats = mode.runner, mode.criterion, mode.stats
        self.needs_unchanged = mode.needs_unchanged
        self.running = running  # [B] rows still generating
        self.exited = torch.zeros_like(running)  # [B] bool
        self.depth = torch.full(running.shape, mode.runner.num_layers, device=running.device)
        self.hidden: Tensor | None = None  # [B, H] each exited row's exit state
        self.token: Tensor | None = None  # [B] its exit head's argmax there
        self.unchanged: Tensor | None = None
        self.top1: Tensor | None = None

    def frozen(self) -> tuple[Tensor | None, Tensor | None]:
        """(exited rows, their states) once a row may have exited in a batch, else (None, None)."""
        if self.hidden is None or self.running.shape[0] == 1:
            return None, None
        return self.exited, self.hidden

    def observe(self, layer: int, h: Tensor, prev: Tensor | None) -> bool:
        """The criterion at one exit point; True when every running row has exited (a host read)."""
        stats = self.runner.exit_head(h, stats=self.stats)
        if self.needs_unchanged:
            self.unchanged = update_unchanged(self.unchanged, self.top1, stats.argmax)
            self.top1 = stats.argmax
        fired = torch.as_tensor(self.criterion(ExitPoint(layer, stats, h, prev, self.unchanged)))
        if fired.shape not in ((), self.exited.shape):
            raise ValueError(f"criterion: must return one bool per row, got shape {tuple(fired.shape)}")
        new = fired.to(self.exited.device, torch.bool) & ~self.exited & self.running
        if self.hidden is None:
            self.hidden, self.token = h, stats.argmax
        else:
            self.hidden = torch.where(new[:, None], h, self.hidden)
            self.token = torch.where(new, stats.argmax, self.token)
        self.exited = self.exited | new
        self.depth = torch.where(new, layer, self.depth)
        return bool((self.exited | ~self.running).all())

    def final_hidden(self, h: Tensor) -> Tensor:
        """Each row's state to choose from: its exit state if it exited, else ``h``."""
        return h if self.hidden is None else torch.where(self.exited[:, None], self.hidden, h)


@register
class EarlyExit(Mode):
    name, short = "early_exit", "ee"
    description = "each token leaves at the first exit point whose criterion fires (lossy)"
    Options = EarlyExitOptions
    rolls_back = False  # every running row advances by exactly one token in every layer's account
    lossless = False

    def __init__(self, options, runner):
        super().__init__(options, runner)
        self.criterion = parse_criterion(options.criterion)
        self.points = exit_points(options, runner.num_layers)
        self.stats = stats_needed(self.criterion)
        # What a criterion reads beyond the exit head: cosine the state one layer below each exit
        # point, patience the top-1's run across exit points (a user's callable may read either).
        builtin = isinstance(self.criterion, Criterion)
        self.needs_prev = isinstance(self.criterion, Cosine) or not builtin
        self.needs_unchanged = isinstance(self.criterion, Patience) or not builtin
        self.kv = KV_STRATEGIES[options.kv_strategy](runner)
        self.rounds = 0
        self.hist: Tensor | None = None  # [L + 1] row-rounds per exit depth (device)
        self.trace: list[Tensor] = []  # per round, [B] exit depth of each row's token

    def round(self, state, max_tokens: int) -> Round:
        runner, kv, L = self.runner, self.kv, self.runner.num_layers
        exits = _Exits(self, state.active)
        kv.begin(state.cache, runner.embed(state.pending[:, None]))
        for e in self.points:
            prev = kv.run(e - 1, *exits.frozen()) if self.needs_prev else None
            h = kv.run(e, *exits.frozen())
            if exits.observe(e, h, prev):
                break
        else:
            h = kv.run(L, *exits.frozen())
        kv.finish(exits.final_hidden(h))
        token = self._choose(state, exits, h, reached_end=kv.depth == L)
        self._record(exits.depth, state.active)
        return Round(token[:, None], torch.ones_like(token))

    def _choose(self, state, exits: _Exits, h: Tensor, reached_end: bool) -> Tensor:
        """Exited rows: their exit state's token; the others: the full model's (``h``, depth L)."""
        chooser = state.chooser
        if chooser.do_sample or not chooser.pipeline.empty or chooser.record:
            return chooser.choose(state, self.runner.logits(exits.final_hidden(h)))
        if not reached_end:
            return exits.token
        full = chooser.choose(state, self.runner.logits(h))  # as plain decoding chooses
        return full if exits.token is None else torch.where(exits.exited, exits.token, full)

    def _record(self, depth: Tensor, active: Tensor) -> None:
        if self.hist is None:
            self.hist = torch.zeros(self.runner.num_layers + 1, dtype=torch.long, device=depth.device)
        self.hist.scatter_add_(0, depth, active.long())
        self.trace.append(depth)
        self.rounds += 1

    def flush(self) -> None:
        """Run the layers deferred so far (``kv_strategy="recompute"``), so that every layer holds
        every written token's exact KV; nothing to do for ``"copy"``."""
        self.kv.flush()

    def report(self) -> dict:
        """Exit depths (``L``: full depth) and the work done, read once at the end.
        ``exit_layers[b][t]``: the depth new token ``t`` of row ``b`` left at (token 0 comes from
        the prefill at full depth; entries past a row's end are meaningless)."""
        L = self.runner.num_layers
        hist = self.hist.tolist() if self.hist is not None else [0] * (L + 1)
        n = sum(hist)
        rows = torch.stack(self.trace, 1).tolist() if self.trace else []
        return {
            "mean_exit_layer": sum(d * c for d, c in enumerate(hist)) / n if n else float(L),
            "exit_rate": 1 - hist[L] / n if n else 0.0,
            "layers_per_round": self.kv.layer_tokens / max(self.rounds, 1),
            "kv_only_layers_per_round": self.kv.kv_tokens / max(self.rounds, 1),
            "deferred_tokens": self.kv.deferred_tokens,
            "exit_layer_histogram": hist,
            "exit_layers": [[L, *r] for r in rows],
        }

    def describe(self) -> str:
        points = self.points
        dense = points == tuple(range(points[0], self.runner.num_layers))
        where = f"{points[0]}..{points[-1]}" if dense and len(points) > 1 else ",".join(map(str, points))
        return f"early exit {self.criterion!r} at {where}, kv={self.options.kv_strategy}"
