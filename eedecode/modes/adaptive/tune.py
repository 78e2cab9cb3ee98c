"""``eedecode tune``: prepare the adaptive mode for one model, offline, in a few minutes.

It does three things and writes them to one policy file (JSON), which ``generate(policy_in=...)``
and ``eedecode generate --policy-in`` read:

1. **A layer set to draft through** (Draft & Verify, Zhang et al. 2024; SWIFT, Xia et al. 2024):
   starting from every layer, layers are dropped one at a time, greedily, while the predicted
   speed-up of drafting through the rest improves. The speed-up is predicted from the
   teacher-forced agreement of the reduced model's top-1 with the full model's, on the tuning
   text. The adaptive mode offers the result as an extra arm.
2. **A draft vocabulary**: the tuning text's tokens ranked by frequency. ``draft_vocab=N`` scores
   drafts over the first N of them. Verification keeps the full head.
3. **A warm policy**: the adaptive mode generates from the tuning prompts, so the bandit's
   estimates for this model and machine are already in the file.
"""

from __future__ import annotations

import sys
import time
from collections import Counter

import torch

from ...drafting.drafters import segments
from .policy import Policy

#: Drafts per round assumed when predicting the speed-up of a layer set.
PREDICT_DRAFTS = 4


def predicted_speedup(agreement: float, layers: int, num_layers: int, k: int = PREDICT_DRAFTS) -> float:
    """Tokens per round over the round's cost in full steps: ``(1 - a^(k+1)) / (1 - a)`` tokens
    (Leviathan et al. 2023) for ``k`` drafts of cost ``layers / num_layers`` each, plus one
    verification pass of about one step."""
    a = min(agreement, 1.0 - 1e-9)
    return (1 - a ** (k + 1)) / (1 - a) / (k * layers / num_layers + 1.0)


@torch.no_grad()
def layer_set_agreement(runner, blocks: torch.Tensor, layers, final: torch.Tensor) -> float:
    """Top-1 agreement of the model reduced to ``layers`` with the full model's top-1 ``final``
    on token blocks ``[N, T]`` (teacher-forced, no cache)."""
    h = runner.embed(blocks)
    for a, b in segments(layers):
        h = runner.run_layers(h, a, b)
    return float((runner.exit_head(h, stats={"argmax"}).argmax == final).float().mean())


@torch.no_grad()
def search_skip_layers(runner, blocks: torch.Tensor, progress=None) -> tuple[list[int], float, float]:
    """Greedy layer removal (see the module docstring). Returns the layer set, its agreement and
    its predicted speed-up; the set is empty when no removal pays (then no skip arm is offered)."""
    L = runner.num_layers
    final = runner.exit_head(runner.run_layers(runner.embed(blocks), 0, L), stats={"argmax"}).argmax
    current = list(range(L))
    best_a, best_s = 1.0, predicted_speedup(1.0, L, L)
    while len(current) > 1:
        trials = []
        for layer in current:
            rest = [i for i in current if i != layer]
            a = layer_set_agreement(runner, blocks, rest, final)
            trials.append((predicted_speedup(a, len(rest), L), a, rest))
            if progress is not None:
                progress.update(1)
        speed, a, rest = max(trials, key=lambda t: t[0])
        if speed <= best_s:
            break
        current, best_a, best_s = rest, a, speed
    return (current if len(current) < L else []), best_a, best_s


def token_ranking(tokenizer, texts: list[str]) -> list[int]:
    """Token ids of ``texts``, most frequent first."""
    counts = Counter()
    for text in texts:
        counts.update(tokenizer(text).input_ids)
    return [token for token, _ in counts.most_common()]


def blocks_from(tokenizer, texts: list[str], length: int, device) -> torch.Tensor:
    """Non-overlapping ``[N, length]`` blocks of the texts' tokens."""
    ids = [t for text in texts for t in tokenizer(text).input_ids]
    n = max(1, len(ids) // length)
    ids = (ids + ids[:1] * length)[: n * length]
    return torch.tensor(ids, device=device).view(n, length)


def add_subcommand(subparsers) -> None:
    from ...arguments import add_model_arguments, positive_int

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
    from pathlib import Path

    from tqdm.auto import tqdm

    from ...arguments import set_threads
    from ...bench import load_prompts
    from ...generation import generate
    from ...model.loading import load_model
    from ...model.runner import ModelRunner

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
    out = Path(args.out)
    tuned = {"skip_layers": layers, "draft_vocab": ranking}
    seed = Policy([], model="", tuned=tuned)
    seed.save(out)  # a policy with the tuned pieces; generating with it fills in the arms' stats
    for prompt in tqdm(prompts, desc="warm policy", leave=False):
        inputs = tokenizer(prompt, return_tensors="pt").to(runner.device)
        generate(model, **inputs, max_new_tokens=args.max_new_tokens, policy_in=str(out), policy_out=str(out))
    best = Policy.load(out).best()
    print(
        f"{path}: "
        + (
            f"drafting through {len(layers)} of {L} layers {layers} agrees {agreement:.1%} with the full "
            f"model (predicted {speed:.2f}x); "
            if layers
            else "no layer set pays for drafting (dropping any layer predicts a slowdown); "
        )
        + f"{len(ranking)} distinct tokens ranked; best arm so far {best.key}; "
        f"{time.perf_counter() - t0:.0f} s\n[eedecode] policy: {out}",
        file=sys.stderr,
    )
    return 0
