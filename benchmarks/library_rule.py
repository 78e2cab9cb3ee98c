"""What the measured library choice of the CPU products is worth: eedecode autoregressive and the
default call, each with oneDNN from the row count the runner measured for the model and with the
fixed rule it replaced (oneDNN from 4 rows, from 2 when the weights exceed the last-level cache),
taking turns on every batch of prompts in one process. Each rule keeps its own learned state (the
adaptive policy, the measured cost tables), so that neither learns from rounds run under the other.
Tokens are compared too.

    python benchmarks/library_rule.py --model demo --batch-sizes 1,4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import eedecode
from eedecode.bench.measure import _batches, encode_prompts, load_prompts
from eedecode.kernels.cpu_matmul import library_before_timing, onednn_from_text
from eedecode.model.costs import choose_block_library
from eedecode.model.loading import load_model
from eedecode.model.memory import memory_of
from eedecode.model.runner import ModelRunner


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--batch-sizes", default="1,4")
    p.add_argument("--num-prompts", type=int, default=24)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    loaded = load_model(args.model, "cpu", "float32")
    model, tok = loaded.model, loaded.tokenizer
    threads = torch.get_num_threads()
    runner = ModelRunner(model)
    measured = choose_block_library(runner)
    weights = [t for q in runner.packed if q for t in (q.qkv, q.o, q.gate_up, q.down)] + [runner.head_t]
    fixed = library_before_timing([w for w in weights if w is not None])[0]
    print(f"{args.model}: oneDNN from rows, measured: {onednn_from_text(measured)}; fixed rule: {fixed}")
    rules = {"measured": measured, "fixed rule": fixed}
    learned = {r: ({}, {}) for r in rules}  # per rule: the model memory's modes and cost tables
    modes = {"autoregressive": {"mode": "autoregressive"}, "default": {}}
    ids = encode_prompts(tok, load_prompts(None, args.num_prompts), model.config.vocab_size, "cpu")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for b in (int(x) for x in args.batch_sizes.split(",")):
        batches = list(_batches(ids, b, pad))
        runs = [(m, r) for m in modes for r in rules]

        def call(m, r, x, mask):
            memory = memory_of(model)
            memory.onednn_from_rows[threads] = rules[r]  # what the next runner reads
            memory.modes, memory.block_costs = learned[r]  # this rule's own learned state
            kw = dict(max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=pad)
            return eedecode.generate(model, input_ids=x, attention_mask=mask, **modes[m], **kw)

        for m, r in runs:  # warm-up: the first batch, every method
            call(m, r, *batches[0])
        ratios = {k: [] for k in runs}
        same = 0
        for _ in range(args.repeats):
            for i, (x, mask) in enumerate(batches):
                seconds, out = {}, {}
                for k in runs[i % len(runs) :] + runs[: i % len(runs)]:
                    t0 = time.perf_counter()
                    out[k] = call(*k, x, mask)
                    seconds[k] = time.perf_counter() - t0
                base = seconds[("autoregressive", "fixed rule")]
                for k in runs:
                    ratios[k].append(base / seconds[k])
                same += all(torch.equal(out[k], out[runs[0]]) for k in runs)
        n = len(batches) * args.repeats
        print(
            f"batch {b}: speed-up over eedecode autoregressive with the fixed rule (median of {n} batches):"
        )
        for k in runs:
            print(f"  {k[0]:15s} {k[1]:10s} {statistics.median(ratios[k]):.2f}x")
        print(f"  batches with identical tokens across the four: {same}/{n}")
    memory_of(model).onednn_from_rows[threads] = measured
    return 0


if __name__ == "__main__":
    sys.exit(main())
