"""Writing an agreement study's result: ``agreement.json`` (everything), one CSV per figure or table,
the plots (:mod:`eedecode.study.plots`) and ``summary.md``. Presentation only: every number comes
from the result dict of :func:`eedecode.study.agreement_study`.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from .measures import AGREEMENT_TARGETS, CATEGORIES, GROUPS
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


def write_report(result: dict, out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write every output file into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "agreement.json").write_text(json.dumps(result, indent=1, default=_jsonable) + "\n")
    written = [out / "agreement.json"]
    for name, rows in csv_tables(result).items():
        if rows:
            written.append(_write_csv(out / f"{name}.csv", rows))
    if plots:
        from .plots import draw_all

        written += draw_all(result, out)
    (out / "summary.md").write_text(summary_markdown(result, [p.name for p in written]))
    return [*written, out / "summary.md"]


def _jsonable(x):
    if isinstance(x, tuple):
        return list(x)
    return str(x)


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def csv_tables(result: dict) -> dict[str, list[dict]]:
    """One flat table per figure: layers, oracle_exit, gates, categories, subwords, sublayers,
    speed, tuned_lens."""
    t: dict[str, list[dict]] = {
        k: [] for k in ("layers", "oracle_exit", "gates", "categories", "subwords", "speed")
    }
    for lens, res in result["lenses"].items():
        t["layers"] += [{"lens": lens, **row} for row in res["layers"]]
        t["oracle_exit"] += [{"lens": lens, **row} for row in res["oracle"]["histogram"]]
        for crit, gate in res["gates"].items():
            t["gates"] += [{"lens": lens, "criterion": crit, **p} for p in gate["curve"]]
        t["gates"] += [_static_row(lens, p) for p in res["static"]["curve"]]
        for cat in CATEGORIES:
            c = res["categories"][cat]
            t["categories"] += [
                {
                    "lens": lens,
                    "category": cat,
                    "tokens": c["tokens"],
                    "share": c["share"],
                    "depth": d,
                    "p_final": p,
                    "max_prob": m,
                }
                for d, p, m in zip(result["depths"], c["p_final"], c["max_prob"], strict=True)
            ]
        for group, row in res.get("subwords", {}).items():
            t["subwords"].append({"lens": lens, "group": group, **row})
        t["speed"] += [{"lens": lens, **row} for row in result["speed"]["tables"].get(lens, [])]
    t["sublayers"] = result.get("sublayers") or []
    t["tuned_lens"] = (result.get("tuned_lens") or {}).get("held_out") or []
    return t


def _static_row(lens: str, p: dict) -> dict:
    nan = float("nan")
    return {
        "lens": lens,
        "criterion": "static",
        "threshold": p["threshold"],
        "too_early": nan,
        "exact": nan,
        "too_late": nan,
        "agreement": p["agreement"],
        "mean_depth": p["mean_depth"],
    }


# -- markdown --------------------------------------------------------------------------------------
def _f(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


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
        "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result["timings"].items()),
        "",
    ]
    for lens, res in result["lenses"].items():
        lines += _lens_section(result, lens, res)
    lines += _sublayer_section(result.get("sublayers") or [])
    lines += _speed_section(result)
    lines += _tuned_section(result.get("tuned_lens"))
    lines += ["## Files", "", ", ".join(f"`{f}`" for f in files), ""]
    return "\n".join(lines)


def _lens_section(result: dict, lens: str, res: dict) -> list[str]:
    o, L = res["oracle"], result["model"]["num_layers"]
    lines = [f"## {lens.capitalize()} lens", "", "### Agreement per layer", ""]
    lines += _table(
        ["depth", *LAYER_COLUMNS], [[r["depth"], *(r[c] for c in LAYER_COLUMNS)] for r in res["layers"]]
    )
    lines += [
        "",
        "### Oracle exit",
        "",
        f"Mean oracle exit depth {_f(o['mean_depth'], 2)} of {L} (median {_f(o['median_depth'], 1)}); "
        f"{_f(100 * o['share_before_last'], 1)}% of tokens reach the final top-1 before the last layer, "
        f"{_f(100 * o['share_10_layers_early'], 1)}% at least 10 layers early and "
        f"{_f(100 * o['share_quarter_early'], 1)}% at least a quarter of the depth early.",
        "",
        "### Gates",
        "",
        "Mean exit depth needed for an agreement with the final layer; at the 95% point: shares of "
        "tokens exiting exactly at / before their oracle exit, and the layers saved as a share of "
        "what the oracle saves.",
        "",
    ]
    lines += _table(*_gate_rows(res, L))
    c = res["categories"]
    lines += ["", f"### Confidence categories (p >= {c['prob']} at depths {c['early_depths']})", ""]
    lines += _table(["category", "tokens", "share"], [[k, c[k]["tokens"], c[k]["share"]] for k in CATEGORIES])
    if "subwords" in res:
        lines += ["", "### Sub-words (by the final top-1 piece)", ""]
        cols = ["tokens", "share", "mean_oracle_depth", "share_10_layers_early", "share_quarter_early"]
        lines += _table(["group", *cols], [[g, *(res["subwords"][g][k] for k in cols)] for g in GROUPS])
    return [*lines, ""]


def _gate_rows(res: dict, num_layers: int) -> tuple[list[str], list[list]]:
    oracle = res["oracle"]["mean_depth"]
    header = [
        "gate",
        *(f"depth for {t:.0%}" for t in AGREEMENT_TARGETS),
        "exact at 95%",
        "too early at 95%",
        "share of oracle savings at 95%",
    ]
    rows = []
    for name, g in res["gates"].items():
        p = g["at_agreement"]["0.95"] or {}
        saved = (num_layers - p["mean_depth"]) / (num_layers - oracle) if p and num_layers > oracle else None
        rows.append([name, *g["depth_for_agreement"].values(), p.get("exact"), p.get("too_early"), saved])
    static = res["static"]["depth_for_agreement"]
    s95 = static["0.95"]
    saved = (num_layers - s95) / (num_layers - oracle) if s95 is not None and num_layers > oracle else None
    rows.append(["static exit", *static.values(), None, None, saved])
    rows.append(["oracle", *([oracle] * len(AGREEMENT_TARGETS)), 1.0, 0.0, 1.0])
    return header, rows


def _sublayer_section(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = [f"## Sub-layers ({rows[0]['tokens']} positions, logit lens)", ""]
    header = ["depth", *(f"{p}: agree / top-10 stable" for p in POINTS)]
    by_depth: dict[int, dict] = {}
    for r in rows:
        by_depth.setdefault(r["depth"], {})[r["point"]] = f"{_f(r['agree'], 2)} / {_f(r['top10_prev'], 2)}"
    lines += _table(header, [[d, *(v[p] for p in POINTS)] for d, v in by_depth.items()])
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
            f"{_f(best['tokens_per_round'], 2)} tokens per round"
            + (f", ideal speed-up {_f(best['ideal_speedup'], 2)}x" if "ideal_speedup" in best else ""),
            "",
        ]
        cols = [
            "exit_layer",
            "draft_length",
            "agreement",
            "tokens_per_round",
            "independent_tokens_per_round",
            "c",
            "v",
            "ideal_speedup",
        ]
        lines += _table(cols, [[r.get(c) for c in cols] for r in rows])
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
    cols = ["depth", "agreement_logit", "agreement_tuned", "kl_logit", "kl_tuned"]
    lines += _table(cols, [[r[c] for c in cols] for r in tuned.get("held_out", [])])
    return [*lines, ""]
