"""The study's speed prediction against ``eedecode bench``, with the miss split into its causes.

The study predicts the ideal speed-up of self-speculative decoding at exit layer E with k drafts
as ``n / (k c + v)`` (:mod:`eedecode.study.speed`): n tokens per round from the teacher-forced runs
of agreement (the *acceptance model*), c and v from the step timer (the *cost model*). The bench
measures, on its own prompts, the tokens per round n', the drafts per round k' (k, or fewer where
a generation ends), the step costs c', v' and the speed-up over autoregressive decoding S. The
ratio of measured to predicted speed-up factors exactly into

    S / S_pred = (n' / n)                                 acceptance model
               x ((k c + v) / (k' c' + v'))               cost model
               x (S / (n' / (k' c' + v')))                the rest: what neither model sees

and the report gives each factor and its share of ``log(S / S_pred)``. The study's interval for
n (over its blocks) says whether the acceptance miss exceeds the study's sampling noise.

    python -m eedecode.study.speed_check runs/agreement/demo-code/agreement.json \\
        runs/bench-E2-k1/bench.json [more bench.json ...]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

FACTORS = ("acceptance_model", "cost_model", "rest")


def bench_row(record: dict) -> dict:
    """The batch-1 ``eedecode_ss`` result of a bench record (the method the study predicts)."""
    rows = [
        r
        for r in record["results"]
        if r["method"] == "eedecode_ss" and r["batch_size"] == 1 and r.get("mean_tokens_per_round")
    ]
    if not rows:
        raise ValueError("bench record: no batch-1 eedecode_ss result with tokens per round")
    return rows[0]


def study_cell(result: dict, exit_layer: int, k: int, lens: str = "logit") -> dict:
    for row in result["speed"]["tables"].get(lens, []):
        if row["exit_layer"] == exit_layer and row["draft_length"] == k:
            return row
    raise ValueError(
        f"the study has no speed cell E={exit_layer}, k={k} ({lens} lens): its exits are "
        f"{result['speed']['exit_layers']}, draft lengths {result['speed']['draft_lengths']}"
    )


def check(result: dict, record: dict, lens: str = "logit") -> dict:
    """The prediction of the study ``result`` for the cell the bench ``record`` measured, the
    measurement, and the factors of the miss (see the module docstring)."""
    b = bench_row(record)
    E, k = b["exit_layer"], b["num_speculations"]
    s = study_cell(result, E, k, lens)
    cost = record["step_costs"]
    n_b, k_b, c_b, v_b = b["mean_tokens_per_round"], b["mean_drafts_per_round"], cost["c"], cost["v"]
    bench_cost = k_b * c_b + v_b
    out = {
        "exit_layer": E,
        "draft_length": k,
        "study": {
            "tokens_per_round": s["tokens_per_round"],
            "tokens_per_round_ci": s.get("tokens_per_round_ci"),
            "acceptance": s["acceptance"],
            "acceptance_ci": s.get("acceptance_ci"),
            "c": s.get("c"),
            "v": s.get("v"),
            "ideal_speedup": s.get("ideal_speedup"),
            "ideal_speedup_ci": s.get("ideal_speedup_ci"),
        },
        "bench": {
            "tokens_per_round": n_b,
            "drafts_per_round": k_b,
            "acceptance": b.get("acceptance_rate"),
            "c": c_b,
            "v": v_b,
            "ideal_speedup": n_b / bench_cost,
            "speedup_vs_ar": b["speedup_vs_ar"],
            "prompts": record["settings"].get("num_prompts"),
            "new_tokens": b.get("new_tokens"),
        },
    }
    ci = s.get("tokens_per_round_ci") or [None, None]
    out["bench_tokens_per_round_in_study_ci"] = None if ci[0] is None else ci[0] <= n_b <= ci[1]
    if s.get("c") is None:  # the study ran without timing: only the acceptance model is checked
        out["factors"] = {"acceptance_model": n_b / s["tokens_per_round"]}
        return out
    factors = {
        "acceptance_model": n_b / s["tokens_per_round"],
        "cost_model": (k * s["c"] + s["v"]) / bench_cost,
        "rest": b["speedup_vs_ar"] / (n_b / bench_cost),
    }
    total = b["speedup_vs_ar"] / s["ideal_speedup"]
    out["miss"] = total
    out["factors"] = factors
    log_total = math.log(total)
    out["log_shares"] = {
        f: (math.log(x) / log_total if abs(log_total) > 1e-12 else None) for f, x in factors.items()
    }
    return out


def markdown(checks: list[dict]) -> str:
    """One table: per checked cell the study's prediction, the bench and the miss's factors."""
    from .summary import ci_text

    head = "| cell | source | acceptance | tokens per round | c | v | ideal speed-up | measured vs AR |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for ch in checks:
        s, b = ch["study"], ch["bench"]
        cell = f"E={ch['exit_layer']}, k={ch['draft_length']}"
        lines.append(
            f"| {cell} | study | {ci_text(s['acceptance'], s['acceptance_ci'])} | "
            f"{ci_text(s['tokens_per_round'], s['tokens_per_round_ci'])} | {_n(s['c'])} | {_n(s['v'])} | "
            f"{ci_text(s['ideal_speedup'], s['ideal_speedup_ci'])} | |"
        )
        lines.append(
            f"| | bench | {_n(b['acceptance'])} | {_n(b['tokens_per_round'])} | {_n(b['c'])} | "
            f"{_n(b['v'])} | {_n(b['ideal_speedup'])} | {_n(b['speedup_vs_ar'])} |"
        )
    lines += [
        "",
        "| cell | measured / predicted | acceptance model | cost model | rest |",
        "|---|---:|---:|---:|---:|",
    ]
    for ch in checks:
        f, sh = ch["factors"], ch.get("log_shares") or {}
        row = [
            f"{_n(f[x])}" + (f" ({sh[x]:.0%})" if sh.get(x) is not None else "") if x in f else "–"
            for x in FACTORS
        ]
        lines.append(
            f"| E={ch['exit_layer']}, k={ch['draft_length']} | {_n(ch.get('miss'))} | "
            + " | ".join(row)
            + " |"
        )
    return "\n".join(lines) + "\n"


def _n(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m eedecode.study.speed_check", description=__doc__.split("\n")[0]
    )
    p.add_argument("study", help="a study's agreement.json")
    p.add_argument(
        "bench", nargs="+", help="bench.json records of eedecode bench --methods eedecode_ar,eedecode_ss"
    )
    p.add_argument("--lens", default="logit")
    p.add_argument("--out", default=None, help="also write the checks as JSON here")
    args = p.parse_args(argv)
    result = json.loads(Path(args.study).read_text())
    checks = [check(result, json.loads(Path(f).read_text()), args.lens) for f in args.bench]
    if args.out:
        Path(args.out).write_text(json.dumps(checks, indent=1) + "\n")
    print(markdown(checks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
