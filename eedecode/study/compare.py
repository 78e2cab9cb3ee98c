"""Two agreement studies of the same blocks compared measure by measure, and what joint training
cost the demo model's last layer according to the training logs shipped with the demo models.

Two studies run with the same bootstrap seed and resample count on the same blocks (equal
``blocks_hash``) draw the same blocks in every resample, so the difference of their replicates is
a paired bootstrap of the difference (:mod:`eedecode.study.bootstrap`); its interval and verdict
(``above`` / ``below`` zero, or ``not resolved``) are reported per measure.

    python -m eedecode.study.compare runs/agreement/demo-code runs/agreement/demo-plain-code
    python -m eedecode.study.compare --training-logs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .bootstrap import interval, verdict

#: The measures compared by default: the last layer's loss and accuracy (what joint training
#: costs), the oracle exit, the best gate at 95% agreement, fake confidence.
DEFAULT_KEYS = (
    "final/loss",
    "final/accuracy",
    "logit/oracle/mean_depth",
    "logit/oracle/share_before_last",
    "logit/best_gate/savings_95",
    "logit/categories/fake_confident",
    "logit/subwords/word_initial_minus_continuation",
)


def paired(a: dict, b: dict, keys=DEFAULT_KEYS) -> list[dict]:
    """Per key held by both bootstrap records ``a`` and ``b`` (``bootstrap.json``): the
    difference ``a - b`` of the replicates' means, its interval and verdict."""
    for field in ("blocks_hash", "seed", "resamples"):
        if a.get(field) != b.get(field):
            raise ValueError(
                f"bootstrap records differ in {field} ({a.get(field)!r} vs {b.get(field)!r}): "
                "only studies of the same blocks with the same resamples pair"
            )
    rows = []
    for key in keys:
        if key not in a["replicates"] or key not in b["replicates"]:
            continue
        ra = torch.tensor(a["replicates"][key], dtype=torch.float64)
        rb = torch.tensor(b["replicates"][key], dtype=torch.float64)
        d = ra - rb
        ci = interval(d, a.get("level", 0.95))
        rows.append({"measure": key, "difference": float(d.nanmean()), "ci": ci, "verdict": verdict(ci)})
    return rows


def point_values(result: dict) -> dict[str, float]:
    """The point values of :data:`DEFAULT_KEYS` in a study's ``agreement.json``."""
    res = result["lenses"]["logit"]
    out = {
        "final/loss": (result.get("final_layer") or {}).get("loss"),
        "final/accuracy": (result.get("final_layer") or {}).get("accuracy"),
        "logit/oracle/mean_depth": res["oracle"]["mean_depth"],
        "logit/oracle/share_before_last": res["oracle"]["share_before_last"],
        "logit/best_gate/savings_95": (res.get("best_gate") or {}).get("savings_95"),
        "logit/categories/fake_confident": res["categories"]["fake_confident"]["share"],
    }
    sub = (res.get("subwords") or {}).get("word_initial_minus_continuation")
    out["logit/subwords/word_initial_minus_continuation"] = sub["value"] if sub else None
    return out


def compare_runs(dir_a: str | Path, dir_b: str | Path) -> list[dict]:
    """The paired comparison of two study folders (``agreement.json`` and ``bootstrap.json``):
    point values of both and the interval of the difference. The difference reported is that of
    the point values; the interval that of the paired replicates."""
    a, b = Path(dir_a), Path(dir_b)
    rows = paired(*(json.loads((d / "bootstrap.json").read_text()) for d in (a, b)))
    pa, pb = (point_values(json.loads((d / "agreement.json").read_text())) for d in (a, b))
    for r in rows:
        r["a"], r["b"] = pa.get(r["measure"]), pb.get(r["measure"])
        if r["a"] is not None and r["b"] is not None:
            r["difference"] = r["a"] - r["b"]
    return rows


def training_cost(model_dirs: dict[str, Path] | None = None) -> dict:
    """The last layer's held-out loss (nats per token) and accuracy at the end of training, read
    from each demo model's ``training_log.json`` (``final_eval``), and joint minus plain."""
    if model_dirs is None:
        from ..model.demo import DEMO_DIR

        model_dirs = {"plain": DEMO_DIR / "plain", "joint": DEMO_DIR / "early_exit"}
    out = {}
    for name, d in model_dirs.items():
        log = json.loads((Path(d) / "training_log.json").read_text())
        ev = log["final_eval"]
        out[name] = {
            "loss": ev["loss"][-1],
            "accuracy": ev["accuracy"][-1],
            "tokens": ev["tokens"],
            "steps": log["steps"],
            "tokens_seen": log["tokens_seen"],
            "file": str(Path(d) / "training_log.json"),
        }
    if "plain" in out and "joint" in out:
        out["joint_minus_plain"] = {k: out["joint"][k] - out["plain"][k] for k in ("loss", "accuracy")}
    return out


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.4f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eedecode.study.compare", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="*", help="two study folders A B (the difference is A - B)")
    p.add_argument("--training-logs", action="store_true", help="the demo models' training-log cost")
    args = p.parse_args(argv)
    if args.training_logs:
        t = training_cost()
        print("| model | final loss (nats/token) | final accuracy | eval tokens | training steps |")
        print("|---|---:|---:|---:|---:|")
        for name in ("plain", "joint"):
            r = t[name]
            print(f"| {name} | {_fmt(r['loss'])} | {_fmt(r['accuracy'])} | {r['tokens']} | {r['steps']} |")
        d = t["joint_minus_plain"]
        print(f"| joint - plain | {d['loss']:+.4f} | {d['accuracy']:+.4f} | | |")
    if args.runs:
        if len(args.runs) != 2:
            p.error("runs: give two study folders")
        print(f"\nA = {args.runs[0]}, B = {args.runs[1]}\n")
        print("| measure | A | B | A - B [interval] | verdict |")
        print("|---|---:|---:|---:|---|")
        for r in compare_runs(*args.runs):
            ci = r["ci"]
            ci_s = "" if ci[0] is None else f" [{ci[0]:+.4f}, {ci[1]:+.4f}]"
            print(
                f"| {r['measure']} | {_fmt(r.get('a'))} | {_fmt(r.get('b'))} | {r['difference']:+.4f}{ci_s} "
                f"| {r['verdict']} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
