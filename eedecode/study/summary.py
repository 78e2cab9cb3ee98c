"""The markdown summary of an agreement study (``summary.md``; :func:`summary_markdown`) and the
interval text it uses (``x [lo, hi]``). Presentation only: every number comes from the result dict
of :func:`eedecode.study.agreement_study`."""

from __future__ import annotations

import math

from .gates import AGREEMENT_TARGETS
from .measures import CATEGORIES, GROUPS
from .sublayers import POINT_NAMES, POINTS

LAYER_COLUMNS = (
    "agreement",
    "accuracy",
    "top5_overlap",
    "kl",
    "entropy",
    "max_prob",
    "p_final",
    "copies_input",
)


def _f(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def ci_text(x, ci, digits: int = 3, scale: float = 1.0) -> str:
    """``0.452 [0.431, 0.470]``; the value alone without an interval."""
    if x is None:
        return "–"
    text = _f(x * scale, digits)
    if ci and ci[0] is not None:
        text += f" [{_f(ci[0] * scale, digits)}, {_f(ci[1] * scale, digits)}]"
    return text


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_f(c) for c in row) + " |" for row in rows]


def summary_markdown(result: dict, files: list[str]) -> str:
    m, data = result["model"], result["data"]
    lines = [
        f"# Intermediate-layer agreement: {m['name'] or m['architecture']}",
        "",
        f"{m['num_layers']} layers, hidden size {m['hidden_size']}, vocabulary {m['vocab_size']}; "
        f"{data['tokens']} predicted positions in {data['blocks']} blocks of {data['block_len']} tokens "
        f"from {', '.join(data.get('sources', [])) or 'token blocks'}.",
        "",
        _bootstrap_line(result.get("bootstrap") or {}),
        "",
        "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result["timings"].items()),
        "",
        _machine_line(result.get("machine") or {}),
        "",
    ]
    lines += _final_section(result.get("final_layer"))
    lines += claims_lines(result.get("claims"))
    for lens, res in result["lenses"].items():
        lines += _lens_section(result, lens, res)
    lines += _sublayer_section(result.get("sublayers") or {})
    lines += _speed_section(result)
    lines += _tuned_section(result.get("tuned_lens"))
    lines += ["## Files", "", ", ".join(f"`{f}`" for f in files), ""]
    return "\n".join(lines)


def _bootstrap_line(b: dict) -> str:
    if not b.get("resamples"):
        return "No intervals (no bootstrap resamples)."
    return (
        f"Intervals: {b['level']:.0%} percentile bootstrap over the {b['blocks']} blocks, "
        f"{b['resamples']} resamples, seed {b['seed']} (blocks {b['blocks_hash']})."
    )


def _machine_line(mc: dict) -> str:
    if not mc:
        return ""
    load = ", ".join(f"{x:.2f}" for x in mc["load_before"])
    after = ", ".join(f"{x:.2f}" for x in mc.get("load_after", []))
    return (
        f"Machine: {mc['platform']}, {mc['cpu_count']} cores, {mc['torch_threads']} torch thread(s), "
        f"torch {mc['torch']}; load average (1, 5, 15 min) {load} at the start, {after} at the end."
    )


def _final_section(final: dict | None) -> list[str]:
    if not final:
        return []
    return [
        "## The last layer",
        "",
        f"Loss {ci_text(final['loss'], final.get('loss_ci'))} nats per token; "
        f"accuracy {ci_text(final['accuracy'], final.get('accuracy_ci'))}.",
        "",
    ]


