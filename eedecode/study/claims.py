"""The claims of *Early Exit Is a Natural Capability in Transformer-based Models* (arXiv 2412.01455)
that one study can test, each as a measure, its bootstrap interval and a reference.

A claim ``holds`` when the whole interval lies on the claimed side of the reference, ``does not
hold`` when it lies wholly on the other side, and is ``not resolved`` when the interval straddles
the reference (or there is no interval): a point estimate alone never settles a claim. The
references are stated with each claim; where the paper gives no number ("typically", "stable")
the reference is one half, or zero for a difference. Every claim reads the logit lens (the paper
adds no output layers); comparisons across models, like the effect of joint training, are made
by :mod:`eedecode.study.compare`.
"""

from __future__ import annotations

import torch

from .bootstrap import Intervals, verdict

EARLY_LAYERS = 10  # the paper: tokens match the final output before the last ten layers


def _claim(key, statement, measure, value, ci, reference, side) -> dict:
    v = verdict(ci if ci else [None, None], reference)
    result = "not resolved" if v == "not resolved" else "holds" if v == side else "does not hold"
    return {
        "claim": key,
        "statement": statement,
        "measure": measure,
        "value": value,
        "ci": list(ci) if ci else [None, None],
        "reference": reference,
        "holds_if": side,
        "verdict": result,
    }


def paper_claims(result: dict, iv: Intervals) -> list[dict]:
    """The claims a study of one model settles (see the module docstring); ``result`` as
    :func:`eedecode.study.study_blocks` builds it, ``iv`` its intervals."""
    res, L = result["lenses"]["logit"], result["model"]["num_layers"]
    o = res["oracle"]
    out = [
        _claim(
            "natural",
            "Most tokens reach the final layer's top-1 before the last layer",
            "share of positions whose oracle exit is below the last layer",
            o["share_before_last"],
            o.get("share_before_last_ci"),
            0.5,
            "above",
        )
    ]
    if L > EARLY_LAYERS:
        key, what = "share_10_layers_early", f"at least {EARLY_LAYERS} layers before the end"
    else:
        key, what = "share_quarter_early", f"at least a quarter of the depth before the end ({L} layers)"
    out.append(
        _claim(
            "ten_layers_early",
            "Tokens typically match the final output before the last ten layers",
            f"share of positions whose oracle exit is {what}",
            o[key],
            o.get(f"{key}_ci"),
            0.5,
            "above",
        )
    )
    best = res.get("best_gate") or {}
    if best.get("name"):
        out.append(
            _claim(
                "gates_need_joint_training",
                "Gates find the exit layer poorly (the paper: without joint training)",
                f"share of the oracle's saved layers that the best gate ({best['name']}) keeps at 95% "
                "agreement",
                best["savings_95"],
                best.get("savings_95_ci"),
                0.5,
                "below",
            )
        )
    d = (res.get("subwords") or {}).get("word_initial_minus_continuation")
    if d:
        out.append(
            _claim(
                "subwords",
                "Word-initial pieces exit deeper than continuations",
                "mean oracle exit depth, word-initial minus continuation (layers)",
                d["value"],
                d["ci"],
                0.0,
                "above",
            )
        )
    out += _sublayer_claims(result.get("sublayers") or {}, iv)
    return out


def _sublayer_claims(sub: dict, iv: Intervals) -> list[dict]:
    means = sub.get("means") or {}
    out = []
    for residual, module, name in (
        ("after_attention", "attention", "attention"),
        ("after_mlp", "mlp", "MLP"),
    ):
        if residual not in means or module not in means:
            continue
        value = means[residual]["top10_prev"] - means[module]["top10_prev"]
        keys = [f"sublayers/{p}/top10_prev" for p in (residual, module)]
        ci = None
        if iv.active and all(k in iv.replicates for k in keys):
            a, b = (torch.tensor(iv.replicates[k], dtype=torch.float64) for k in keys)
            ci = iv.add(f"claims/sublayers/{residual}_minus_{module}", a - b)
        out.append(
            _claim(
                f"sublayers_{module}",
                f"The residual stream keeps a more stable top-10 than the {name} output alone",
                f"top-10 stability, residual {residual.replace('_', ' ')} minus the {name} output "
                "(mean over the depths below the last)",
                value,
                ci,
                0.0,
                "above",
            )
        )
    return out
