"""Token agreement of eedecode with Hugging Face ``generate`` in half precision.

In float32, eedecode's greedy output equals HF's token for token on every prompt tested. In
float16 / bfloat16, the two compute the same layers with kernels that round differently. So a
near-tie between two tokens can flip, and the sequences then diverge. This script measures how
often that happens. For each prompt it decodes greedily with HF ``generate``, eedecode
autoregressive and eedecode self-speculative. It prints the share of identical sequences and the
mean share of new tokens before the first difference.

    python benchmarks/dtype_agreement.py --model demo --num-prompts 24 --max-new-tokens 64
"""

from __future__ import annotations

import argparse

import torch

import eedecode
from eedecode.bench import load_prompts


def first_difference(a: torch.Tensor, b: torch.Tensor) -> int:
    """Index of the first differing token of two 1-D sequences (their common length if none)."""
    n = min(len(a), len(b))
    diff = (a[:n] != b[:n]).nonzero()
    return int(diff[0]) if len(diff) else n


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--num-prompts", type=int, default=24)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--exit-layer", type=int, default=None)
    p.add_argument("--num-speculations", type=int, default=2)
    p.add_argument("--dtypes", default="float32,bfloat16,float16")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    prompts = load_prompts(None, args.num_prompts)
    print("| dtype | method | identical to HF | tokens before the first difference |")
    print("|---|---|---:|---:|")
    for dtype in args.dtypes.split(","):
        model, tokenizer, _, settings = eedecode.load_model(args.model, "cpu", dtype)
        E = args.exit_layer or settings.get("exit_layer", 1)
        modes = {
            "autoregressive": {},
            "self-speculative": dict(exit_layer=E, num_speculations=args.num_speculations),
        }
        same = dict.fromkeys(modes, 0)
        before = dict.fromkeys(modes, 0.0)
        for row in prompts:
            ids = tokenizer(row["prompt"], return_tensors="pt").input_ids
            P = ids.shape[1]
            ref = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False)[0, P:]
            for name, kw in modes.items():
                mode = "autoregressive" if name == "autoregressive" else "self_speculative"
                out = eedecode.generate(model, ids, mode=mode, max_new_tokens=args.max_new_tokens, **kw)[
                    0, P:
                ]
                k = first_difference(out, ref)
                same[name] += int(k == len(ref) == len(out))
                before[name] += k / max(len(ref), 1)
        for name in modes:
            n = len(prompts)
            print(f"| {dtype} | eedecode {name} | {same[name]}/{n} | {before[name] / n:.1%} |")


if __name__ == "__main__":
    main()