def _lens_section(result: dict, lens: str, res: dict) -> list[str]:
    o, L = res["oracle"], result["model"]["num_layers"]
    lines = [f"## {lens.capitalize()} lens", "", "### Agreement per layer", ""]
    cols = ["agreement", "accuracy", "kl"]
    rest = [c for c in LAYER_COLUMNS if c not in cols]
    lines += _table(
        ["depth", *cols, *rest],
        [
            [r["depth"], *(ci_text(r[c], r.get(f"{c}_ci")) for c in cols), *(r[c] for c in rest)]
            for r in res["layers"]
        ],
    )
    pct = {k: ci_text(o[k], o.get(f"{k}_ci"), 1, 100) for k in ("share_before_last", "share_10_layers_early")}
    lines += [
        "",
        "### Oracle exit",
        "",
        f"Mean oracle exit depth {ci_text(o['mean_depth'], o.get('mean_depth_ci'), 2)} of {L} "
        f"(median {_f(o['median_depth'], 1)}); {pct['share_before_last']}% of tokens reach the final "
        f"top-1 before the last layer, {pct['share_10_layers_early']}% at least 10 layers early and "
        f"{ci_text(o['share_quarter_early'], o.get('share_quarter_early_ci'), 1, 100)}% at least a "
        "quarter of the depth early.",
        "",
        "### Gates",
        "",
        "Mean exit depth needed for an agreement with the final layer, over every distinct threshold "
        "(the exact curve); at the 95% point: shares of tokens exiting exactly at / before their "
        "oracle exit, and the layers saved as a share of what the oracle saves.",
        "",
    ]
    lines += _table(*_gate_rows(res))
    best = res.get("best_gate") or {}
    if best.get("name"):
        lines += [
            "",
            f"Best gate at 95% agreement: {best['name']}, keeping "
            f"{ci_text(best['savings_95'], best.get('savings_95_ci'), 1, 100)}% of the oracle's savings.",
        ]
    c = res["categories"]
    lines += ["", f"### Confidence categories (p >= {c['prob']} at depths {c['early_depths']})", ""]
    lines += _table(
        ["category", "tokens", "share"],
        [[k, c[k]["tokens"], ci_text(c[k]["share"], c[k].get("share_ci"))] for k in CATEGORIES],
    )
    if "subwords" in res:
        lines += _subword_lines(res["subwords"])
    return [*lines, ""]


def _subword_lines(sub: dict) -> list[str]:
    lines = ["", "### Sub-words (by the final top-1 piece)", ""]
    cols = ["tokens", "share", "share_10_layers_early", "share_quarter_early"]
    lines += _table(
        ["group", "mean oracle depth", *cols],
        [
            [g, ci_text(sub[g]["mean_oracle_depth"], sub[g].get("mean_oracle_depth_ci"), 2)]
            + [sub[g][k] for k in cols]
            for g in GROUPS
        ],
    )
    d = sub.get("word_initial_minus_continuation")
    if d:
        lines += [
            "",
            f"Word-initial minus continuation: {ci_text(d['value'], d['ci'], 2)} layers ({d['verdict']}).",
        ]
    return lines


def _gate_rows(res: dict) -> tuple[list[str], list[list]]:
    header = [
        "gate",
        "points",
        *(f"depth for {t:.0%}" for t in AGREEMENT_TARGETS),
        "exact at 95%",
        "too early at 95%",
        "share of oracle savings at 95%",
    ]
    rows = []
    for name, g in res["gates"].items():
        p = g["at_agreement"]["0.95"] or {}
        cis = g.get("depth_for_agreement_ci") or {}
        depths = [ci_text(v, cis.get(t), 2) for t, v in g["depth_for_agreement"].items()]
        saved = ci_text(g["savings_95"], g.get("savings_95_ci"), 3)
        rows.append([name, g["points"], *depths, p.get("exact"), p.get("too_early"), saved])
    st = res["static"]
    static = [_f(v, 2) for v in st["depth_for_agreement"].values()]
    rows.append(
        [
            "static exit",
            len(st["curve"]),
            *static,
            None,
            None,
            ci_text(st["savings_95"], st.get("savings_95_ci")),
        ]
    )
    oracle = res["oracle"]["mean_depth"]
    rows.append(["oracle", None, *([_f(oracle, 2)] * len(AGREEMENT_TARGETS)), 1.0, 0.0, 1.0])
    return header, rows


