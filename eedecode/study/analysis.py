"""Every measure of the agreement study for one lens, each with its bootstrap interval over blocks
(:mod:`eedecode.study.bootstrap`), and the comparisons that one study can settle by itself:
word-initial against continuation pieces, the tuned lens against the logit lens of the same
run, the module outputs against the residual stream. A comparison's interval is that of the
difference, resample by resample, and its ``verdict`` says on which side of zero the whole
interval lies (``"not resolved"`` when it straddles zero).

Replicates are kept under keys of the form ``lens/measure/...`` so that two studies of the same
blocks can be compared resample by resample (:mod:`eedecode.study.compare`).
"""

from __future__ import annotations

import math

import torch

from ..model.exit_criteria import CRITERIA
from .bootstrap import Intervals, block_weights, ratio, verdict
from .bootstrap import per_block as _per_block
from .collect import Records
from .gates import AGREEMENT_TARGETS, bootstrap_depths, events, exact_curve, gate_summary, thin
from .measures import (
    CATEGORIES,
    GROUPS,
    categories,
    category_masks,
    layer_table,
    oracle_exit,
    oracle_summary,
    subword_groups,
    subword_summary,
)
from .sublayers import POINTS

Tensor = torch.Tensor
LAYER_INTERVALS = ("agreement", "accuracy", "kl")
ORACLE_SHARES = ("share_before_last", "share_10_layers_early", "share_quarter_early")


def analyse(records: Records, lens: str, pieces: dict | None, prob: float, iv: Intervals) -> dict:
    """Every measure of :mod:`eedecode.study.measures` and :mod:`eedecode.study.gates` for one
    lens, with ``*_ci`` intervals when ``iv`` resamples."""
    rec, depths, L, P = records.lenses[lens], records.depths, records.num_layers, records.positions
    agree = rec.agree(records.final_top1)
    oracle = oracle_exit(agree)
    depth = torch.tensor(depths)[oracle]
    table = layer_table(rec, records.final_top1, depths, records.inputs)
    per_layer = {"agreement": agree, "accuracy": rec.correct, "kl": rec.kl}
    for key, x in per_layer.items():
        sums = _per_block(x, P)  # [D, B]
        for row, s in zip(table, sums, strict=True):
            row[f"{key}_ci"] = iv.ratio(f"{lens}/layers/{row['depth']}/{key}", s, float(P))
    o = oracle_summary(oracle, depths, L)
    o["mean_depth_ci"] = iv.ratio(f"{lens}/oracle/mean_depth", _per_block(depth, P), float(P))
    before = L - depth
    shares = {"share_before_last": depth < L, "share_10_layers_early": before >= 10}
    shares["share_quarter_early"] = before >= math.ceil(0.25 * L)
    for key, mask in shares.items():
        o[f"{key}_ci"] = iv.ratio(f"{lens}/oracle/{key}", _per_block(mask, P), float(P))
    out = {"layers": table, "oracle": o}
    out["gates"] = _gates(rec, agree, oracle, depths, L, P, lens, iv)
    out["static"] = _static(table, L, o["mean_depth"], lens, iv)
    out["best_gate"] = _best_gate(out["gates"], lens, iv)
    out["categories"] = categories(rec, records.final_top1, depths, L, prob)
    _category_intervals(out["categories"], rec, records.final_top1, depths, L, P, lens, iv)
    if pieces is not None:
        groups = subword_groups(records.final_top1, records.inputs, pieces)
        out["subwords"] = subword_summary(groups, depth, L)
        _subword_intervals(out["subwords"], groups, depth, P, lens, iv)
    return out


def _oracle_replicates(iv: Intervals, lens: str) -> Tensor:
    return torch.tensor(iv.replicates[f"{lens}/oracle/mean_depth"], dtype=torch.float64)


def _savings(depth, oracle, L):
    """The share of the oracle's saved layers that a mean exit ``depth`` keeps."""
    return (L - depth) / (L - oracle)


