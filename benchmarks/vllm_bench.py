"""Tokens per second of vLLM without speculation, with vLLM's ``ngram`` drafter and with eedecode's
drafter (early-exit + lookup drafts, :mod:`eedecode.serving.vllm`), at several batch sizes, greedy.

All engines are built first and kept alive; then every repeat runs every method at every batch
size, in an order rotated per repeat, so that drift on a shared machine falls on all methods
alike. Each method's greedy tokens are checked against vLLM without speculation at the same batch
size. Acceptance comes from vLLM's own counters (``vllm:spec_decode_*``). Warm-up (compilation
for the step shapes) is excluded. Prints the machine, versions and a table; writes a JSON record.
Times are reported, never asserted.

    python benchmarks/vllm_bench.py --out runs/vllm_bench.json

Set ``LD_PRELOAD`` to the environment's ``libiomp5.so``, ``NUMBA_NUM_THREADS=1`` and
``VLLM_CPU_OMP_THREADS_BIND`` (e.g. ``0`` for one thread) before starting it on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import eedecode

PROMPTS = Path(eedecode.__file__).resolve().parent / "data" / "prompts.jsonl"
PROPOSER = "eedecode.serving.vllm.EarlyExitProposer"
COUNTERS = ("num_drafts", "num_draft_tokens", "num_accepted_tokens")  # vLLM's per-request spec metrics


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(eedecode.demo_model_path("early_exit")))
    p.add_argument("--methods", default="none,ngram,eedecode", help="comma-separated; see METHODS")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--num-prompts", type=int, default=24, help="prompts per batch size (cycled from the 24)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num-speculative-tokens", type=int, default=4)
    p.add_argument("--ngram", default="1,3", help="vLLM ngram's prompt_lookup_min,prompt_lookup_max")
    p.add_argument("--eedecode", default="{}", help="JSON options for eedecode's drafter")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--out", default=None, help="where to write the JSON record")
    return p.parse_args(argv)


def speculative_config(method: str, args) -> dict | None:
    """vLLM's ``speculative_config`` for a method (``none``: no speculation)."""
    k = args.num_speculative_tokens
    if method == "none":
        return None
    if method == "ngram":
        low, high = (int(x) for x in args.ngram.split(","))
        return {
            "method": "ngram",
            "num_speculative_tokens": k,
            "prompt_lookup_min": low,
            "prompt_lookup_max": high,
        }
    if method.startswith("eedecode"):
        return {"method": "custom_class", "model": PROPOSER, "num_speculative_tokens": k}
    if method.startswith("draft_model:"):
        return {"method": "draft_model", "model": method.split(":", 1)[1], "num_speculative_tokens": k}
    raise ValueError(f"method: none, ngram, eedecode[@JSON], draft_model:PATH; got {method!r}")


def build_engine(method: str, args):
    from vllm import LLM

    options = json.loads(args.eedecode)
    if method.startswith("eedecode@"):
        options = {**options, **json.loads(method.split("@", 1)[1])}
    t0 = time.perf_counter()
    llm = LLM(
        model=args.model,
        dtype=args.dtype,
        seed=0,
        max_model_len=1024,
        max_num_seqs=max(int(b) for b in args.batch_sizes.split(",")),
        speculative_config=speculative_config(method, args),
        additional_config={"eedecode": options} if method.startswith("eedecode") else {},
        enforce_eager=args.enforce_eager,
        per_request_spec_decode_metrics="none" if method == "none" else "summary",
    )
    return llm, time.perf_counter() - t0


def spec_counters(outputs) -> dict[str, int]:
    """Verify steps with drafts, draft tokens and accepted drafts, summed over requests, from
    vLLM's per-request speculative-decoding metrics."""
    counts = dict.fromkeys(COUNTERS, 0)
    for metrics in (o.spec_decode_metrics for o in outputs):
        if metrics is not None:
            counts["num_drafts"] += sum(metrics.histogram)
            counts["num_draft_tokens"] += metrics.num_draft_tokens
            counts["num_accepted_tokens"] += sum(j * n for j, n in enumerate(metrics.histogram))
    return counts


