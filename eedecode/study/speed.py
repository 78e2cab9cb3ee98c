"""What agreement means for decoding speed: expected tokens per round and the ideal speed-up of
self-speculative decoding (LayerSkip, Elhoushi et al. 2024, arXiv 2404.16710) from exit layer E
with k drafts, predicted from a teacher-forced study.

A greedy round starting after position t drafts layer E's top-1 at positions t, t+1, ...; it
accepts the drafts up to the first one that differs from the full model's top-1 (at most k) and
emits one token of the full model after them, so the next round starts right after that token.
The study reads the accepted counts from the observed runs of consecutive agreement along the
text (:func:`tokens_per_round`), not from an independence assumption; for independent agreement
with probability a the same walk gives ``(1 - a^(k+1)) / (1 - a)`` (Leviathan et al. 2023),
reported beside it. Caveat: the drafts of a real round follow the model's own greedy text, here
they follow the given text.

Ideal speed-up over autoregressive decoding: ``mean(n) / (k c + v)``, with c the cost of a draft
step and v that of a verification, relative to an autoregressive step, measured by
:func:`eedecode.drafting.step_costs.measure_step_costs` (the drafters' own pieces, as ``eedecode
bench`` times them). ``eedecode bench --exit-layer E --num-speculations k`` measures the real
tokens per round and speed-up at one cell; :mod:`eedecode.study.speed_check` checks the
prediction against it and splits the miss between the acceptance and the cost model."""

from __future__ import annotations

import statistics

import torch

Tensor = torch.Tensor

DRAFT_LENGTHS = (1, 2, 3, 4, 6, 8)


def run_lengths(agree: Tensor) -> Tensor:
    """``[B, T]`` bool -> ``[B, T]``: the number of consecutive True values starting at each position."""
    B, T = agree.shape
    runs = torch.zeros(B, T + 1, dtype=torch.long)
    a = agree.long()
    for t in range(T - 1, -1, -1):
        runs[:, t] = (runs[:, t + 1] + 1) * a[:, t]
    return runs[:, :T]


def block_round_counts(agree: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per row of ``agree [B, T]``: (tokens, rounds) of the greedy walk. A round at position t
    accepts ``min(run_t, k)`` drafts and emits one more token; only rounds whose k drafts and the
    token after them lie inside the row (``t + k < T``) are counted."""
    T = agree.shape[1]
    tokens, rounds = [], []
    for row in run_lengths(agree).tolist():
        t = n = r = 0
        while t + k < T:
            step = min(row[t], k) + 1
            n, r, t = n + step, r + 1, t + step
        tokens.append(n)
        rounds.append(r)
    return torch.tensor(tokens, dtype=torch.float64), torch.tensor(rounds, dtype=torch.float64)


def round_counts(agree: Tensor, k: int) -> tuple[int, int]:
    """(tokens, rounds) of the greedy walk over every row of ``agree [B, T]``
    (:func:`block_round_counts`, summed)."""
    tokens, rounds = block_round_counts(agree, k)
    return int(tokens.sum()), int(rounds.sum())


def tokens_per_round(agree: Tensor, k: int) -> float:
    tokens, rounds = round_counts(agree, k)
    return tokens / rounds if rounds else float("nan")


def independent_tokens_per_round(agreement: float, k: int) -> float:
    """``(1 - a^(k+1)) / (1 - a)``: the mean for independent agreement with probability a."""
    from ..model.costs import expected_tokens_per_round

    return expected_tokens_per_round(agreement, k)


def speed_exits(depths: list[int], num_layers: int, at_most: int) -> list[int]:
    """Up to ``at_most`` exit layers below the last, evenly spread over the studied depths."""
    below = [d for d in depths if d < num_layers]
    if len(below) <= at_most:
        return below
    picks = torch.linspace(0, len(below) - 1, at_most).round().long().unique().tolist()
    return [below[i] for i in picks]


STEPS = ("ar_step_s", "draft_step_s", "verify_s")


def measure_costs(
    model, prompt: Tensor, exits: list[int], draft_lengths, reps: int, calls: int = 1, progress=None
) -> dict:
    """``{(E, k): {"c": ..., "v": ..., seconds}}`` from the benchmark's own step timer
    (:func:`eedecode.bench.measure_step_costs`, medians of ``reps`` rounds). With ``calls > 1``
    each cell is timed that many times and each step keeps its fastest median: on a shared CPU a
    step of a few milliseconds is often preempted, and the fastest of several medians is closer
    to what the step costs. A draft step does not depend on k: each cell's ``c`` is the median of
    E's cells (the cell's own is kept as ``c_cell``)."""
    from ..drafting.step_costs import measure_step_costs

    costs = {}
    for e in exits:
        for k in draft_lengths:
            runs = [measure_step_costs(model, prompt, e, k, reps=reps) for _ in range(max(1, calls))]
            t = {step: min(r[step] for r in runs) for step in STEPS}
            costs[(e, k)] = {
                **t,
                "c_cell": t["draft_step_s"] / t["ar_step_s"],
                "v": t["verify_s"] / t["ar_step_s"],
                "c_calls": [r["draft_step_s"] / r["ar_step_s"] for r in runs],
                "v_calls": [r["verify_s"] / r["ar_step_s"] for r in runs],
            }
            if progress is not None:
                progress.update(1)
        pooled = statistics.median(costs[(e, k)]["c_cell"] for k in draft_lengths)
        for k in draft_lengths:
            costs[(e, k)]["c"] = pooled
    return costs


def speed_table(
    agree: Tensor,
    depths: list[int],
    positions: int,
    exits: list[int],
    draft_lengths,
    costs: dict | None,
    iv=None,
    key: str = "logit",
) -> list[dict]:
    """Per (E, k): agreement at E, tokens per round (observed runs and independent), the share
    of drafts accepted (what ``eedecode bench`` reports as acceptance at k: accepted drafts over
    drafts made), and with ``costs`` the measured c, v and the ideal speed-up. ``agree [D, N]``,
    N = blocks x positions. ``iv``: an :class:`~eedecode.study.bootstrap.Intervals` over the
    blocks (the step costs are held fixed: the intervals are those of the text's agreement)."""
    from ..model.costs import ideal_speedup

    rows = []
    for e in exits:
        a = agree[depths.index(e)].view(-1, positions)
        alpha = float(a.float().mean())
        for k in draft_lengths:
            tokens, rounds = block_round_counts(a, k)
            row = {
                "exit_layer": e,
                "draft_length": k,
                "agreement": alpha,
                "tokens_per_round": float(tokens.sum() / rounds.sum()),
                "acceptance": float((tokens.sum() - rounds.sum()) / (k * rounds.sum())),
                "independent_tokens_per_round": independent_tokens_per_round(alpha, k),
            }
            cost = (costs or {}).get((e, k))
            if cost is not None:
                row.update(c=cost["c"], v=cost["v"])
                row["ideal_speedup"] = ideal_speedup(row["tokens_per_round"], k, cost["c"], cost["v"])
            if iv is not None and iv.active:
                name = f"speed/{key}/E{e}k{k}"
                row["tokens_per_round_ci"] = iv.ratio(f"{name}/tokens_per_round", tokens, rounds)
                row["acceptance_ci"] = iv.ratio(f"{name}/acceptance", tokens - rounds, k * rounds)
                if cost is not None:
                    lo, hi = row["tokens_per_round_ci"]
                    row["ideal_speedup_ci"] = [ideal_speedup(x, k, cost["c"], cost["v"]) for x in (lo, hi)]
            rows.append(row)
    return rows
