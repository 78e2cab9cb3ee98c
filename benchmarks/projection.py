"""What self-speculation would give at a real checkpoint's size, from costs measured here and the
acceptance rates LayerSkip published for its checkpoints.

A synthetic model of a real architecture's shape (random weights: :mod:`eedecode.model.synthetic`)
is timed with eedecode's own pieces: one plain step, one draft step from exit layer E, and one
verification of k drafts for several k (:func:`eedecode.drafting.step_costs.measure_step_costs`,
the steps taking turns). Random weights cost what trained ones cost; only acceptance needs a
trained model. For each published acceptance rate the script then gives the speed-up over
eedecode's autoregressive decoding that the cost model predicts (``expected tokens per round /
(k·c + v_k)``, i.i.d. acceptance) at the checkpoint's own k and at the best k, with the exit layer
at the same depth fraction as the checkpoint's.

    python benchmarks/projection.py --shape llama-3.2-1b --out runs/projection/costs-1b.json

The published rates are from the LayerSkip repository's README (facebookresearch/LayerSkip,
Llama2-7B continually pretrained with the LayerSkip recipe, 32 layers; a 1.5B model pretrained
from scratch, in the README's revision 02075d0), measured on GPUs. Acceptance there is the share
of drafted tokens accepted with k drafts a round, as in eedecode's bench; at the checkpoint's own
k a round then yields ``1 + share·k`` tokens, and for other k the script solves for the i.i.d.
per-draft acceptance α that gives that share.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from eedecode.drafting.step_costs import measure_step_costs
from eedecode.kernels.cpu_matmul import onednn_from_text
from eedecode.model.costs import expected_tokens_per_round, ideal_speedup
from eedecode.model.memory import memory_of
from eedecode.model.synthetic import SHAPES, synthetic_model

#: (checkpoint and task, share of drafted tokens accepted, exit layer, layers, k), from the README of
#: facebookresearch/LayerSkip (the 1.5B model's row from its revision 02075d0).
PUBLISHED = (
    ("Llama2-7B continual, CNN/DM summarization, greedy", 0.795, 8, 32, 6),
    ("Llama2-7B continual, CNN/DM language modelling, greedy", 0.627, 8, 32, 6),
    ("Llama2-7B continual, HumanEval, sampled", 0.555, 10, 32, 6),
    ("Llama2-7B continual, CNN/DM language modelling, sampled", 0.432, 8, 32, 6),
    ("Llama2-7B continual, XSUM 3-shot summarization, greedy", 0.439, 8, 32, 12),
    ("Llama2-1.5B from scratch, CNN/DM summarization, greedy", 0.019, 8, 24, 12),
)
DRAFT_LENGTHS = (1, 2, 3, 4, 6, 8, 12)


def measure(shape: str, dtype: torch.dtype, exit_layers: list[int], reps: int, prompt_len: int) -> dict:
    """Step costs of the shape: per exit layer, ``c`` and ``v`` for every k in DRAFT_LENGTHS."""
    t0 = time.perf_counter()
    model = synthetic_model(shape, dtype=dtype)
    built = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, model.config.vocab_size, (1, prompt_len), generator=g)
    costs = {}
    for E in exit_layers:
        rows = {}
        for k in DRAFT_LENGTHS:
            r = measure_step_costs(model, prompt, E, k, reps=reps)
            rows[k] = r
            print(
                f"[projection] {shape} E={E} k={k}: step {1e3 * r['ar_step_s']:.0f} ms, "
                f"c = {r['c']:.3f}, v = {r['v']:.3f}",
                flush=True,
            )
        costs[E] = {
            "ar_step_ms": 1e3 * statistics.median(r["ar_step_s"] for r in rows.values()),
            "c": statistics.median(r["c"] for r in rows.values()),
            "v": {k: r["v"] for k, r in rows.items()},
        }
    params = sum(p.numel() for p in model.parameters())
    onednn = memory_of(model).onednn_from_rows.get(torch.get_num_threads())  # measured threshold
    return {
        "shape": shape,
        "dtype": str(dtype),
        "parameters": params,
        "build_s": built,
        "costs": costs,
        "onednn_from_rows": "not measured" if onednn is None else onednn_from_text(onednn),
    }


def predict(alpha: float, k: int, c: float, v: dict) -> float:
    """The cost model's speed-up over autoregressive decoding at i.i.d. acceptance ``alpha`` (the
    probability that a draft is accepted given the ones before it were) and k drafts (k = 0: no
    drafting, 1.0)."""
    if k == 0:
        return 1.0
    return ideal_speedup(expected_tokens_per_round(alpha, k), k, c, v[k])


def alpha_from_share(share: float, k: int) -> float:
    """The i.i.d. acceptance α at which the share of drafted tokens accepted (what LayerSkip and
    eedecode's bench report) is ``share`` with k drafts a round: mean accepted drafts per round
    ``α(1 − α^k)/(1 − α)`` = ``share·k``. (Bisection; the share grows with α.)"""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if (expected_tokens_per_round(mid, k) - 1) / k < share:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def predict_at_published(share: float, k: int, c: float, v: dict) -> float:
    """At the checkpoint's own k, the mean tokens a round needs no model: ``1 + share·k``."""
    return ideal_speedup(1 + share * k, k, c, v[k])


def projection_table(record: dict) -> str:
    L = SHAPES[record["shape"]]["num_hidden_layers"]
    lines = [
        f"{record['shape']} ({record['parameters'] / 1e9:.2f}B parameters, {record['dtype']}, "
        f"{L} layers), step costs measured here; "
        f"oneDNN from rows: {record.get('onednn_from_rows', 'not recorded')}",
        "",
        "| exit layer | plain step ms | c (draft step) | "
        + " | ".join(f"v, k={k}" for k in DRAFT_LENGTHS)
        + " |",
        "|---:|---:|---:|" + "---:|" * len(DRAFT_LENGTHS),
    ]
    for E, cost in record["costs"].items():
        vs = " | ".join(f"{cost['v'][k]:.2f}" for k in DRAFT_LENGTHS)
        lines.append(f"| {E} | {cost['ar_step_ms']:.0f} | {cost['c']:.3f} | {vs} |")
    lines += [
        "",
        "| published checkpoint and task | drafts accepted | its E / L, k | α (i.i.d.) | E here | "
        "predicted vs eedecode AR at its k | best k (0: do not draft) | predicted at the best k |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, share, e, layers, k in PUBLISHED:
        E = nearest_exit(record, e / layers * L)
        c, v = record["costs"][E]["c"], record["costs"][E]["v"]
        alpha = alpha_from_share(share, k)
        at_k = predict_at_published(share, k, c, v)
        best = max((0, *DRAFT_LENGTHS), key=lambda j: predict(alpha, j, c, v))
        lines.append(
            f"| {name} | {share:.3f} | {e} / {layers}, {k} | {alpha:.3f} | {E} | {at_k:.2f}× | {best} "
            f"| {predict(alpha, best, c, v):.2f}× |"
        )
    return "\n".join(lines)


def nearest_exit(record: dict, depth: float) -> int:
    return min(record["costs"], key=lambda E: (abs(E - depth), E))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llama-3.2-1b", choices=sorted(SHAPES), help="synthetic shape")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--exit-layers", default=None, help="comma-separated (default: L/4 and L/3)")
    p.add_argument("--reps", type=int, default=8, help="timed turns of each step per k (default 8)")
    p.add_argument("--prompt-len", type=int, default=128, help="tokens in the cache (default 128)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default=None, help="write the record (JSON) here")
    p.add_argument("--table", default=None, metavar="RECORD", help="print the tables of a stored record")
    args = p.parse_args(argv)
    if args.table:
        record = json.loads(Path(args.table).read_text())
        record["costs"] = {
            int(E): {**cost, "v": {int(k): x for k, x in cost["v"].items()}}
            for E, cost in record["costs"].items()
        }
        print(projection_table(record))
        return 0
    torch.set_num_threads(args.threads)
    L = SHAPES[args.shape]["num_hidden_layers"]
    if args.exit_layers:
        try:
            exits = sorted({int(x) for x in args.exit_layers.split(",")})
        except ValueError:
            p.error(f"--exit-layers: comma-separated integers in [1, {L - 1}], got {args.exit_layers!r}")
        if not all(1 <= E < L for E in exits):
            p.error(f"--exit-layers: each must be in [1, {L - 1}] for {args.shape}, got {args.exit_layers!r}")
    else:
        exits = sorted({max(1, L // 4), max(1, L // 3)})
    record = measure(args.shape, getattr(torch, args.dtype), exits, args.reps, args.prompt_len)
    record |= {"threads": args.threads, "published": PUBLISHED}
    print()
    print(projection_table(record))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1, default=str) + "\n")
        print(f"\nrecord: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
