"""This tree's hot path against an earlier commit's, in one process: aten ops and milliseconds of an
autoregressive step, a draft step and a verification pass (the step functions of
``eedecode bench``), the two engines taking turns.

The earlier commit's ``eedecode`` is extracted with ``git archive`` into a temporary folder and
imported under another name; it runs on a copy of the model taken before this tree packs the
weights in place, so each engine reads the weights in its own layout::

    python benchmarks/compare_hot_path.py --base 303e567 --model demo --exit-layer 1 --num-speculations 2
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("ar_step", "draft_step", "verify")


def import_commit(commit: str, into: Path):
    """The package ``eedecode`` (with its kernels) as of ``commit``, imported as ``eedecode_base``."""
    git = ["git", "-C", str(ROOT), "archive", commit, "eedecode", "kernels"]
    tar = subprocess.run(git, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=tar.stdout, check=True)
    pkg = into / "eedecode"
    (pkg / "kernels").unlink(missing_ok=True)
    (into / "kernels").rename(pkg / "kernels")
    pkg.rename(into / "eedecode_base")
    sys.path.insert(0, str(into))
    return importlib.import_module("eedecode_base.runner"), importlib.import_module("eedecode_base.decoding")


def step_functions(runner_mod, decoding_mod, model, prompt, E: int, k: int):
    runner = runner_mod.ModelRunner(model)
    chooser, state = decoding_mod.TokenChooser(), SimpleNamespace(runner=runner)
    L, P = runner.num_layers, prompt.shape[1]
    cache = runner.new_cache(1, P + k + 4)
    with torch.no_grad():
        runner.prefill(prompt, cache)
        drafts = prompt[:, -k:]
        draft_states = runner.run_layers(runner.embed(drafts), 0, E, runner.new_cache(1, k))
    base, token = torch.full((1,), P), prompt[:, -1:]

    def ar_step():
        h = runner.run_layers(runner.embed(token), 0, L, cache)
        chooser.choose(state, runner.logits(h[:, 0])).tolist()

    # a greedy draft without a confidence rule (the argmax only, where the engine can say so)
    argmax_only = {"confidence": False} if "confidence" in inspect.signature(chooser.draft).parameters else {}

    def draft_step():
        h = runner.run_layers(runner.embed(token), 0, E, cache)
        chooser.draft(state, h[:, 0], **argmax_only)

    def verify():
        cache.advance(0, E, k)
        states = torch.cat([draft_states, runner.run_layers(runner.embed(token), 0, E, cache)], 1)
        out = runner.run_layers(states, E, L, cache)
        tokens, n = chooser.accept(state, drafts, states[:, :k], [], runner.logits(out))
        torch.cat([tokens, n[:, None]], 1).tolist()

    steps = {"ar_step": ar_step, "draft_step": draft_step, "verify": verify}
    return steps, lambda: cache.rollback(base, P, True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the commit to compare against")
    p.add_argument("--model", default="demo")
    p.add_argument("--exit-layer", type=int, default=1)
    p.add_argument("--num-speculations", type=int, default=2)
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from eedecode.bench.profile import count_ops
    from eedecode.engine import decoder as decoding
    from eedecode.model import runner
    from eedecode.model.loading import load_model

    loaded = load_model(args.model, "cpu", "float32")
    text = "def parse_header(line):\n    return line.split(':')\n"
    prompt = loaded.tokenizer(text, return_tensors="pt").input_ids
    E, k = args.exit_layer, args.num_speculations
    with tempfile.TemporaryDirectory() as tmp:
        base_modules = import_commit(args.base, Path(tmp))
        as_loaded = copy.deepcopy(loaded.model)  # before this tree packs the weights in place
        engines = {
            "before": step_functions(*base_modules, as_loaded, prompt, E, k),
            "after": step_functions(runner, decoding, loaded.model, prompt, E, k),
        }
        ops, times = {}, {}
        with torch.no_grad():
            for tag, (fns, reset) in engines.items():
                for name, fn in fns.items():
                    reset()
                    fn()  # warm
                    reset()
                    ops[tag, name] = sum(count_ops(fn).values())
            for rep in range(args.repeats + 3):  # the first three warm up; the order alternates
                for name in STEPS:
                    for tag in ("before", "after") if rep % 2 else ("after", "before"):
                        fns, reset = engines[tag]
                        reset()
                        t0 = time.perf_counter()
                        fns[name]()
                        if rep >= 3:
                            times.setdefault((tag, name), []).append(time.perf_counter() - t0)
    print(f"{args.model}, E = {E}, k = {k}, {args.repeats} interleaved repeats, {args.threads} thread(s)")
    print("| step | ops before | ops after | ms before | ms after | after / before (paired median) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in STEPS:
        b, a = times["before", name], times["after", name]
        ratio = statistics.median(x / y for x, y in zip(a, b, strict=True))
        ms = f"{1e3 * statistics.median(b):.3f} | {1e3 * statistics.median(a):.3f}"
        print(f"| {name} | {ops['before', name]} | {ops['after', name]} | {ms} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
