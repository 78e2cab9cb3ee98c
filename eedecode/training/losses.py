"""LayerSkip's early-exit training objective (Elhoushi et al. 2024, arXiv 2404.16710, section 4).

The shared final norm + LM head applied to intermediate layers gives an early-exit loss, scaled by
a weight that grows with depth and enabled on a rotating subset of layers at each step
(:func:`exit_loss_weights`); layer dropout whose rate rises with depth (:func:`layer_dropout_rates`)
skips layers per batch row in training mode only. An optional self-distillation term pulls each
exit towards the last layer's distribution. The layers run through :class:`~eedecode.model.runner.ModelRunner`
(no cache: one causal block per row), the same forward that decoding uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from ..model.runner import ModelRunner
from .config import TrainConfig

Tensor = torch.Tensor


def exit_loss_weights(cfg: TrainConfig, step: int) -> dict[int, float]:
    """Normalised loss weights ``{depth: weight}`` at ``step``. The last layer always has scale 1;
    for ``early_exit`` the exit after ``d`` layers has scale ``exit_loss_scale * d / L`` (growing
    with depth, as LayerSkip's) and is enabled when ``(d - 1) % exit_rotation == step %
    exit_rotation`` (LayerSkip's rotational curriculum)."""
    L = cfg.num_layers
    scales = {L: 1.0}
    if cfg.variant == "early_exit" and cfg.exit_loss_scale > 0:
        r = cfg.exit_rotation
        scales.update({d: cfg.exit_loss_scale * d / L for d in range(1, L) if (d - 1) % r == step % r})
    total = sum(scales.values())
    return {d: s / total for d, s in sorted(scales.items())}


def layer_dropout_rates(num_layers: int, p_max: float) -> list[float]:
    """LayerSkip's per-layer dropout rate: ``p_max * (2 ** (i / (L - 1)) - 1)`` for layer ``i``,
    0 for the first layer, ``p_max`` for the last."""
    return [p_max * (2.0 ** (i / (num_layers - 1)) - 1.0) for i in range(num_layers)]


def exit_hidden_states(
    runner: ModelRunner,
    input_ids: Tensor,
    exit_depths: Iterable[int],
    layer_dropout: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
) -> dict[int, Tensor]:
    """``{d: hidden state after d layers [B, T, H]}`` (before the final norm) for each ``d`` in
    ``exit_depths``, running the layers causally over ``input_ids`` ``[B, T]`` and stopping after
    the deepest. In training mode, layer ``i`` is skipped for each row of the batch with
    probability ``layer_dropout[i]``: only the kept rows go through it."""
    wanted = set(exit_depths)
    last = max(wanted)
    rates = layer_dropout if layer_dropout is not None and runner.model.training else [0.0] * last
    h = runner.embed(input_ids)
    batch, out, i = h.shape[0], {}, 0
    while i < last:
        if rates[i] > 0.0:  # one layer, for the rows that keep it
            keep = (torch.rand(batch, generator=generator) >= rates[i]).nonzero().squeeze(1).to(h.device)
            if keep.numel() == batch:
                h = runner.run_layers(h, i, i + 1)
            elif keep.numel() > 0:
                h = h.index_copy(0, keep, runner.run_layers(h[keep], i, i + 1))
            i += 1
        else:  # every row, up to the next exit or layer with dropout
            end = i + 1
            while end < last and end not in wanted and rates[end] <= 0.0:
                end += 1
            h = runner.run_layers(h, i, end)
            i = end
        if i in wanted:
            out[i] = h
    return out


def early_exit_loss(
    runner: ModelRunner,
    input_ids: Tensor,
    weights: dict[int, float],
    layer_dropout: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
    distill: float = 0.0,
    exit_fraction: float = 1.0,
) -> tuple[Tensor, dict[int, Tensor]]:
    """``sum_d weights[d] * loss_d`` over the exit depths ``d`` in ``weights`` for the blocks
    ``input_ids`` ``[B, T + 1]``. ``loss_d`` is the next-token cross-entropy of the exit head on
    the hidden state after ``d`` layers; for an intermediate exit, ``distill`` of it is replaced by
    ``KL(p_L || p_d)`` towards the (detached) last layer when the last layer is among the depths.
    Intermediate exits are scored on a random ``exit_fraction`` of the positions. Returns the
    loss and each depth's cross-entropy (detached)."""
    inputs, labels = input_ids[:, :-1], input_ids[:, 1:].reshape(-1).to(runner.device)
    hidden = exit_hidden_states(runner, inputs, weights, layer_dropout, generator)
    last = runner.num_layers
    # intermediate exits see a random subset of positions: the exit head costs as much as a layer
    n = labels.numel()
    keep = torch.randperm(n, generator=generator)[: max(1, round(n * exit_fraction))].to(labels.device)
    total, ce_by_depth, target_logp = 0.0, {}, None
    for d in sorted(weights, reverse=True):  # the last layer first: it is the distillation target
        h = hidden[d].flatten(0, 1)  # [B*T, H]
        rows = slice(None) if d == last or exit_fraction >= 1.0 else keep
        logits = runner.logits(h[rows])  # [N, V] fp32
        ce = F.cross_entropy(logits, labels[rows])
        term = ce
        if d == last:
            target_logp = logits.detach().log_softmax(-1)
        elif distill > 0 and target_logp is not None:
            target = target_logp[rows]
            kl = F.kl_div(logits.log_softmax(-1), target, log_target=True, reduction="batchmean")
            term = (1.0 - distill) * ce + distill * kl
        total = total + weights[d] * term
        ce_by_depth[d] = ce.detach()
    return total, ce_by_depth
