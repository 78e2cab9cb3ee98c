"""Tokens-per-second benchmark: HF ``generate``, HF ``assistant_early_exit``, eedecode autoregressive
and eedecode self-speculative, on one model and a prompt set.

Per method, after a warm-up, every prompt is decoded greedily and timed (clocks read after a device
synchronisation); tokens/s is the median over prompts. Beside the measured speed-up the benchmark
reports the *ideal* speed-up of self-speculation (DESIGN.md; Leviathan et al. 2023)::

    ideal = mean(n) / (mean(d) * c + v)

with n the tokens a round produces, d the drafts it makes, c the cost of one draft step and v the
cost of one verification pass, both measured relative to one autoregressive step of the same
engine; *efficiency* = measured speed-up over eedecode autoregressive / ideal. A sweep over exit
layers x draft lengths draws a heatmap. Results: a markdown table and a JSON record with the
machine, versions and settings. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .decoding import TokenChooser
from .generation import generate
from .runner import ModelRunner
from .sampling import SamplingParams
from .strategies.self_speculative import SelfSpeculativeOptions

METHODS = ("hf", "hf_early_exit", "eedecode_ar", "eedecode_ss")
METHOD_NAMES = {
    "hf": "HF generate",
    "hf_early_exit": "HF assistant_early_exit",
    "eedecode_ar": "eedecode autoregressive",
    "eedecode_ss": "eedecode self-speculative",
}
DEFAULT_PROMPTS = Path(__file__).resolve().parent / "data" / "prompts.jsonl"


# -- bookkeeping (pure, unit-tested) ---------------------------------------------------------------
def speedup(tokens_per_s: float, baseline_tokens_per_s: float) -> float:
    return tokens_per_s / baseline_tokens_per_s if baseline_tokens_per_s > 0 else float("nan")


def ideal_speedup(
    mean_tokens_per_round: float, mean_drafts_per_round: float, draft_cost: float, verify_cost: float
) -> float:
    """``mean(n) / (mean(d)·c + v)``: tokens per round over the round's cost in autoregressive steps."""
    return mean_tokens_per_round / (mean_drafts_per_round * draft_cost + verify_cost)


def expected_tokens_per_round(acceptance: float, k: int) -> float:
    """Mean tokens per round for i.i.d. acceptance α and k drafts: (1 − α^(k+1)) / (1 − α)."""
    if acceptance >= 1.0:
        return k + 1.0
    return (1 - acceptance ** (k + 1)) / (1 - acceptance)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# -- data ------------------------------------------------------------------------------------------
def load_prompts(path: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """Prompts from a JSONL file (one ``{"prompt": ...}`` per line); default: the shipped set."""
    path = Path(path) if path else DEFAULT_PROMPTS
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):
        if "prompt" not in row:
            raise ValueError(f"prompts: line {i + 1} of {path} has no 'prompt' field")
    return rows[:limit] if limit else rows


def encode_prompts(
    tokenizer, prompts: list[dict], vocab_size: int, device, seed: int = 0
) -> list[torch.Tensor]:
    """Token ids per prompt; without a tokenizer (synthetic models) random ids of similar lengths."""
    if tokenizer is not None:
        return [tokenizer(p["prompt"], return_tensors="pt").input_ids.to(device) for p in prompts]
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(3, vocab_size, (1, 32 + 8 * (i % 8)), generator=g).to(device)
        for i in range(len(prompts))
    ]


# -- measurement -----------------------------------------------------------------------------------
_clock = time.perf_counter  # the benchmark's clock (tests replace it)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@dataclass
class MethodResult:
    method: str
    batch_size: int
    exit_layer: int | None
    num_speculations: int | None
    tokens_per_s: float  # median over prompts (batches)
    tokens_per_s_all: list[float]
    new_tokens: int
    identical_to_hf: int | None = None  # prompts whose greedy output equals HF generate's
    speedup_vs_hf: float | None = None  # median of paired per-batch ratios
    speedup_vs_ar: float | None = None
    acceptance_rate: float | None = None
    mean_tokens_per_round: float | None = None
    mean_drafts_per_round: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Speculation:
    """The speculation settings a benchmark run gives both early-exit methods."""

    exit_layer: int | None = None
    num_speculations: int | None = None
    confidence_threshold: float | None = None  # eedecode's draft_confidence_threshold, HF's assistant_...


