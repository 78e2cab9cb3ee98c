"""The draft vocabulary's trade-off: a cheaper draft step against drafts the full model rejects more.

For each exit layer E and draft vocabulary size N (the N tokens most frequent in tuning text, as
``eedecode tune`` ranks them), it measures at one thread:

* ``c``: one draft step (layers [0, E) over one token with the KV cache, then the exit head over
  N tokens) relative to one autoregressive step (every layer, the full head), medians of paired
  turns;
* ``a``: teacher-forced agreement of the draft (the top-1 among the N tokens at layer E) with the
  full model's top-1, on held-out code (the benchmark's prompt modules);
* ``ideal``: the best expected speed-up over autoregressive decoding over draft lengths k = 1..6,
  ``(1 - a^(k+1)) / (1 - a) / (k c + 1)``, taking a verification as one step (an optimistic bound
  on a CPU, where a block of k + 1 tokens costs a little more than one).

    python benchmarks/draft_vocab.py --model smollm2 --exits 9,15,21,27 --vocab 0,4096,1024,256
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from eedecode.model.corpus import stdlib_root
from eedecode.model.loading import load_model
from eedecode.model.runner import ModelRunner
from eedecode.modes.adaptive.tune import blocks_from, token_ranking
from eedecode.study.data import load_texts

TUNING_MODULES = ("functools.py", "dataclasses.py", "enum.py", "contextlib.py")


def ideal(a: float, c: float) -> float:
    a = min(a, 1 - 1e-9)
    return max((1 - a ** (k + 1)) / (1 - a) / (k * c + 1) for k in range(1, 7))


@torch.no_grad()
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--exits", default="9,15,21,27")
    p.add_argument("--vocab", default="0,4096,1024,256", help="draft vocabulary sizes; 0: the full head")
    p.add_argument("--eval-blocks", type=int, default=8)
    p.add_argument("--reps", type=int, default=30)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    runner = ModelRunner(model)
    L, V = runner.num_layers, runner.vocab_size
    ranking = token_ranking(tok, [(stdlib_root() / m).read_text() for m in TUNING_MODULES])
    texts = [t.text for t in load_texts(["code"])]
    blocks = blocks_from(tok, texts, 128, runner.device)[: args.eval_blocks]
    final = runner.exit_head(runner.run_layers(runner.embed(blocks), 0, L), stats={"argmax"}).argmax
    W, norm = runner.lm_head.weight, runner.norm
    heads = {}
    for n in [int(x) for x in args.vocab.split(",")]:
        n = min(n, len(ranking))  # the tuning text ranks only the tokens it uses
        ids = torch.arange(V) if n == 0 else torch.tensor(ranking[:n])
        heads[n] = (ids, W[ids].contiguous())
    prompt = blocks[:1, :64]
    cache = runner.new_cache(1, 80)
    runner.prefill(prompt, cache)
    token = prompt[:, -1:]

    def step(end, w):
        t0 = time.perf_counter()
        h = runner.run_layers(runner.embed(token), 0, end, cache)
        (norm(h[:, 0]) @ w.t()).argmax(-1).tolist()
        dt = time.perf_counter() - t0
        cache.rollback(torch.tensor([64]), 64, uniform=True)
        return dt

    print(f"{loaded.path}: {L} layers, vocabulary {V}; ranking from {len(ranking)} tuning tokens\n")
    print("| exit layer | draft vocabulary | c (draft step / AR step) | a (agreement) | ideal speed-up |")
    print("|---:|---:|---:|---:|---:|")
    for e in [int(x) for x in args.exits.split(",")]:
        h = runner.run_layers(runner.embed(blocks), 0, e)
        for n, (ids, w) in heads.items():
            times = {"ar": [], "draft": []}
            for _ in range(args.reps):  # paired turns
                times["ar"].append(step(L, W))
                times["draft"].append(step(e, w))
            c = statistics.median(times["draft"]) / statistics.median(times["ar"])
            top = ids[(norm(h) @ w.t()).argmax(-1)]
            a = float((top == final).float().mean())
            print(
                f"| {e} | {'all ' + str(V) if n == 0 else n} | {c:.3f} | {a:.1%} | {ideal(a, c):.2f}× |",
                flush=True,
            )


if __name__ == "__main__":
    main()
