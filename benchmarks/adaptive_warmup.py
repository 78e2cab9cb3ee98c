"""The adaptive mode cold and warm: what its learning costs, and a policy file to start warm.

``passes``: eedecode autoregressive, static self-speculation and the adaptive mode take turns on
every prompt, for several passes over the prompts in one process. The adaptive mode's policy is
kept between passes, so the first pass shows it cold and the later ones warm. It prints each
pass's total-time speed-up over autoregressive decoding.

``learn``: writes a policy file by generating from openings of standard-library modules that are
not in the benchmark's prompt set (``policy_out=``, no settings), for ``policy_in=`` later.

    python benchmarks/adaptive_warmup.py passes --model demo --passes 4
    python benchmarks/adaptive_warmup.py learn --model demo --out runs/warm_demo.json
    M=eedecode_ar,eedecode_ss@exit_layer=2@num_speculations=2,eedecode_auto
    eedecode bench --model demo --threads 1 --num-prompts 24 \\
        --methods $M,eedecode_auto@policy_in=runs/warm_demo.json
"""

from __future__ import annotations

import argparse
import time

import torch

import eedecode
from eedecode.bench import load_prompts
from eedecode.bench.measure import encode_prompts
from eedecode.model.corpus import stdlib_root
from eedecode.model.loading import load_model

#: Text to learn from: standard-library modules outside the benchmark's held-out prompt modules.
LEARN_MODULES = ("functools.py", "dataclasses.py", "enum.py", "contextlib.py")


def passes(model, tokenizer, args) -> None:
    ids = encode_prompts(tokenizer, load_prompts(None, args.num_prompts), model.config.vocab_size, "cpu")
    modes = {
        "autoregressive": dict(mode="autoregressive"),
        f"static E={args.exit_layer} k={args.num_speculations}": dict(
            exit_layer=args.exit_layer, num_speculations=args.num_speculations
        ),
        "adaptive": dict(),
    }
    names = list(modes)
    for name in names:  # warm-up: one untimed prompt for the fixed modes only
        if name != "adaptive":
            eedecode.generate(model, ids[0], max_new_tokens=args.max_new_tokens, **modes[name])
    for p in range(args.passes):
        total = dict.fromkeys(names, 0.0)
        for i, x in enumerate(ids):
            for name in names[i % 3 :] + names[: i % 3]:  # rotating turns
                t0 = time.perf_counter()
                eedecode.generate(model, x, max_new_tokens=args.max_new_tokens, **modes[name])
                total[name] += time.perf_counter() - t0
        ratios = ", ".join(f"{n} {total[names[0]] / total[n]:.3f}x" for n in names[1:])
        print(f"pass {p} ({'cold' if p == 0 else 'warm'}): {ratios} autoregressive", flush=True)


def learn(model, tokenizer, args) -> None:
    texts = [(stdlib_root() / m).read_text() for m in LEARN_MODULES]
    openings = [t[i : i + 500] for t in texts for i in range(0, 8000, 2000)]
    for text in openings:
        inputs = tokenizer(text, return_tensors="pt")
        eedecode.generate(model, **inputs, max_new_tokens=args.max_new_tokens, policy_out=args.out)
    print(f"policy learned from {len(openings)} openings: {args.out}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("job", choices=("passes", "learn"))
    p.add_argument("--model", default="demo")
    p.add_argument("--num-prompts", type=int, default=24)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--passes", type=int, default=4)
    p.add_argument("--exit-layer", type=int, default=2)
    p.add_argument("--num-speculations", type=int, default=2)
    p.add_argument("--out", default="warm.json", help="learn: the policy file to write")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    loaded = load_model(args.model)
    (passes if args.job == "passes" else learn)(loaded.model, loaded.tokenizer, args)


if __name__ == "__main__":
    main()
