"""What lookup drafts from earlier calls are worth: eedecode autoregressive, the default call and
the default call with ``lookup_memory=True`` take turns on each prompt, once per prompt, in one
process. The memory holds only the prompts and outputs of the calls before (other prompts): a
prompt never meets its own earlier output. Each run starts with an empty memory and its own
order of the prompts; tokens are compared with autoregressive decoding's.

    python benchmarks/lookup_memory.py --model demo-plain --runs 3
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import torch

import eedecode
from eedecode.bench.measure import encode_prompts, load_prompts
from eedecode.drafting.lookup import forget_calls
from eedecode.model.loading import load_model

METHODS = {
    "autoregressive": {"mode": "autoregressive"},
    "default": {},
    "default, lookup_memory=True": {"lookup_memory": True},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo-plain")
    p.add_argument("--num-prompts", type=int, default=24)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3, help="runs, each over every prompt once (default 3)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.num_prompts < 2:
        p.error("--runs: at least 1; --num-prompts: at least 2 (the memory needs earlier calls)")
    torch.set_num_threads(1)
    loaded = load_model(args.model, "cpu", "float32")
    model, tok = loaded.model, loaded.tokenizer
    ids = encode_prompts(tok, load_prompts(None, args.num_prompts), model.config.vocab_size, "cpu")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    kw = dict(max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=pad)
    for options in METHODS.values():  # the library timing, and each method's policy started alike
        eedecode.generate(model, input_ids=ids[0], **options, **kw)
    print(
        f"{args.model}: {args.num_prompts} prompts x {args.max_new_tokens} new tokens, 1 thread", flush=True
    )
    per_run, drafted, identical = [], {m: [0, 0] for m in METHODS}, 0
    for run in range(args.runs):
        forget_calls(model)  # an empty memory (the warm-up's call and earlier runs' are dropped)
        order = list(range(len(ids)))
        random.Random(run).shuffle(order)
        ratios = {m: [] for m in METHODS if m != "autoregressive"}
        for turn, i in enumerate(order):
            x = ids[i]
            seconds, outs = {}, {}
            names = list(METHODS)
            for m in names[turn % 3 :] + names[: turn % 3]:  # each method first in turn
                t0 = time.perf_counter()
                out = eedecode.generate(model, input_ids=x, return_dict_in_generate=True, **METHODS[m], **kw)
                seconds[m], outs[m] = time.perf_counter() - t0, out
                if out.stats.drafted_tokens:
                    drafted[m][0] += out.stats.drafted_tokens
                    drafted[m][1] += out.stats.accepted_tokens
            identical += all(
                torch.equal(o.sequences, outs["autoregressive"].sequences) for o in outs.values()
            )
            for m in ratios:
                ratios[m].append(seconds["autoregressive"] / seconds[m])
        per_run.append({m: statistics.median(r) for m, r in ratios.items()})
        cells = ", ".join(f"{m} {v:.2f}x" for m, v in per_run[-1].items())
        print(f"run {run + 1}: paired median vs autoregressive: {cells}", flush=True)
    print()
    print("| method | vs eedecode AR (median of runs) | runs | drafted tokens | accepted |")
    print("|---|---:|---|---:|---:|")
    for m in METHODS:
        if m == "autoregressive":
            continue
        runs = [r[m] for r in per_run]
        share = f"{drafted[m][1] / drafted[m][0]:.0%}" if drafted[m][0] else "-"
        print(
            f"| {m} | {statistics.median(runs):.2f}× | {', '.join(f'{r:.2f}' for r in runs)} "
            f"| {drafted[m][0]} | {share} |"
        )
    total = args.runs * len(ids)
    print(f"\nidentical to autoregressive: {identical}/{total} prompts (every method)")
    return 0 if identical == total else 1


if __name__ == "__main__":
    sys.exit(main())
