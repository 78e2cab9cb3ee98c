"""What the adaptive mode's rounds cost besides the model, on a CPU.

The mode does some bookkeeping every round: it looks for lookup drafts, picks an arm, judges
the lookup drafts against the round's tokens and updates its estimates (``observe``). On a CPU
that work runs right after a forward pass. For a small model whose weights are about the size of
the last-level cache, the pass has pushed the interpreter's code and data out of the caches, so
the bookkeeping costs several times what it costs in a tight loop. The script measures the
bookkeeping both ways. It then runs eedecode autoregressive, the mode with ``lookup=False``
(which settles on plain decoding on a model where no exit layer pays, so it shows what the mode
costs around its rounds with nothing to win it back) and the mode as it comes, taking turns on
every prompt.

    python benchmarks/round_overhead.py --model demo-plain
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import eedecode
from eedecode.bench import load_prompts
from eedecode.bench.measure import encode_prompts
from eedecode.drafting.lookup import LookupDrafter
from eedecode.model.loading import load_model
from eedecode.model.memory import memory_of
from eedecode.modes.adaptive import mode as adaptive
from eedecode.modes.adaptive.planner import Planner


def timed(cls, name: str, seconds: dict[str, list[float]], again: bool = False):
    """Record the wall time of every call of ``cls.name`` (with ``again``, also of a second call
    right after it, with warm caches; the method must give the same result when repeated).
    Returns the method as it was."""
    real = getattr(cls, name)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = real(*args, **kwargs)
        t1 = time.perf_counter()
        seconds.setdefault(name, []).append(t1 - t0)
        if again:
            real(*args, **kwargs)
            seconds.setdefault(name + " (again, warm)", []).append(time.perf_counter() - t1)
        return out

    setattr(cls, name, wrapper)
    return real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo-plain")
    ap.add_argument("--num-prompts", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    loaded = load_model(args.model)
    model = loaded.model
    ids = encode_prompts(
        loaded.tokenizer, load_prompts(None, args.num_prompts), model.config.vocab_size, "cpu"
    )
    new = args.max_new_tokens

    # 1. the bookkeeping, right after a forward pass and again at once
    seconds: dict[str, list[float]] = {}
    spied = [
        (LookupDrafter, "look", True),
        (adaptive.Adaptive, "observe", False),
        (Planner, "plan", False),
    ]
    real = [(cls, name, timed(cls, name, seconds, again)) for cls, name, again in spied]
    eedecode.generate(model, ids[0], max_new_tokens=new)  # warm-up
    seconds.clear()
    for x in ids:
        eedecode.generate(model, x, max_new_tokens=new)
    rounds = len(seconds["observe"])
    print(f"{args.model}: the adaptive mode's bookkeeping, {rounds} rounds of {len(ids)} prompts")
    print("| step | calls | mean (us) | per round (us) |\n|---|---:|---:|---:|")
    for name, values in seconds.items():
        mean = statistics.mean(values) * 1e6
        print(f"| {name} | {len(values)} | {mean:.1f} | {mean * len(values) / rounds:.1f} |")

    # 2. what it costs a call: the modes take turns on every prompt (rotating order)
    for cls, name, method in real:
        setattr(cls, name, method)
    modes = {
        "autoregressive": dict(mode="autoregressive"),
        "lookup=False": dict(lookup=False),
        "adaptive": {},
    }
    names = list(modes)
    memory_of(model).reset()
    for name in names:
        eedecode.generate(model, ids[0], max_new_tokens=new, **modes[name])
    spent = {n: [] for n in names}
    for i, x in enumerate(ids):
        for name in names[i % 3 :] + names[: i % 3]:
            t0 = time.perf_counter()
            eedecode.generate(model, x, max_new_tokens=new, **modes[name])
            spent[name].append(time.perf_counter() - t0)
    print("\nspeed-up over eedecode autoregressive (median of per-prompt ratios):")
    for name in names[1:]:
        ratios = [a / b for a, b in zip(spent["autoregressive"], spent[name], strict=True)]
        print(f"  {name}: {statistics.median(ratios):.3f}x")


if __name__ == "__main__":
    main()
