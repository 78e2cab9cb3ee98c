"""Training the tuned lens (:class:`~eedecode.model.translator.TunedLens`): one affine translator
per exit depth, ``h -> W_d h + b_d``, put in front of the model's own exit head (Belrose et al.
2023, "Eliciting Latent Predictions from Transformers with the Tuned Lens", arXiv 2303.08112).

Translators start at the identity (``W = I``, ``b = 0``: the logit lens) and are trained on the
frozen model by distillation: per token of a training split, minimise
``KL(p_final || softmax(head(W_d h_d + b_d)))``, with ``head`` the model's final norm and LM head
(:meth:`ModelRunner.logits`). Adam with a linearly decaying learning rate (the paper uses SGD with
Nesterov momentum; Adam needs no per-model learning rate); every depth's translator is trained on
the same batches, one backward pass per depth.

The file it writes is read back, checked, by :meth:`TunedLens.load`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass

import torch

from ..model.runner import ModelRunner
from ..model.translator import FORMAT, TunedLens, read_lens  # noqa: F401 (re-exported)

Tensor = torch.Tensor

#: Adam's epsilon: far below the translators' gradients in real training (~1e-2 on SmolLM2), far
#: above float rounding noise (~1e-6), which Adam would otherwise scale up to full-size steps when
#: a translator already sits at its optimum (a layer that changes nothing).
ADAM_EPS = 1e-5


def check_lens_file(path, what: str = "translators", num_layers: int | None = None) -> list[int]:
    """The depths an eedecode tuned-lens file translates (:func:`~eedecode.model.translator.read_lens`)."""
    return read_lens(path, what, num_layers)[1]


@dataclass(frozen=True)
class TunedLensConfig:
    steps: int = 250  # optimiser steps (all depths train on each batch)
    batch_tokens: int = 256
    lr: float = 1e-3
    time_budget_s: float | None = None  # stop early when training has taken this long
    seed: int = 0


@contextlib.contextmanager
def _frozen(model):
    """No gradients for the model's own weights while the translators train."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@torch.no_grad()
def collect_states(
    runner: ModelRunner, blocks: Tensor, depths, batch_tokens: int = 1024
) -> dict[int, Tensor]:
    """The states ``[n, H]`` after each of ``depths`` and after the last layer, over ``blocks``'s
    predicted positions."""
    wanted = set(depths) | {runner.num_layers}
    rows = max(1, batch_tokens // (blocks.shape[1] - 1))
    out: dict[int, list] = {d: [] for d in wanted}
    for start in range(0, blocks.shape[0], rows):
        h = runner.embed(blocks[start : start + rows, :-1].to(runner.device))
        for i in range(runner.num_layers):
            h = runner.run_layers(h, i, i + 1)
            if i + 1 in wanted:
                out[i + 1].append(h.flatten(0, 1))
    return {d: torch.cat(v) for d, v in out.items()}


def fit_tuned_lens(
    runner: ModelRunner, blocks: Tensor, depths, config: TunedLensConfig = TunedLensConfig(), progress=None
) -> tuple[TunedLens, dict]:
    """Train translators for ``depths`` on ``blocks [N, T]``; returns the lens and a training record
    (seconds, steps, tokens, and per depth the KL to the final layer on the first and last batches)."""
    t0 = time.perf_counter()
    states = collect_states(runner, blocks, depths)
    final = states.pop(runner.num_layers)
    lens = TunedLens(final.shape[-1], runner.num_layers, depths).to(final.device)
    opt = torch.optim.Adam(lens.parameters(), lr=config.lr, eps=ADAM_EPS)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / max(config.steps, 1))
    gen = torch.Generator().manual_seed(config.seed)
    order, pos, n = torch.randperm(final.shape[0], generator=gen), 0, final.shape[0]
    first, last, steps = {}, {}, 0
    with _frozen(runner.model):
        for steps in range(1, config.steps + 1):  # noqa: B007 (steps is read after the loop)
            if pos + config.batch_tokens > n:
                order, pos = torch.randperm(n, generator=gen), 0
            idx = order[pos : pos + config.batch_tokens].to(final.device)
            pos += config.batch_tokens
            losses = _step(runner, lens, states, final, idx, opt)
            first = first or losses
            last = losses
            sched.step()
            if progress is not None:
                progress.update(1)
            if config.time_budget_s is not None and time.perf_counter() - t0 > config.time_budget_s:
                break
    record = {
        "seconds": time.perf_counter() - t0,
        "steps": steps,
        "tokens": n,
        "config": asdict(config),
        "kl_first_batch": {str(d): first.get(d) for d in lens.depths},
        "kl_last_batch": {str(d): last.get(d) for d in lens.depths},
    }
    return lens.eval(), record


def _step(runner, lens: TunedLens, states, final, idx, opt) -> dict[int, float]:
    """One optimiser step on the batch ``idx``; returns each depth's KL before the step."""
    with torch.no_grad():
        target = torch.log_softmax(runner.logits(final[idx]), dim=-1)  # [b, V]
        p = target.exp()
    opt.zero_grad(set_to_none=True)
    losses = {}
    for d in lens.depths:
        logq = torch.log_softmax(runner.logits(lens(d, states[d][idx])), dim=-1)
        loss = (p * (target - logq)).sum(-1).mean()
        loss.backward()  # one depth at a time: its [b, V] graph is freed before the next
        losses[d] = loss.detach().item()
    opt.step()
    return losses
