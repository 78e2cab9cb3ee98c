"""The matrix products of one decode step over a whole model's weights, per library and layout, for
1 to 48 rows (a step of one token at batch size B, or a verification block of k + 1 tokens).

For every decoder layer's four products (q|k|v, o, gate|up, down: the packed shapes) and the LM head,
with random weights of the model's shapes (fp32, each matrix read once per pass, so the model's
weights stream from memory as they do in decoding):

* ``F.linear``      the usual ``[out, in]`` weight (what Hugging Face's forward runs),
* ``mkl [in,out]``  ``torch.mm`` on the transposed-contiguous weight (eedecode's packed layout),
* ``onednn``        oneDNN's linear on the transposed-contiguous weight,
* ``eedecode``      :func:`eedecode.kernels.cpu_matmul.matmul_t` as the runner calls it: oneDNN from
                    the row count the runner measured for this model on this machine
                    (:func:`eedecode.model.costs.choose_block_library`, printed above the table).

Methods take turns within every repeat; the table shows the minimum over repeats (the work is
deterministic, interference only adds) in ms per pass::

    python benchmarks/bench_cpu_matmul.py --model demo --threads 1
    python benchmarks/bench_cpu_matmul.py --model smollm2 --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from eedecode.kernels import cpu_matmul
from eedecode.model.costs import choose_block_library
from eedecode.model.loading import load_model
from eedecode.model.runner import ModelRunner

ROWS = (1, 2, 3, 4, 6, 8, 16, 48)


def shapes(model_name: str) -> tuple[list[tuple[int, int]], int]:
    """``(in, out)`` of every product of one step: four per layer, then the head; and from how
    many rows the runner lets oneDNN serve them (measured on the model, as in decoding)."""
    runner = ModelRunner(load_model(model_name, "cpu", "float32").model)
    out = []
    for p in runner.packed:
        out += [tuple(p.qkv.shape), tuple(p.o.shape), tuple(p.gate_up.shape), tuple(p.down.shape)]
    head = runner.lm_head.weight
    return out + [(head.shape[1], head.shape[0])], choose_block_library(runner)


def methods(weights, weights_t, onednn_from: int):
    def onednn(x, w_t):
        return torch.ops.mkldnn._linear_pointwise(x, w_t.t(), None, "none", [], "")

    return {
        "F.linear": lambda xs: [F.linear(xs[w.shape[1]], w) for w in weights],
        "mkl [in,out]": lambda xs: [torch.mm(xs[w.shape[0]], w) for w in weights_t],
        "onednn": lambda xs: [onednn(xs[w.shape[0]], w) for w in weights_t],
        "eedecode": lambda xs: [cpu_matmul.matmul_t(xs[w.shape[0]], w, None, onednn_from) for w in weights_t],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dims, onednn_from = shapes(args.model)
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(o, i, generator=g) / i**0.5 for i, o in dims]
    weights_t = [w.t().contiguous() for w in weights]
    nbytes = 4 * sum(w.numel() for w in weights)
    stream = cpu_matmul.streams_from_memory(nbytes)
    fns = methods(weights, weights_t, onednn_from)
    rule = cpu_matmul.onednn_from_text(onednn_from)
    rule = "never (MKL throughout)" if rule == "never" else f"from {rule} rows"
    print(
        f"{args.model}: {len(dims)} products, {nbytes / 1e6:.1f} MB of fp32 weights per pass "
        f"({'more' if stream else 'less'} than the last-level cache); the runner measured oneDNN "
        f"{rule}; ms per pass (min)"
    )
    print("| rows | " + " | ".join(fns) + " |")
    print("|---:|" + "---:|" * len(fns))
    with torch.no_grad():
        for rows in ROWS:
            xs = {n: torch.randn(rows, n, generator=g) for n in {d[0] for d in dims} | {d[1] for d in dims}}
            best = dict.fromkeys(fns, float("inf"))
            for _ in range(args.repeats):
                for name, fn in fns.items():
                    t0 = time.perf_counter()
                    fn(xs)
                    best[name] = min(best[name], time.perf_counter() - t0)
            print(f"| {rows} | " + " | ".join(f"{1e3 * best[n]:.2f}" for n in fns) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