def _run_method(model, method, ids, attention_mask, max_new, spec: Speculation, eos):
    common = dict(attention_mask=attention_mask, max_new_tokens=max_new, do_sample=False)
    if method == "hf":
        return model.generate(ids, **common, pad_token_id=_pad(model, eos)), None
    if method == "hf_early_exit":
        extra = {}
        if spec.confidence_threshold is not None:
            extra["assistant_confidence_threshold"] = spec.confidence_threshold
        return model.generate(
            ids,
            **common,
            **extra,
            pad_token_id=_pad(model, eos),
            assistant_early_exit=spec.exit_layer,
            num_assistant_tokens=spec.num_speculations,
            num_assistant_tokens_schedule="constant",
        ), None
    if method == "eedecode_ar":
        out = generate(model, ids, **common, mode="autoregressive", return_dict_in_generate=True)
        return out.sequences, out.stats
    out = generate(
        model,
        ids,
        **common,
        mode="self_speculative",
        exit_layer=spec.exit_layer,
        num_speculations=spec.num_speculations,
        draft_confidence_threshold=spec.confidence_threshold,
        return_dict_in_generate=True,
    )
    return out.sequences, out.stats


def _pad(model, eos):
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    return pad


def _batches(prompt_ids: list[torch.Tensor], batch_size: int, pad_id: int):
    """Left-padded batches of ``batch_size`` prompts (the last one may be smaller)."""
    for i in range(0, len(prompt_ids), batch_size):
        group = prompt_ids[i : i + batch_size]
        P = max(p.shape[1] for p in group)
        ids = torch.full((len(group), P), pad_id, dtype=torch.long, device=group[0].device)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(group):
            ids[r, P - p.shape[1] :] = p[0]
            mask[r, P - p.shape[1] :] = 1
        yield ids, (mask if batch_size > 1 else None)


def time_methods(
    model,
    methods,
    prompt_ids,
    *,
    batch_size=1,
    max_new_tokens=64,
    spec: Speculation = Speculation(),
    warmup=1,
    repeats=1,
    progress=None,
) -> dict[str, MethodResult]:
    """Decode every prompt (in batches of ``batch_size``) with every method, ``repeats`` times.

    The methods take turns on each batch (in an order that rotates), so that a drift of the
    machine's speed touches them alike; every speed-up is the median of *paired* ratios (one
    method against another on the same batch, in the same turn). ``identical_to_hf`` counts the
    rows whose greedy output equals HF generate's, when ``"hf"`` is among the methods."""
    eos = model.generation_config.eos_token_id
    pad = _pad(model, eos)
    pad = 0 if pad is None else pad
    batches = list(_batches(prompt_ids, batch_size, pad))
    for ids, mask in batches[:warmup]:
        for m in methods:
            _run_method(model, m, ids, mask, max_new_tokens, spec, eos)
    rates = {m: [] for m in methods}  # one entry per (repeat, batch), aligned across methods
    stats = {m: [] for m in methods}
    outputs = {m: [] for m in methods}  # of the first repeat
    new_tokens = dict.fromkeys(methods, 0)
    turn = 0
    for rep in range(repeats):
        for ids, mask in batches:
            order = methods[turn % len(methods) :] + methods[: turn % len(methods)]
            turn += 1
            for m in order:
                _sync(ids.device)
                t0 = _clock()
                seq, st = _run_method(model, m, ids, mask, max_new_tokens, spec, eos)
                _sync(ids.device)
                dt = _clock() - t0
                new = _count_new(seq, ids.shape[1], eos, pad)
                rates[m].append(new / dt)
                new_tokens[m] += new
                if rep == 0:
                    outputs[m].append(seq)
                    if st is not None:
                        stats[m].append(st)
                if progress is not None:
                    progress.update(1)
    results = {}
    for m in methods:
        r = MethodResult(
            method=m,
            batch_size=batch_size,
            exit_layer=spec.exit_layer if m in ("hf_early_exit", "eedecode_ss") else None,
            num_speculations=spec.num_speculations if m in ("hf_early_exit", "eedecode_ss") else None,
            tokens_per_s=median(rates[m]),
            tokens_per_s_all=rates[m],
            new_tokens=new_tokens[m] // repeats,
        )
        for base, key in (("hf", "speedup_vs_hf"), ("eedecode_ar", "speedup_vs_ar")):
            if base in rates:
                setattr(r, key, median([a / b for a, b in zip(rates[m], rates[base], strict=True)]))
        if m == "eedecode_ss" and stats[m]:
            drafted = sum(st.drafted_tokens for st in stats[m])
            accepted = sum(st.accepted_tokens for st in stats[m])
            row_rounds = sum(st.row_rounds for st in stats[m])
            r.acceptance_rate = accepted / drafted if drafted else 0.0
            r.mean_tokens_per_round = (accepted + row_rounds) / row_rounds
            r.mean_drafts_per_round = drafted / row_rounds
        if "hf" in outputs:
            pairs = zip(outputs[m], outputs["hf"], strict=True)
            r.identical_to_hf = sum(_identical_rows(a, b) for a, b in pairs)
        results[m] = r
    return results