def _gates(rec, agree, oracle, depths, L, P, lens, iv) -> dict:
    gates = {}
    for name, scores in rec.scores.items():
        ev = events(CRITERIA[name], scores, agree, oracle, depths)
        curve = exact_curve(ev)
        summary = gate_summary(curve)
        gate = {"curve": thin(curve, [p for p in summary["at_agreement"].values() if p]), **summary}
        d95, o_mean = summary["depth_for_agreement"]["0.95"], _mean_depth(oracle, depths)
        gate["savings_95"] = _savings(d95, o_mean, L) if d95 is not None and o_mean < L else None
        if iv.active:
            reps = bootstrap_depths(ev, iv.weights, P)
            gate["depth_for_agreement_ci"] = {
                str(t): iv.add(f"{lens}/gates/{name}/depth_{t}", reps[:, i])
                for i, t in enumerate(AGREEMENT_TARGETS)
            }
            saved = _savings(reps[:, AGREEMENT_TARGETS.index(0.95)], _oracle_replicates(iv, lens), L)
            gate["savings_95_ci"] = iv.add(f"{lens}/gates/{name}/savings_95", saved)
        gates[name] = gate
    return gates


def _mean_depth(oracle: Tensor, depths: list[int]) -> float:
    return float(torch.tensor(depths, dtype=torch.float64)[oracle].mean())


def _static(table: list[dict], L: int, oracle_mean: float, lens: str, iv: Intervals) -> dict:
    """Every token leaves at the same depth: the cheapest depth with each agreement."""
    curve = [{"threshold": r["depth"], "agreement": r["agreement"], "mean_depth": r["depth"]} for r in table]
    at = {}
    for t in AGREEMENT_TARGETS:
        ok = [r["depth"] for r in table if r["agreement"] >= t - 1e-12]
        at[str(t)] = float(min(ok)) if ok else None
    out = {"curve": curve, "depth_for_agreement": at}
    d95 = at["0.95"]
    out["savings_95"] = _savings(d95, oracle_mean, L) if d95 is not None and oracle_mean < L else None
    if iv.active:
        keys = [f"{lens}/layers/{r['depth']}/agreement" for r in table]
        reps = torch.tensor([iv.replicates[k] for k in keys], dtype=torch.float64).T  # [R, D]
        d = torch.tensor([float(r["depth"]) for r in table], dtype=torch.float64)
        best = torch.where(reps >= 0.95 - 1e-12, d, torch.full_like(reps, math.inf)).min(1).values
        saved = _savings(best, _oracle_replicates(iv, lens), L)
        out["savings_95_ci"] = iv.add(f"{lens}/static/savings_95", saved)
    return out


def _best_gate(gates: dict, lens: str, iv: Intervals) -> dict:
    """The gate that keeps the largest share of the oracle's savings at 95% agreement, with that
    gate's own interval (the maximum over gates, taken again in every resample, would be biased
    upward)."""
    scored = {k: g["savings_95"] for k, g in gates.items() if g["savings_95"] is not None}
    if not scored:
        return {"name": None, "savings_95": None, "savings_95_ci": [None, None]}
    name = max(scored, key=scored.get)
    out = {"name": name, "savings_95": scored[name], "savings_95_ci": gates[name].get("savings_95_ci")}
    if iv.active:
        reps = torch.tensor(iv.replicates[f"{lens}/gates/{name}/savings_95"], dtype=torch.float64)
        iv.add(f"{lens}/best_gate/savings_95", reps)
    return out


def _category_intervals(cats: dict, rec, final_top1, depths, L, P, lens, iv) -> None:
    _, masks = category_masks(rec, final_top1, depths, L, cats["prob"])
    for name in CATEGORIES:
        cats[name]["share_ci"] = iv.ratio(f"{lens}/categories/{name}", _per_block(masks[name], P), float(P))


def _subword_intervals(sub: dict, groups: Tensor, depth: Tensor, P: int, lens: str, iv: Intervals) -> None:
    if not iv.active:
        return
    reps = {}
    for g, name in enumerate(GROUPS):
        mask = groups == g
        num, den = _per_block(torch.where(mask, depth, 0), P), _per_block(mask, P)
        reps[name] = ratio(iv.weights, num, den)
        sub[name]["mean_oracle_depth_ci"] = iv.add(f"{lens}/subwords/{name}", reps[name])
    diff = reps["word_initial"] - reps["continuation"]
    point = sub["word_initial"]["mean_oracle_depth"] - sub["continuation"]["mean_oracle_depth"]
    ci = iv.add(f"{lens}/subwords/word_initial_minus_continuation", diff)
    sub["word_initial_minus_continuation"] = {"value": point, "ci": ci, "verdict": verdict(ci)}


