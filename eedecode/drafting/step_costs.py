"""What one draft step and one verification pass cost against a plain decoding step, measured with
the drafters' own pieces (:class:`~eedecode.drafting.exit.ExitDrafter`, :func:`verify`, the plain
step) on a real :class:`~eedecode.engine.state.DecodingState`: ``c`` and ``v`` of the cost model
(:mod:`eedecode.model.costs`). The benchmark reports them; the agreement study predicts speed with
them."""

from __future__ import annotations

import statistics
import time

import torch

from ..engine.chooser import TokenChooser
from ..engine.state import DecodingState
from ..engine.steps import plain_step
from ..model.runner import ModelRunner
from .base import Proposal
from .exit import ExitDrafter
from .steps import draft_steps
from .verify import verify


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def step_functions(model, prompt: torch.Tensor, exit_layer: int, num_speculations: int):
    """One plain step, one draft step (layers ``[0, E)`` and the exit head) and one verification
    pass of ``k`` drafts (layers ``[E, L)`` over their exit states), greedy, at the prompt's
    length: ``(runner, {name: fn}, reset)``; call ``reset()`` before each step (it rolls the cache
    back to the prompt). Plain steps and verifications read their tokens on the host, as decoding
    does; a draft step does not."""
    runner = ModelRunner(model)
    k, P = num_speculations, prompt.shape[1]
    state = DecodingState(runner, TokenChooser(), prompt, max_new_tokens=k + 2, max_drafts=k)
    drafter = ExitDrafter(exit_layer)
    with torch.no_grad():
        runner.prefill(prompt, state.cache)
        state.pending = prompt[:, -1].to(state.pending.device)
        # exit states of real tokens stand in for the drafts' (what verification reads)
        drafts = prompt[:, -k:] if k <= P else prompt[:, :1].repeat(1, k)
        scratch = DecodingState(runner, state.chooser, drafts, max_new_tokens=1)
        draft_states = drafter.forward(scratch, drafts)  # [B, k, H]
    base = torch.full((prompt.shape[0],), P, dtype=torch.long, device=state.cache.device)
    token = state.pending[:, None]

    @torch.no_grad()
    def ar_step():
        plain_step(state).tokens.tolist()

    @torch.no_grad()
    def draft_step():
        draft_steps(state, 1, None, lambda x: drafter.forward(state, x))

    @torch.no_grad()
    def verify_step():
        state.cache.advance(0, exit_layer, k)  # the drafts' shallow KV is in the cache by then
        states = torch.cat([draft_states, drafter.forward(state, token)], 1)  # [B, k + 1, H]
        proposal = Proposal(drafts.to(token.device), None, [], exit_layer, states, draft_states)
        rnd = verify(state, proposal)
        torch.cat([rnd.tokens, rnd.counts[:, None]], 1).tolist()

    def reset():
        state.cache.rollback(base, P, uniform=True)

    return runner, {"ar_step": ar_step, "draft_step": draft_step, "verify": verify_step}, reset


def measure_step_costs(
    model, prompt: torch.Tensor, exit_layer: int, num_speculations: int, reps: int = 60, clock=None
) -> dict:
    """Median wall time of one plain step, one draft step and one verification pass of ``k``
    drafts (:func:`step_functions`); ``c`` and ``v`` are the latter two relative to the first.
    The three take turns, round after round, so that drifts of the machine touch them alike.
    ``clock``: what to read the time with (default ``time.perf_counter``)."""
    clock = clock or time.perf_counter
    _, steps, reset = step_functions(model, prompt, exit_layer, num_speculations)
    samples = {name: [] for name in steps}
    for i in range(reps + 3):  # the first three rounds warm up
        for name, fn in steps.items():
            reset()
            _sync(prompt.device)
            t0 = clock()
            fn()
            _sync(prompt.device)
            dt = clock() - t0
            if i >= 3:
                samples[name].append(dt)
    times = {name: statistics.median(xs) for name, xs in samples.items()}
    return {
        **{f"{name}_s": t for name, t in times.items()},
        "c": times["draft_step"] / times["ar_step"],
        "v": times["verify"] / times["ar_step"],
    }