def run_once(llm, prompts: list[list[int]], batch_size: int, max_new_tokens: int) -> dict:
    """Generate for ``prompts`` in groups of ``batch_size``; tokens/s over all groups."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, detokenize=False)
    completions, t0 = [], time.perf_counter()
    for g in range(0, len(prompts), batch_size):
        group = [TokensPrompt(prompt_token_ids=ids) for ids in prompts[g : g + batch_size]]
        completions += [r.outputs[0] for r in llm.generate(group, params, use_tqdm=False)]
    seconds = time.perf_counter() - t0
    outputs = [list(c.token_ids) for c in completions]
    tokens = sum(map(len, outputs))
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "outputs": outputs,
        **spec_counters(completions),
    }


def load_prompts(model: str, count: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines() if line.strip()]
    texts = (texts * (count // len(texts) + 1))[:count]
    return [tokenizer(t)["input_ids"] for t in texts]


def machine() -> dict:
    import torch
    import transformers
    import vllm

    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor()
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "eedecode": eedecode.__version__,
        "threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
    }


def paired(runs: list[dict], base: list[dict] | None) -> list[float] | None:
    """Per-repeat ratios of tokens/s (each repeat's runs of both methods ran back to back)."""
    if base is None:
        return None
    return [r["tokens_per_s"] / b["tokens_per_s"] for r, b in zip(runs, base, strict=True)]


def summarize(runs: list[dict], base: list[dict], base_outputs: list[list[int]], ngram=None) -> dict:
    """Median and range of tokens/s, paired ratios to the baseline (and to ``ngram``), acceptance,
    tokens per step, and whether every output equals the baseline's."""
    rates = [r["tokens_per_s"] for r in runs]
    ratios = paired(runs, base)
    to_ngram = paired(runs, ngram)
    drafts, draft_tokens, accepted = (sum(r[c] for r in runs) for c in COUNTERS)
    tokens = sum(r["tokens"] for r in runs)
    return {
        "tokens_per_s": rates,
        "median": statistics.median(rates),
        "ratio_median": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "ngram_ratio_median": None if to_ngram is None else statistics.median(to_ngram),
        "ngram_ratio_range": None if to_ngram is None else [min(to_ngram), max(to_ngram)],
        "acceptance_rate": accepted / draft_tokens if draft_tokens else None,
        "mean_acceptance_length": 1 + accepted / drafts if drafts else None,
        "tokens_per_step": tokens / (tokens - accepted),
        "identical": all(r["outputs"] == base_outputs for r in runs),
    }


def table(summary: dict) -> str:
    lines = [
        "| method | batch | tok/s median [min-max] | x none median [min-max] | x ngram median [min-max] "
        "| accepted | accept len | tokens/step | = none |",
        "|---|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for (method, batch), s in summary.items():
        acc = "-" if s["acceptance_rate"] is None else f"{s['acceptance_rate']:.2f}"
        length = "-" if s["mean_acceptance_length"] is None else f"{s['mean_acceptance_length']:.2f}"
        lo, hi = s["ratio_range"]
        vs_ngram = "-"
        if s["ngram_ratio_median"] is not None:
            n_lo, n_hi = s["ngram_ratio_range"]
            vs_ngram = f"{s['ngram_ratio_median']:.2f} [{n_lo:.2f}-{n_hi:.2f}]"
        lines.append(
            f"| {method} | {batch} | {s['median']:.0f}"
            f" [{min(s['tokens_per_s']):.0f}-{max(s['tokens_per_s']):.0f}]"
            f" | {s['ratio_median']:.2f} [{lo:.2f}-{hi:.2f}] | {vs_ngram} | {acc} | {length}"
            f" | {s['tokens_per_step']:.2f}"
            f" | {'yes' if s['identical'] else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    methods = args.methods.split(",")
    if methods[0] != "none":
        methods = ["none"] + [m for m in methods if m != "none"]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    engines, startup = {}, {}
    for m in methods:  # 1) build every engine (compilation included) before timing anything
        engines[m], startup[m] = build_engine(m, args)
    prompts = {b: load_prompts(args.model, args.num_prompts) for b in batch_sizes}
    for m in methods:  # 2) warm up each engine at each batch size
        for b in batch_sizes:
            run_once(engines[m], prompts[b][: 2 * b], b, args.max_new_tokens)
    load = [os.getloadavg()]
    runs = {(m, b): [] for m in methods for b in batch_sizes}
    for r in range(args.repeats):  # 3) interleaved repeats, the order rotated each time
        order = methods[r % len(methods) :] + methods[: r % len(methods)]
        for b in batch_sizes:
            for m in order:
                runs[m, b].append(run_once(engines[m], prompts[b], b, args.max_new_tokens))
        load.append(os.getloadavg())
    summary = {
        (m, b): summarize(runs[m, b], runs["none", b], runs["none", b][0]["outputs"], runs.get(("ngram", b)))
        for b in batch_sizes
        for m in methods
    }
    record = {
        "machine": machine(),
        "args": vars(args),
        "startup_s": startup,
        "load_average": load,
        "summary": {f"{m}@{b}": s for (m, b), s in summary.items()},
        "runs": {
            f"{m}@{b}": [{k: v for k, v in x.items() if k != "outputs"} for x in rs]
            for (m, b), rs in runs.items()
        },
    }
    print(json.dumps(record["machine"], indent=1))
    print(f"load average (1, 5, 15 min) before/after each repeat: {load}")
    print(table(summary))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
