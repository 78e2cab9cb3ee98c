"""The cost of one draft step and one verification pass relative to an autoregressive step, each
built from the engine's own pieces and timed in turns; and the benchmark's clock."""

from __future__ import annotations

import statistics
import time
from types import SimpleNamespace

import torch

from ..engine.chooser import TokenChooser
from ..model.runner import ModelRunner

clock = time.perf_counter  # the benchmark's clock (tests replace it)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def sync(device) -> None:
    """Wait for the device, so that a clock read after it sees the work done."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# -- step costs ------------------------------------------------------------------------------------
def step_functions(model, prompt: torch.Tensor, exit_layer: int, num_speculations: int):
    """One autoregressive step, one draft step (layers ``[0, E)`` and the exit head) and one
    verification pass of ``k`` drafts (layers ``[E, L)``), built from the engine's own pieces at
    the prompt's length: ``(runner, {name: fn}, reset)``; call ``reset()`` before each step (it
    rolls the cache back to the prompt)."""
    runner = ModelRunner(model)
    chooser = TokenChooser()  # greedy, no logits processors
    state = SimpleNamespace(runner=runner)  # what the chooser reads of a decoder without processors
    L, E, k = runner.num_layers, exit_layer, num_speculations
    P = prompt.shape[1]
    cache = runner.new_cache(1, P + k + 4)
    with torch.no_grad():
        runner.prefill(prompt, cache)
        # exit states of real tokens stand in for the drafts' (what verification reads)
        drafts = prompt[:, -k:] if k <= P else prompt[:, :1].repeat(1, k)
        draft_states = runner.run_layers(runner.embed(drafts), 0, E, runner.new_cache(1, k))
    base = torch.full((1,), P, dtype=torch.long, device=cache.device)
    token = prompt[:, -1:]

    @torch.no_grad()
    def ar_step():
        h = runner.run_layers(runner.embed(token), 0, L, cache)
        chooser.choose(state, runner.logits(h[:, 0])).tolist()  # plain decoding reads every token

    @torch.no_grad()
    def draft_step():
        h = runner.run_layers(runner.embed(token), 0, E, cache)
        chooser.draft(state, h[:, 0], confidence=False)  # no sync: drafting runs ahead of the host

    @torch.no_grad()
    def verify():
        cache.advance(0, E, k)  # the drafts' shallow KV is in the cache when verification runs
        states = torch.cat([draft_states, runner.run_layers(runner.embed(token), 0, E, cache)], 1)
        out = runner.run_layers(states, E, L, cache)
        tokens, n = chooser.accept(state, drafts, states[:, :k], [], runner.logits(out))
        torch.cat([tokens, n[:, None]], 1).tolist()

    def reset():
        cache.rollback(base, P, uniform=True)

    return runner, {"ar_step": ar_step, "draft_step": draft_step, "verify": verify}, reset


def measure_step_costs(
    model, prompt: torch.Tensor, exit_layer: int, num_speculations: int, reps: int = 60
) -> dict:
    """Median wall time of one autoregressive step, one draft step and one verification pass of
    ``k`` drafts (:func:`step_functions`); ``c`` and ``v`` are the latter two relative to the
    first. The three take turns, round after round, so that drifts of the machine touch them alike."""
    _, steps, reset = step_functions(model, prompt, exit_layer, num_speculations)
    samples = {name: [] for name in steps}
    for i in range(reps + 3):  # the first three rounds warm up
        for name, fn in steps.items():
            reset()
            sync(prompt.device)
            t0 = clock()
            fn()
            sync(prompt.device)
            dt = clock() - t0
            if i >= 3:
                samples[name].append(dt)
    times = {name: median(xs) for name, xs in samples.items()}
    return {
        **{f"{name}_s": t for name, t in times.items()},
        "c": times["draft_step"] / times["ar_step"],
        "v": times["verify"] / times["ar_step"],
    }