def _count_new(seq: torch.Tensor, prompt_len: int, eos, pad) -> int:
    """New tokens per row up to and including its first EOS (rows are padded after it)."""
    new = seq[:, prompt_len:]
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    total = 0
    for row in new.tolist():
        n = len(row)
        for i, t in enumerate(row):
            if t in eos_ids:
                n = i + 1
                break
        total += n
    return total


def _identical_rows(a: torch.Tensor, b: torch.Tensor) -> int:
    """Rows of two output batches that are equal (none when the batches differ in width)."""
    if a.shape != b.shape:
        return 0
    return int((a.cpu() == b.cpu()).all(1).sum())


@torch.no_grad()
def measure_step_costs(
    model, prompt: torch.Tensor, exit_layer: int, num_speculations: int, reps: int = 60
) -> dict:
    """Median wall time of one autoregressive step, one draft step and one verification pass of
    ``num_speculations`` drafts, built from the engine's own pieces at the prompt's length; ``c``
    and ``v`` are the latter two relative to the first. The three are timed in turn, round after
    round, so that drifts of the machine's speed touch them alike."""
    runner = ModelRunner(model)
    chooser = TokenChooser(SamplingParams())
    L, E, k = runner.num_layers, exit_layer, num_speculations
    P = prompt.shape[1]
    cache = runner.new_cache(1, P + k + 4)
    runner.prefill(prompt, cache)
    base = torch.full((1,), P, dtype=torch.long, device=cache.device)
    token = prompt[:, -1:]
    drafts = prompt[:, -k:] if k <= P else prompt[:, :1].repeat(1, k)
    # exit states of real tokens stand in for the drafts' (what verification reads)
    draft_states = runner.run_layers(runner.embed(drafts), 0, E, runner.new_cache(1, k))

    def ar_step():
        h = runner.run_layers(runner.embed(token), 0, L, cache)
        chooser.choose(runner.logits(h[:, 0])).tolist()  # plain decoding reads every token

    def draft_step():
        h = runner.run_layers(runner.embed(token), 0, E, cache)
        chooser.draft(runner, h[:, 0])  # no sync: drafting runs ahead of the host

    def verify():
        cache.advance(0, E, k)  # the drafts' shallow KV is in the cache when verification runs
        states = torch.cat([draft_states, runner.run_layers(runner.embed(token), 0, E, cache)], 1)
        out = runner.run_layers(states, E, L, cache)
        tokens, n = chooser.accept(runner, drafts, states[:, :k], [], runner.logits(out))
        torch.cat([tokens, n[:, None]], 1).tolist()

    steps = {"ar_step": ar_step, "draft_step": draft_step, "verify": verify}
    samples = {name: [] for name in steps}
    for i in range(reps + 3):
        for name, fn in steps.items():
            cache.rollback(base, P, uniform=True)
            _sync(cache.device)
            t0 = time.perf_counter()
            fn()
            _sync(cache.device)
            if i >= 3:
                samples[name].append(time.perf_counter() - t0)
    times = {name: median(xs) for name, xs in samples.items()}
    return {
        **{f"{name}_s": t for name, t in times.items()},
        "c": times["draft_step"] / times["ar_step"],
        "v": times["verify"] / times["ar_step"],
    }


