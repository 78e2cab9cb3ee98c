"""Token agreement of eedecode with Hugging Face ``generate`` in half precision.

In float32, eedecode's greedy output equals HF's token for token on every prompt tested. In
float16 / bfloat16, the two compute the same layers with kernels that round differently. So a
near-tie between two tokens can flip, and the sequences then diverge. This script measures how
often that happens. For each prompt it decodes greedily with HF ``generate``, eedecode
autoregressive, eedecode self-speculative (the model's recommended exit layer) and the default
call (adaptive). It prints the share of sequences identical to HF's, the mean share of new tokens
before the first difference from HF, and the share identical to eedecode's own autoregressive
output (speculation's own contract).

    python benchmarks/dtype_agreement.py --model demo --num-prompts 24 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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
    p.add_argument("--out", default=None, help="write the rows (JSON) here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    prompts = load_prompts(None, args.num_prompts)
    rows = []
    print(
        "| dtype | method | identical to HF | new tokens before the first difference from HF "
        "| identical to eedecode autoregressive |"
    )
    print("|---|---|---:|---:|---:|")
    for dtype in args.dtypes.split(","):
        model, tokenizer, _, settings = eedecode.load_model(args.model, "cpu", dtype)
        E = args.exit_layer or settings.get("exit_layer", 1)
        modes = {
            "autoregressive": dict(mode="autoregressive"),
            "self-speculative": dict(exit_layer=E, num_speculations=args.num_speculations),
            "default (adaptive)": {},
        }
        same = dict.fromkeys(modes, 0)
        before = dict.fromkeys(modes, 0.0)
        same_ar = dict.fromkeys(modes, 0)
        for row in prompts:
            ids = tokenizer(row["prompt"], return_tensors="pt").input_ids
            P = ids.shape[1]
            ref = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False)[0, P:]
            outs = {
                name: eedecode.generate(model, ids, max_new_tokens=args.max_new_tokens, **kw)[0, P:]
                for name, kw in modes.items()
            }
            for name, out in outs.items():
                k = first_difference(out, ref)
                same[name] += int(k == len(ref) == len(out))
                before[name] += k / max(len(ref), 1)
                same_ar[name] += int(torch.equal(out, outs["autoregressive"]))
        n = len(prompts)
        for name in modes:
            row = dict(dtype=dtype, method=f"eedecode {name}", prompts=n, identical_to_hf=same[name])
            row.update(share_before_first_difference=before[name] / n, identical_to_ar=same_ar[name])
            rows.append(row)
            print(
                f"| {dtype} | eedecode {name} | {same[name]}/{n} | {before[name] / n:.1%} "
                f"| {same_ar[name]}/{n} |"
            )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