def _sublayer_section(sub: dict) -> list[str]:
    rows, means = sub.get("rows") or [], sub.get("means") or {}
    if not rows:
        return []
    lines = [f"## Sub-layers ({rows[0]['tokens']} positions, logit lens)", ""]
    header = ["depth", *(f"{p}: agree / top-10 stable" for p in POINTS)]
    by_depth: dict[int, dict] = {}
    for r in rows:
        by_depth.setdefault(r["depth"], {})[r["point"]] = f"{_f(r['agree'], 2)} / {_f(r['top10_prev'], 2)}"
    lines += _table(header, [[d, *(v[p] for p in POINTS)] for d, v in by_depth.items()])
    if means:
        m0 = means[POINTS[0]]
        lines += [
            "",
            f"Means over the depths below the last ({m0['depths'][0]}..{m0['depths'][-1]}; stability "
            f"from the second), intervals over {m0['blocks']} blocks:",
            "",
        ]
        lines += _table(
            ["point", "agreement with the last layer", "top-10 stability"],
            [
                [
                    POINT_NAMES[p],
                    ci_text(means[p]["agree"], means[p].get("agree_ci")),
                    ci_text(means[p]["top10_prev"], means[p].get("top10_prev_ci")),
                ]
                for p in POINTS
            ],
        )
    lines += ["", "Points: " + "; ".join(f"{k}: {v}" for k, v in POINT_NAMES.items()) + ".", ""]
    return lines


def _speed_section(result: dict) -> list[str]:
    lines = ["## What it means for speed (greedy self-speculation, ideal)", ""]
    for lens, rows in result["speed"]["tables"].items():
        if not rows:
            continue
        best = max(rows, key=lambda r: r.get("ideal_speedup", r["tokens_per_round"]))
        lines += [
            f"{lens} lens, best cell: E={best['exit_layer']} k={best['draft_length']}: "
            f"{ci_text(best['tokens_per_round'], best.get('tokens_per_round_ci'), 2)} tokens per round"
            + (
                f", ideal speed-up {ci_text(best['ideal_speedup'], best.get('ideal_speedup_ci'), 2)}x"
                if "ideal_speedup" in best
                else ""
            ),
            "",
        ]
        cols = ["exit_layer", "draft_length", "agreement", "acceptance", "tokens_per_round"]
        cols += ["independent_tokens_per_round", "c", "v", "ideal_speedup"]
        lines += _table(
            cols,
            [
                [ci_text(r.get(c), r.get(f"{c}_ci")) if r.get(f"{c}_ci") else r.get(c) for c in cols]
                for r in rows
            ],
        )
        lines.append("")
    return lines


def _tuned_section(tuned: dict | None) -> list[str]:
    if not tuned:
        return []
    lines = ["## Tuned lens", ""]
    if "seconds" in tuned:
        lines += [
            f"Trained in {tuned['seconds']:.1f} s: {tuned['steps']} steps on {tuned['tokens']} positions.",
            "",
        ]
    if tuned.get("loaded_from"):
        lines += [f"Loaded from `{tuned['loaded_from']}`.", ""]
    held = tuned.get("held_out") or {}
    lines += ["Both lenses on the same held-out positions of this run:", ""]
    lines += _table(
        ["depth", "agreement, logit", "agreement, tuned", "gain", "verdict", "KL logit", "KL tuned"],
        [
            [
                r["depth"],
                r["agreement_logit"],
                r["agreement_tuned"],
                ci_text(r["gain"], r["gain_ci"]),
                r["verdict"],
                r["kl_logit"],
                r["kl_tuned"],
            ]
            for r in held.get("layers", [])
        ],
    )
    shift = held.get("oracle_mean_depth")
    if shift:
        lines += [
            "",
            f"Mean oracle exit: logit lens {_f(shift['logit'], 2)}, tuned lens {_f(shift['tuned'], 2)}; "
            f"difference {ci_text(shift['difference'], shift.get('difference_ci'), 2)} "
            f"({shift.get('verdict', 'no interval')}).",
        ]
    return [*lines, ""]


def claims_lines(claims: list[dict] | None) -> list[str]:
    """The summary's section: one row per claim with its interval and verdict."""
    if not claims:
        return []
    lines = [
        "## The early-exit paper's claims (arXiv 2412.01455)",
        "",
        "A claim holds when the whole interval lies on its side of the reference, and is not "
        "resolved when the interval straddles it.",
        "",
        "| claim | measure | value [interval] | reference | verdict |",
        "|---|---|---|---|---|",
    ]
    for c in claims:
        side = ">" if c["holds_if"] == "above" else "<"
        lines.append(
            f"| {c['statement']} | {c['measure']} | {ci_text(c['value'], c['ci'])} | {side} "
            f"{c['reference']:g} | {c['verdict']} |"
        )
    return [*lines, ""]