# -- the whole benchmark ---------------------------------------------------------------------------
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


def run_benchmark(
    model,
    tokenizer,
    prompts: list[dict],
    *,
    methods=METHODS,
    spec: Speculation,
    max_new_tokens: int = 64,
    batch_sizes=(1,),
    warmup: int = 1,
    repeats: int = 1,
    show_progress: bool = True,
) -> dict:
    """Every method at batch size 1 (HF's assisted generation supports no more) and the others at
    the other batch sizes, interleaved (:func:`time_methods`). Returns the JSON-able record."""
    from tqdm.auto import tqdm

    SelfSpeculativeOptions(
        exit_layer=spec.exit_layer,
        num_speculations=spec.num_speculations,
        draft_confidence_threshold=spec.confidence_threshold,
    ).validate(model.config.num_hidden_layers)
    device = next(model.parameters()).device
    prompt_ids = encode_prompts(tokenizer, prompts, model.config.vocab_size, device)
    plan = {1: list(methods)}
    for b in batch_sizes:  # HF's assisted generation runs batch size 1 only
        if b != 1:
            plan[b] = [m for m in methods if m != "hf_early_exit"]
    total = repeats * sum(len(ms) * -(-len(prompt_ids) // b) for b, ms in plan.items())
    results = []
    with tqdm(total=total, desc="bench", disable=not show_progress, leave=False) as bar:
        for b, ms in plan.items():
            bar.set_postfix_str(f"batch {b}")
            res = time_methods(
                model, ms, prompt_ids, batch_size=b, max_new_tokens=max_new_tokens, spec=spec, warmup=warmup,
                repeats=repeats, progress=bar,
            )  # fmt: skip
            results += list(res.values())
    costs = measure_step_costs(model, prompt_ids[0], spec.exit_layer, spec.num_speculations)
    record = {
        "machine": machine_record(model, device),
        "settings": {
            "exit_layer": spec.exit_layer,
            "num_speculations": spec.num_speculations,
            "draft_confidence_threshold": spec.confidence_threshold,
            "max_new_tokens": max_new_tokens,
            "num_prompts": len(prompt_ids),
            "batch_sizes": list(batch_sizes),
            "warmup": warmup,
            "repeats": repeats,
            "num_layers": model.config.num_hidden_layers,
        },
        "step_costs": costs,
        "results": [asdict(r) for r in results],
    }
    _derive(record)
    return record


def _derive(record: dict) -> None:
    """Ideal speed-up of self-speculation from the measured acceptance and step costs, and the
    efficiency: the measured (paired) speed-up over eedecode autoregressive / the ideal."""
    costs = record["step_costs"]
    for r in record["results"]:
        if r["method"] == "eedecode_ss" and r["batch_size"] == 1 and r.get("speedup_vs_ar"):
            r["ideal_speedup"] = ideal_speedup(
                r["mean_tokens_per_round"], r["mean_drafts_per_round"], costs["c"], costs["v"]
            )
            r["efficiency"] = r["speedup_vs_ar"] / r["ideal_speedup"]


def markdown_table(record: dict) -> str:
    s = record["settings"]
    lines = [
        f"E = {s['exit_layer']} of {s['num_layers']} layers, k = {s['num_speculations']}, "
        f"{s['max_new_tokens']} new tokens, {s['num_prompts']} prompts; step costs: "
        f"c = {record['step_costs']['c']:.3f}, v = {record['step_costs']['v']:.3f}",
        "",
        "| method | batch | tokens/s (median) | vs HF generate | acceptance | tokens/round | ideal "
        "| efficiency | identical to HF |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in record["results"]:
        lines.append(
            f"| {METHOD_NAMES[r['method']]} | {r['batch_size']} | {r['tokens_per_s']:.1f} | "
            f"{_fmt(r.get('speedup_vs_hf'), 'x')} | {_fmt(r.get('acceptance_rate'), '%')} | "
            f"{_fmt(r.get('mean_tokens_per_round'))} | {_fmt(r.get('ideal_speedup'), 'x')} | "
            f"{_fmt(r.get('efficiency'))} | "
            f"{'' if r.get('identical_to_hf') is None else r['identical_to_hf']}/{s['num_prompts']} |"
        )
    return "\n".join(lines)


def _fmt(x, unit: str = "") -> str:
    if x is None:
        return ""
    if unit == "%":
        return f"{x:.1%}"
    return f"{x:.2f}{'×' if unit == 'x' else ''}"


# -- sweep -----------------------------------------------------------------------------------------
def run_sweep(
    model,
    tokenizer,
    prompts,
    *,
    exit_layers,
    draft_lengths,
    confidence_threshold=None,
    max_new_tokens=64,
    warmup=1,
    repeats=1,
    show_progress=True,
) -> dict:
    """eedecode self-speculative and HF assistant_early_exit over exit layers x draft lengths at
    batch size 1. In every cell the four methods take turns on each prompt, so each cell's
    speed-ups over HF generate and eedecode autoregressive are paired measurements."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    prompt_ids = encode_prompts(tokenizer, prompts, model.config.vocab_size, device)
    grid = [(e, k) for e in exit_layers for k in draft_lengths]
    cells = []
    for e, k in tqdm(grid, desc="sweep", disable=not show_progress, leave=False):
        res = time_methods(
            model, list(METHODS), prompt_ids, max_new_tokens=max_new_tokens,
            spec=Speculation(e, k, confidence_threshold), warmup=warmup, repeats=repeats,
        )  # fmt: skip
        ss, hfe, ar = res["eedecode_ss"], res["hf_early_exit"], res["eedecode_ar"]
        cells.append(
            {
                "exit_layer": e,
                "num_speculations": k,
                "eedecode_ss_tokens_per_s": ss.tokens_per_s,
                "hf_early_exit_tokens_per_s": hfe.tokens_per_s,
                "hf_tokens_per_s": res["hf"].tokens_per_s,
                "eedecode_ar_tokens_per_s": ar.tokens_per_s,
                "acceptance_rate": ss.acceptance_rate,
                "mean_tokens_per_round": ss.mean_tokens_per_round,
                "speedup_vs_hf": ss.speedup_vs_hf,
                "speedup_vs_ar": ss.speedup_vs_ar,
                "hf_early_exit_speedup_vs_hf": hfe.speedup_vs_hf,
                "eedecode_ar_speedup_vs_hf": ar.speedup_vs_hf,
                "identical_to_hf": min(ss.identical_to_hf, hfe.identical_to_hf, ar.identical_to_hf),
            }
        )
    return {
        "machine": machine_record(model, device),
        "cells": cells,
        "settings": {
            "max_new_tokens": max_new_tokens,
            "num_prompts": len(prompt_ids),
            "repeats": repeats,
            "draft_confidence_threshold": confidence_threshold,
        },
    }


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


# -- CLI -------------------------------------------------------------------------------------------
def add_subcommand(subparsers) -> None:
    from .arguments import add_model_arguments

    p = subparsers.add_parser("bench", help="tokens/s of HF generate, HF assistant_early_exit and eedecode")
    add_model_arguments(p)
    add_arguments(p)
    p.set_defaults(func=run_cli)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", default=None, help="JSONL prompt file (default: the shipped held-out set)")
    p.add_argument("--num-prompts", type=int, default=None)
    p.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}"
    )
    p.add_argument("--exit-layer", type=int, default=None)
    p.add_argument("--num-speculations", type=int, default=None)
    p.add_argument(
        "--draft-confidence-threshold",
        type=float,
        default=None,
        help="stop drafting below this draft probability (HF: assistant_confidence_threshold)",
    )
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-sizes", default="1", help="comma-separated, e.g. 1,4,16")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="decode every prompt this many times per method")
    p.add_argument(
        "--sweep", action="store_true", help="sweep exit layers x draft lengths and draw a heatmap"
    )
    p.add_argument("--sweep-exit-layers", default=None, help="comma-separated (default: 1..L-1)")
    p.add_argument("--sweep-draft-lengths", default="1,2,3,4,6,8")
    p.add_argument(
        "--synthetic-agreement",
        type=float,
        default=None,
        help="for --model synthetic:<shape>: the exit layer's target agreement with the last layer",
    )
    p.add_argument("--output", default="runs/bench", help="directory for the JSON record, table and heatmap")
    p.add_argument("--no-progress", action="store_true")


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def run_cli(args) -> int:
    from .loading import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, path, rec = load_model(
        args.model,
        args.device,
        args.dtype,
        synthetic_agreement=args.synthetic_agreement,
        synthetic_exit_layer=args.exit_layer,
    )
    L = model.config.num_hidden_layers
    exit_layer = args.exit_layer or rec.get("exit_layer") or max(1, L // 4)
    k = args.num_speculations or rec.get("num_speculations") or 4
    threshold = args.draft_confidence_threshold
    if threshold is None:
        threshold = rec.get("draft_confidence_threshold")
    prompts = load_prompts(args.prompts, args.num_prompts)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    methods = tuple(m for m in args.methods.split(",") if m)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"--methods: unknown {bad}; choose from {', '.join(METHODS)}")
    if args.sweep:
        exits = _ints(args.sweep_exit_layers) if args.sweep_exit_layers else list(range(1, L))
        sweep = run_sweep(
            model,
            tokenizer,
            prompts,
            exit_layers=exits,
            draft_lengths=_ints(args.sweep_draft_lengths),
            confidence_threshold=threshold,
            max_new_tokens=args.max_new_tokens,
            warmup=args.warmup,
            repeats=args.repeats,
            show_progress=not args.no_progress,
        )
        sweep["model"] = path
        (out / "sweep.json").write_text(json.dumps(sweep, indent=1))
        png = plot_sweep(
            sweep, out / "sweep.png", title=f"{Path(path).name}: speed-up over HF generate (acceptance)"
        )
        best = max(sweep["cells"], key=lambda c: c["speedup_vs_hf"])
        best_hf = max(sweep["cells"], key=lambda c: c["hf_early_exit_speedup_vs_hf"])
        print(
            f"best eedecode: E={best['exit_layer']} k={best['num_speculations']} "
            f"{best['speedup_vs_hf']:.2f}x HF generate ({best['acceptance_rate']:.0%} accepted); "
            f"best HF assistant_early_exit: E={best_hf['exit_layer']} k={best_hf['num_speculations']} "
            f"{best_hf['hf_early_exit_speedup_vs_hf']:.2f}x HF generate; heatmap: {png}"
        )
        return 0
    record = run_benchmark(
        model,
        tokenizer,
        prompts,
        methods=methods,
        spec=Speculation(exit_layer, k, threshold),
        max_new_tokens=args.max_new_tokens,
        batch_sizes=tuple(_ints(args.batch_sizes)),
        warmup=args.warmup,
        repeats=args.repeats,
        show_progress=not args.no_progress,
    )
    record["model"] = path
    table = markdown_table(record)
    (out / "bench.json").write_text(json.dumps(record, indent=1))
    (out / "bench.md").write_text(table + "\n")
    m = record["machine"]
    print(
        f"{path} on {m.get('gpu') or m['processor']} ({m['device']}, {m['dtype']}, torch {m['torch']}, "
        f"transformers {m['transformers']})\n"
    )
    print(table)
    print(f"\nrecord: {out / 'bench.json'}")
    return 0