def final_layer(records: Records, iv: Intervals) -> dict:
    """The last layer's language-modelling loss (nats per token) and accuracy on the studied
    positions: what joint training costs the full model."""
    P = records.positions
    nll = -records.final_logprob.double()
    correct = records.final_top1 == records.labels
    return {
        "loss": float(nll.mean()),
        "loss_ci": iv.ratio("final/loss", _per_block(nll, P), float(P)),
        "accuracy": float(correct.double().mean()),
        "accuracy_ci": iv.ratio("final/accuracy", _per_block(correct, P), float(P)),
    }


def held_out_gain(records: Records, lenses: dict, iv: Intervals) -> dict:
    """The tuned lens against the logit lens of the same run, on the same positions: per depth
    agreement and KL of both and the agreement gained, and the oracle exit of both."""
    P = records.positions
    a_logit = records.lenses["logit"].agree(records.final_top1)
    a_tuned = records.lenses["tuned"].agree(records.final_top1)
    rows = []
    for j, (a, b) in enumerate(zip(lenses["logit"]["layers"], lenses["tuned"]["layers"], strict=True)):
        gain = _per_block(a_tuned[j].double() - a_logit[j].double(), P)
        ci = iv.ratio(f"tuned_minus_logit/layers/{a['depth']}/agreement", gain, float(P))
        rows.append(
            {
                "depth": a["depth"],
                "agreement_logit": a["agreement"],
                "agreement_tuned": b["agreement"],
                "gain": b["agreement"] - a["agreement"],
                "gain_ci": ci,
                "verdict": verdict(ci) if a["depth"] < records.num_layers else "equal by definition",
                "kl_logit": a["kl"],
                "kl_tuned": b["kl"],
            }
        )
    shift = {
        "logit": lenses["logit"]["oracle"]["mean_depth"],
        "tuned": lenses["tuned"]["oracle"]["mean_depth"],
    }
    shift["difference"] = shift["tuned"] - shift["logit"]
    if iv.active:
        d = _oracle_replicates(iv, "tuned") - _oracle_replicates(iv, "logit")
        shift["difference_ci"] = iv.add("tuned_minus_logit/oracle/mean_depth", d)
        shift["verdict"] = verdict(shift["difference_ci"])
    return {"layers": rows, "oracle_mean_depth": shift}


def sublayer_table(records: Records, iv: Intervals) -> dict:
    """Per sub-layer point and studied depth: mean top-1 agreement with the final layer, top-10
    overlap with the final top-10 and with the same point one studied layer earlier; and per
    point the mean over the studied depths below the last layer (where the residual after the
    MLP is the final state: agreement 1 by definition), with intervals over the blocks measured."""
    P, sums = records.positions, records.sublayers
    if not sums or not records.sublayer_tokens:
        return {"rows": [], "means": {}}
    keys = ("agree", "top10_final", "top10_prev")
    n_blocks = sums[POINTS[0]]["agree"].shape[1]
    n = n_blocks * P
    rows = [
        {"point": point, "depth": d, "tokens": n} | {k: float(sums[point][k][j].sum()) / n for k in keys}
        for point in POINTS
        for j, d in enumerate(records.depths)
    ]
    inner = [j for j, d in enumerate(records.depths) if d < records.num_layers]
    weights = (
        block_weights(n_blocks, iv.config.resamples, iv.config.seed + 1)
        if iv.active and n_blocks > 1
        else None
    )
    means = {}
    for point in POINTS:
        m = {"depths": [records.depths[j] for j in inner], "blocks": n_blocks}
        for k in ("agree", "top10_prev"):
            x = sums[point][k][inner].double()  # [D', blocks]
            x = x[~torch.isnan(x).any(1)]  # stability has no previous point at the first depth
            m[k] = float(x.sum() / (x.shape[0] * n)) if x.shape[0] else float("nan")
            if weights is not None and x.shape[0]:
                reps = (weights @ x.sum(0)) / (x.shape[0] * P * weights.sum(1))
                m[f"{k}_ci"] = iv.add(f"sublayers/{point}/{k}", reps)
        means[point] = m
    return {"rows": rows, "means": means}
