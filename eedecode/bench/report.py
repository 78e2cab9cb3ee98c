"""Reporting: derived columns, the markdown table and its legend, the sweep's heatmap, and the
machine record that goes with every result.

Beside the measured speed-up the benchmark reports the *ideal* speed-up of drafting from an exit
layer (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative
Decoding")::

    ideal = mean(n) / (mean(d) * c + v)

with n the tokens a round produces, d the drafts it makes, c the cost of one draft step and v the
cost of one verification pass, both relative to one autoregressive step of the same engine
(:func:`~eedecode.bench.steps.measure_step_costs`); *efficiency* = measured speed-up over eedecode
autoregressive / ideal. Only arithmetic on measured numbers happens here.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from ..model.costs import expected_tokens_per_round, ideal_speedup  # noqa: F401 (re-exported)
from .methods import display_name

LEGEND = """\
tokens/s: new tokens per second, the median over batches (greedy decoding, warm-up excluded).
vs HF generate: the median over batches of tokens/s / HF generate's tokens/s on the same batch
  (paired: the same batch in the same turn), over every batch of every run; in brackets the lowest
  and highest of the runs' own medians (--repeats N: N runs; "1 run" in the header: no range). HF
  generate runs on the model as given; HF generate (packed weights) is the same call on a copy
  packed in place: the layout's share of the gain.
vs eedecode AR: the same against eedecode's own autoregressive decoding (the same engine, no drafts).
TTFT: time to first token (ms), from the call to the first new token, the prompt's forward pass
  included; the median over runs (batch 1).
ms/token p50/p95/p99: per-token latency percentiles over every new token after the first of every
  run (batch 1): the time between two deliveries of tokens divided by the tokens the later one
  brought (a drafting round that yields n tokens in t ms counts n tokens of t/n ms).
acceptance: the share of drafted tokens that the full model accepted (eedecode modes that draft).
drafts/round: the mean draft length (tokens drafted per row and round, rejected ones included).
tokens/round: tokens a row gains per round: its accepted drafts plus the one the verifier adds.
exit layer: the mean layer drafts were made at (early exit: the mean depth tokens left at).
ideal: the speed-up over eedecode autoregressive that tokens/round would give at the measured step
  costs, tokens/round / (drafts/round * c + v) (c: a draft step, v: a verification; batch 1).
efficiency: the measured speed-up over eedecode autoregressive / ideal (1.00: as fast as the step
  costs predict).
identical to HF: prompts whose output equals HF generate's, token for token. A lossy mode (early
  exit) is not meant to reproduce it: its cell says "lossy" and gives the share of HF's new tokens
  it matched position by position.
