"""Writing an agreement study's result: ``agreement.json`` (everything but the bootstrap's
replicates), ``bootstrap.json`` (the settings and every replicate, for comparing two runs), one
CSV per figure or table, the plots (:mod:`eedecode.study.plots`) and ``summary.md``.
Presentation only: every number comes from the result dict of
:func:`eedecode.study.agreement_study`. An interval is written ``[lo, hi]`` in JSON, as ``_lo``
and ``_hi`` columns in CSV, and as ``x [lo, hi]`` in the summary.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .measures import CATEGORIES, GROUPS
from .summary import summary_markdown


def write_report(result: dict, out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write every output file into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    boot = result.get("bootstrap") or {}
    light = {**result, "bootstrap": {k: v for k, v in boot.items() if k != "replicates"}}
    (out / "agreement.json").write_text(json.dumps(light, indent=1, default=_jsonable) + "\n")
    written = [out / "agreement.json"]
    if boot.get("replicates"):
        (out / "bootstrap.json").write_text(json.dumps(boot, separators=(",", ":")) + "\n")
        written.append(out / "bootstrap.json")
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


def _flat(row: dict) -> dict:
    """``key_ci: [lo, hi]`` -> ``key_lo``, ``key_hi``; other lists and dicts as JSON text."""
    out = {}
    for k, v in row.items():
        if k.endswith("_ci") and isinstance(v, list):
            out[f"{k[:-3]}_lo"], out[f"{k[:-3]}_hi"] = v
        elif isinstance(v, (list, dict)):
            out[k] = json.dumps(v)
        else:
            out[k] = v
    return out


def _write_csv(path: Path, rows: list[dict]) -> Path:
    rows = [_flat(r) for r in rows]
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
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
        t["gates"] += [{"lens": lens, "criterion": "static", **p} for p in res["static"]["curve"]]
        for cat in CATEGORIES:
            c = res["categories"][cat]
            t["categories"] += [
                {"lens": lens, "category": cat, "tokens": c["tokens"], "share": c["share"]}
                | {"depth": d, "p_final": p, "max_prob": m}
                for d, p, m in zip(result["depths"], c["p_final"], c["max_prob"], strict=True)
            ]
        for group in GROUPS:
            if group in res.get("subwords", {}):
                t["subwords"].append({"lens": lens, "group": group, **res["subwords"][group]})
        t["speed"] += [{"lens": lens, **row} for row in result["speed"]["tables"].get(lens, [])]
    t["sublayers"] = (result.get("sublayers") or {}).get("rows") or []
    t["tuned_lens"] = ((result.get("tuned_lens") or {}).get("held_out") or {}).get("layers") or []
    return t
