"""Where an eedecode autoregressive step goes, against llama.cpp's whole step on the same weights.

In one process, taking turns (one thread by default):

* **eedecode step**: one autoregressive step of the engine (``eedecode bench``'s step function);
* **its products alone**: the same matrix products on the same matrices and inputs, back to back
  (recorded from a step, replayed);
* **llama.cpp step**: one token through llama.cpp (``llamacpp_f32``'s engine) at the same position;
* **rest, warm**: the step with every product replaced by its ready result (what the other ops
  cost while their code and data stay in the caches);
* **rest, streamed**: the same, with a read of as many bytes as each product's weights from a
  buffer larger than the last-level cache in place of each product (what they cost when a weight
  stream has just gone through the caches, as in a real step), minus the reads alone.

Medians over turns, and paired ratios against the eedecode step::

    python benchmarks/step_vs_llamacpp.py --model smollm2 --repeats 60
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import eedecode.model.runner as runner_module
from eedecode.bench.llamacpp import LlamaCppEngine, missing
from eedecode.bench.measure import encode_prompts, load_prompts
from eedecode.bench.steps import step_functions
from eedecode.model.loading import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--repeats", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, "cpu", "float32")
    model = loaded.model
    prompt = encode_prompts(loaded.tokenizer, load_prompts(limit=1), model.config.vocab_size, "cpu")[0]
    _, steps, reset = step_functions(model, prompt, 1, 1)
    ar = steps["ar_step"]

    # 1) record the step's products (inputs, matrices, outputs)
    real = runner_module.matmul_t, runner_module.linear
    calls = []

    def recording(fn):
        def f(x, w, b=None, stream=False):
            y = fn(x, w, b, stream)
            calls.append((fn, x.clone(), w, b, stream, y))
            return y

        return f

    runner_module.matmul_t, runner_module.linear = recording(real[0]), recording(real[1])
    reset()
    ar()
    runner_module.matmul_t, runner_module.linear = real

    def products():
        for fn, x, w, b, stream, _ in calls:
            fn(x, w, b, stream)

    # 2) the step with ready results in place of the products, with or without a weight stream
    big = torch.ones(max(2 * sum(c[2].numel() for c in calls), 64 << 20))
    at = [0]

    def read(n):
        start = at[0] if at[0] + n <= big.numel() else 0
        big[start : start + n].sum()
        at[0] = start + n

    def without_products(stream: bool):
        def step():
            ready = iter(calls)

            def replay(*a, **k):
                _, _, w, _, _, y = next(ready)
                if stream:
                    read(w.numel())
                return y

            runner_module.matmul_t = runner_module.linear = replay
            try:
                reset()
                ar()
            finally:
                runner_module.matmul_t, runner_module.linear = real

        return step

    def reads_alone():
        for c in calls:
            read(c[2].numel())

    fns = {
        "eedecode step": lambda: (reset(), ar()),
        "its products alone": products,
        "rest, warm": without_products(False),
        "rest + reads": without_products(True),
        "reads alone": reads_alone,
    }
    engine = None
    if missing() is None:
        source = str(loaded.path)
        engine = LlamaCppEngine(model, "F32", loaded.tokenizer, source if source.endswith(".gguf") else None)
        llm, ids = engine.llm, prompt[0].tolist()
        llm.reset()
        llm.eval(ids)

        def llama_step():
            llm.n_tokens = len(ids)  # back to the prompt: eval drops the KV cache past n_tokens
            llm.eval([ids[-1]])

        fns["llama.cpp step"] = llama_step
    else:
        print(f"llama.cpp: skipped ({missing()})")
    samples = {name: [] for name in fns}
    for i in range(args.repeats + 2):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i >= 2:
                samples[name].append(time.perf_counter() - t0)
    samples["rest, streamed"] = [
        a - b for a, b in zip(samples.pop("rest + reads"), samples["reads alone"], strict=True)
    ]
    base = samples["eedecode step"]
    print(f"{args.model}, {args.threads} thread(s), {args.repeats} turns; {len(calls)} products per step")
    print("| | ms (median) | ms (min) | eedecode step / this (paired median) |")
    print("|---|---:|---:|---:|")
    for name, xs in samples.items():
        paired = f"{statistics.median(a / b for a, b in zip(base, xs, strict=True)):.3f}"
        if name == "rest, streamed":
            paired = ""
        print(f"| {name} | {1e3 * statistics.median(xs):.2f} | {1e3 * min(xs):.2f} | {paired} |")
    if engine is not None:
        engine.close()


if __name__ == "__main__":
    main()
