"""``eedecode tune``: prepare the adaptive mode for one model (a layer set to draft through, a
draft vocabulary, a warm policy) and write it to one policy file (:mod:`eedecode.modes.adaptive.tune`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..model.loading import add_model_arguments, set_threads
from ..modes.adaptive import policy_file
from ..modes.adaptive.bandit import Bandit
from ..modes.adaptive.store import Policy, Tuned
from ..modes.adaptive.tune import blocks_from, search_skip_layers, token_ranking
from .arguments import positive_int


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser("tune", help="find a draft layer set and vocabulary, warm the adaptive policy")
    add_model_arguments(p)
    p.add_argument(
        "--data", nargs="*", default=None, help="text or .py files (default: the benchmark prompts)"
    )
    p.add_argument("--num-prompts", type=positive_int, default=8, help="prompts used to warm the policy")
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--block-length", type=positive_int, default=128, help="tokens per teacher-forced block")
    p.add_argument("--max-blocks", type=positive_int, default=4)
    p.add_argument("--out", required=True, help="the policy file to write (JSON)")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    from tqdm.auto import tqdm

    from ..api.generation import generate
    from ..bench import load_prompts
    from ..model.loading import load_model
    from ..model.runner import ModelRunner

    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        raise ValueError(f"--out: must be a file path in an existing folder, got {args.out!r}")
    set_threads(args)
    model, tokenizer, path, _ = load_model(args.model, args.device, args.dtype)
    if tokenizer is None:
        raise ValueError(f"model: {path} has no tokenizer; `eedecode tune` needs one")
    prompts = [row["prompt"] for row in load_prompts(None, args.num_prompts)]
    texts = [Path(f).read_text() for f in args.data] if args.data else prompts
    t0 = time.perf_counter()
    runner = ModelRunner(model)
    blocks = blocks_from(tokenizer, texts, args.block_length, runner.device)[: args.max_blocks]
    L = runner.num_layers
    with tqdm(total=L * (L + 1) // 2, desc="layer set", leave=False) as bar:
        layers, agreement, speed = search_skip_layers(runner, blocks, bar)
    ranking = token_ranking(tokenizer, texts)
    seed = Policy([], Bandit([]), tuned=Tuned(tuple(layers), tuple(ranking)))
    policy_file.save(seed, out)  # the tuned pieces; generating with it fills in the arms' stats
    for prompt in tqdm(prompts, desc="warm policy", leave=False):
        inputs = tokenizer(prompt, return_tensors="pt").to(runner.device)
        generate(model, **inputs, max_new_tokens=args.max_new_tokens, policy_in=str(out), policy_out=str(out))
    best = policy_file.load(out, "--out").best()
    print(
        f"{path}: "
        + (
            f"drafting through {len(layers)} of {L} layers {layers} agrees {agreement:.1%} with the full "
            f"model (predicted {speed:.2f}x); "
            if layers
            else "no layer set pays for drafting (dropping any layer predicts a slowdown); "
        )
        + f"{len(ranking)} distinct tokens ranked; best so far: {best.describe()}; "
        f"{time.perf_counter() - t0:.0f} s\n[eedecode] policy: {out}",
        file=sys.stderr,
    )
    return 0