MB/step, floor share (with the memory bandwidth sampled): the weights one step reads in the method's
  precision (every layer, the final norm and the LM head; llama.cpp: its GGUF file's tensors) and
  tokens/s over the bandwidth floor's tokens/s, batch x bandwidth / MB per step, the bandwidth being
  the median read rate of a matrix-vector product over a matrix four times the last-level cache
  (256 MiB at least) between the turns, at the same threads. About 100%: a step that reads its
  weights once, as fast as that product reads its matrix."""


# -- arithmetic (pure) -----------------------------------------------------------------------------
def speedup(tokens_per_s: float, baseline_tokens_per_s: float) -> float:
    return tokens_per_s / baseline_tokens_per_s if baseline_tokens_per_s > 0 else float("nan")


def derive(record: dict) -> None:
    """Add ``ideal_speedup`` and ``efficiency`` to the batch-1 results of the eedecode modes that
    draft from an exit layer (the round the step costs c and v describe)."""
    costs = record["step_costs"]
    for r in record["results"]:
        drafts_from_exit = r["method"].startswith("eedecode_") and r.get("exit_layer") is not None
        measured = r.get("mean_tokens_per_round") and r.get("speedup_vs_ar")
        if drafts_from_exit and measured and r["batch_size"] == 1:
            r["ideal_speedup"] = ideal_speedup(
                r["mean_tokens_per_round"], r["mean_drafts_per_round"], costs["c"], costs["v"]
            )
            r["efficiency"] = r["speedup_vs_ar"] / r["ideal_speedup"]


# -- the record ------------------------------------------------------------------------------------
def complete(measured: dict, model) -> dict:
    """The JSON record of a run (:func:`~eedecode.bench.measure.run_measurements` or a sweep): the machine
    first, then what was measured, with the derived columns."""
    record = {"machine": machine_record(model, next(model.parameters()).device), **measured}
    if "results" in record:
        derive(record)
    return record


def machine_record(model, device) -> dict:
    import transformers

    rec = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if torch.device(device).type == "cuda":
        rec["gpu"] = torch.cuda.get_device_name(device)
    return rec


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_line(record: dict) -> str:
    m = record["machine"]
    return (
        f"{record.get('model', 'model')} on {m.get('gpu') or m['processor']} ({m['device']}, {m['dtype']}, "
        f"torch {m['torch']}, transformers {m['transformers']}, threads: {m['torch_threads']})"
    )


# -- the table -------------------------------------------------------------------------------------
def markdown_table(record: dict) -> str:
    s = record["settings"]
    results = record["results"]
    runs = s.get("repeats", 1)
    floor = any(r.get("floor_share") is not None for r in results)
    latency = any(r.get("latency") for r in results)
    head = f"E = {s['exit_layer']} of {s['num_layers']} layers, k = {s['num_speculations']}, "
    head += f"{s['max_new_tokens']} new tokens, {s['num_prompts']} prompts; step costs: "
    head += f"c = {record['step_costs']['c']:.3f}, v = {record['step_costs']['v']:.3f}"
    head += f"; speed-ups: median (lowest–highest of {runs} runs)" if runs > 1 else "; 1 run (no range)"
    if floor:
        head += f"; memory read bandwidth {s['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s"
    one = " (1 run)" if runs == 1 else ""
    columns = ["method", "batch", "tokens/s (median)", f"vs HF generate{one}", f"vs eedecode AR{one}"]
    columns += ["TTFT ms", "ms/token p50", "p95", "p99"] if latency else []
    columns += ["acceptance", "drafts/round", "tokens/round", "exit layer", "ideal", "efficiency"]
    columns += ["identical to HF"] + (["MB/step", "floor share"] if floor else [])
    lines = [head, "", "| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    lines += [_row(r, s["num_prompts"], latency, floor) for r in results]
    lines += [f"\nskipped {name}: {why}" for name, why in record.get("skipped", {}).items()]
    return "\n".join(lines)


def _row(r: dict, num_prompts: int, latency: bool = False, floor: bool = False) -> str:
    same = r.get("identical_to_hf")
    identical = "" if same is None else f"{same}/{num_prompts}"  # blank: HF generate was not measured
    if not r.get("lossless", True):
        agreement = r.get("token_agreement_with_hf")
        parts = [identical] + ([f"{agreement:.0%} of tokens"] if agreement is not None else [])
        identical = "lossy: " + ", ".join(p for p in parts if p)
    cells = [display_name(r["method"]), str(r["batch_size"]), f"{r['tokens_per_s']:.1f}"]
    cells += [speedup_cell(r, "speedup_vs_hf"), speedup_cell(r, "speedup_vs_ar")]
    if latency:
        lat = r.get("latency") or {}
        cells += [_ms(lat.get(k)) for k in ("ttft_ms", "token_ms_p50", "token_ms_p95", "token_ms_p99")]
    cells += [
        _fmt(r.get("acceptance_rate"), "%"),
        _fmt(r.get("mean_drafts_per_round")),
        _fmt(r.get("mean_tokens_per_round")),
        "" if r.get("mean_exit_layer") is None else f"{r['mean_exit_layer']:.1f}",
        _fmt(r.get("ideal_speedup"), "x"),
        _fmt(r.get("efficiency")),
        identical,
    ]
    if floor:
        nbytes, share = r.get("weight_bytes"), r.get("floor_share")
        cells += ["" if nbytes is None else f"{nbytes / 1e6:.1f}", _fmt(share, "%")]
    return "| " + " | ".join(cells) + " |"


def speedup_cell(r: dict, key: str) -> str:
    """``1.23×``, with ``(1.20–1.27)``, the lowest and highest run, when there were several runs."""
    value, runs = r.get(key), r.get(key + "_runs") or []
    if value is None:
        return ""
    rng = f" ({min(runs):.2f}–{max(runs):.2f})" if len(runs) > 1 else ""
    return f"{value:.2f}×{rng}"


def _ms(x) -> str:
    return "" if x is None else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _fmt(x, unit: str = "") -> str:
    if x is None:
        return ""
    if unit == "%":
        return f"{x:.1%}"
    return f"{x:.2f}{'×' if unit == 'x' else ''}"


# -- the sweep -------------------------------------------------------------------------------------
def best_cells_line(sweep: dict) -> str:
    best = max(sweep["cells"], key=lambda c: c["speedup_vs_hf"])
    best_hf = max(sweep["cells"], key=lambda c: c["hf_early_exit_speedup_vs_hf"])
    return (
        f"best eedecode: E={best['exit_layer']} k={best['num_speculations']} "
        f"{best['speedup_vs_hf']:.2f}x HF generate ({best['acceptance_rate']:.0%} accepted); "
        f"best HF assistant_early_exit: E={best_hf['exit_layer']} k={best_hf['num_speculations']} "
        f"{best_hf['hf_early_exit_speedup_vs_hf']:.2f}x HF generate"
    )


def plot_sweep(sweep: dict, path: str | Path, title: str = "") -> Path:
    """Heatmaps over exit layer x draft length: eedecode's speed-up over HF generate (annotated
    with its acceptance rate) beside HF assistant_early_exit's, on one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = sweep["cells"]
    es = sorted({c["exit_layer"] for c in cells})
    ks = sorted({c["num_speculations"] for c in cells})
    panels = {
        "eedecode self-speculative": "speedup_vs_hf",
        "HF assistant_early_exit": "hf_early_exit_speedup_vs_hf",
    }
    grids = {name: torch.full((len(es), len(ks)), float("nan")) for name in panels}
    acc = torch.full((len(es), len(ks)), float("nan"))
    for c in cells:
        i, j = es.index(c["exit_layer"]), ks.index(c["num_speculations"])
        for name, key in panels.items():
            grids[name][i, j] = c[key]
        acc[i, j] = c["acceptance_rate"] or 0.0
    lo = min(float(g.nan_to_num(9).min()) for g in grids.values())
    hi = max(float(g.nan_to_num(0).max()) for g in grids.values())
    fig, axes = plt.subplots(1, 2, figsize=(2 * (1.0 * len(ks) + 1.6), 0.6 * len(es) + 2.0), sharey=True)
    for ax, (name, grid) in zip(axes, grids.items(), strict=True):
        im = ax.imshow(grid.numpy(), cmap="viridis", aspect="auto", origin="lower", vmin=lo, vmax=hi)
        ax.set_xticks(range(len(ks)), [str(k) for k in ks])
        ax.set_yticks(range(len(es)), [str(e) for e in es])
        ax.set_xlabel("draft length k")
        ax.set_title(name, fontsize=10)
        for i in range(len(es)):
            for j in range(len(ks)):
                label = f"{grid[i, j]:.2f}×" + (f"\n{acc[i, j]:.0%}" if name.startswith("eedecode") else "")
                ax.text(j, i, label, ha="center", va="center", color="w", fontsize=7)
    axes[0].set_ylabel("exit layer E")
    fig.colorbar(im, ax=list(axes), label="tokens/s vs HF generate (paired median)")
    fig.suptitle(title or "speed-up over HF generate (eedecode: with acceptance rate)", fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


# -- batch sizes -----------------------------------------------------------------------------------
def plot_batches(record: dict, path: str | Path, title: str = "") -> Path:
    """Two panels over batch size: tokens/s, one line per method; and each method's paired
    speed-up over HF generate, bars grouped by batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["batch_size"] for r in record["results"]})
    series: dict[str, dict[int, dict]] = {}
    for r in record["results"]:
        series.setdefault(r["method"], {})[r["batch_size"]] = r
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    others = [m for m in series if m != "hf"]
    width = 0.8 / max(len(others), 1)
    for method, by_size in series.items():
        xs = sorted(by_size)
        line = left.plot(xs, [by_size[b]["tokens_per_s"] for b in xs], marker="o", label=display_name(method))
        if method == "hf":
            continue
        n = others.index(method)
        for i, b in enumerate(sizes):
            sp = by_size.get(b, {}).get("speedup_vs_hf")
            if sp is not None:
                x = i - 0.4 + width * (n + 0.5)
                right.bar(x, sp, width, color=line[0].get_color())
                right.text(x, sp, f"{sp:.2f}", ha="center", va="bottom", fontsize=7)
    left.set_xscale("log", base=2)
    left.set_xticks(sizes, [str(b) for b in sizes])
    left.set_xlabel("batch size")
    left.set_ylabel("new tokens/s (median over batches)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    right.axhline(1.0, color="grey", lw=0.8)
    right.set_xticks(range(len(sizes)), [str(b) for b in sizes])
    right.set_xlabel("batch size")
    right.set_ylabel("speed-up over HF generate (paired median)")
    fig.suptitle(title or "tokens/s and speed-up over HF generate by batch size", fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
