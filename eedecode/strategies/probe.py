"""What the prompt already says about each exit layer, before any draft is made from it.

The prefill runs every layer over the prompt anyway. While the adaptive policy knows little
about an exit layer, the prefill stops there on its way up, and on the prompt's last
:data:`WINDOW` positions compares that layer's exit-head top-1 with the full model's. That is
the test a greedy draft at that position would face (teacher forcing): a draft from layer ``E``
is accepted exactly when the two agree. Two things come of it, both before the first round:

* **The stop rule's calibration** (:class:`eedecode.stopping.Calibration`) is seeded with each
  probed position's confidence and agreement, so drafts from a layer never tried do not run to
  the maximum length on an uninformed prior.
* **A predicted speed-up per exit layer** (:func:`predicted_speedup`), DEL's expected accepted
  tokens per unit of cost (Zarch et al. 2025), from the layer's acceptance and the measured costs
  of a draft step and a verification. Exit layers predicted not to pay are not offered to the
  bandit: on a model whose shallow layers agree badly it explores no hopeless arm, and the
  prediction uses the costs of the batch size at hand, where a larger block costs more.

Probing stops for a layer once it has seen :data:`ENOUGH` positions (a few prompts); after that
the prefill runs as usual, and the prediction follows the layer's calibration, which the real
drafts keep updating. Prompt text agrees less with the model than the model's own continuations
do, so the prediction leans pessimistic; :data:`PAYS` leaves room for that.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

#: Prompt positions probed per call (the last ones).
WINDOW = 32
#: Probed positions per exit layer after which probing that layer stops.
ENOUGH = 64
#: What a probed position weighs in the draft-length model against a draft judged in a round:
#: prompt text agrees with the model less than the model's own continuations, so rounds soon
#: outweigh the probe.
RUN_WEIGHT = 0.25
#: Offer an exit layer when its predicted speed-up over plain decoding is at least this.
PAYS = 0.85
#: Before it is measured: what each token beyond the first adds to a verification, in plain
#: decoding steps (on a CPU at batch size 1, 0.1-0.3 for the demo models; near 0 on a GPU).
VERIFY_SLOPE = 0.2


@torch.no_grad()
def probed_prefill(state, input_ids: Tensor, layers: list[int], translate=None) -> tuple:
    """The prompt ``[B, P]`` through every layer (as :meth:`ModelRunner.prefill`), stopping at each
    of ``layers`` to probe its exit head on the last ``W`` positions. Returns the last state
    ``[B, H]``; per probed layer ``(confidence, agreed)`` ``[B, W]``: the exit head's top-1
    probability and whether its top-1 is the full model's; and ``real`` ``[B, W]``, the positions
    that are not padding. ``translate(E, h)``: a translator in front of the head (the drafts'
    own), or None."""
    runner, cache = state.runner, state.cache
    P = input_ids.shape[1]
    W = min(P, WINDOW)
    h, start, window = runner.embed(input_ids), 0, {}
    for E in sorted(layers):
        h = runner.run_layers(h, start, E, cache)
        window[E], start = h[:, P - W :], E
    h = runner.run_layers(h, start, runner.num_layers, cache)
    positions = torch.arange(P - W, P, device=h.device)
    real = positions[None, :] >= cache.pad.to(h.device)[:, None]  # [B, W]
    final = runner.logits(h[:, P - W :]).argmax(-1)  # [B, W]
    probes = {}
    for E, s in window.items():  # one layer at a time: [B, W, V] logits
        logits = runner.logits(translate(E, s) if translate is not None else s)
        top = logits.max(-1)
        confidence = (top.values - logits.logsumexp(-1)).exp()  # the top-1 probability
        probes[E] = (confidence, top.indices == final)
    return h[:, -1], probes, real


def layer_cost(runner, exit_layer: int) -> float:
    """A draft step from ``exit_layer`` in full steps, by the weights it reads (its layers and the
    LM head against every layer and the head): a decoding step reads each weight once."""
    per_layer = sum(p.numel() for p in runner.layers[0].parameters())
    head = runner.lm_head.weight.numel()
    return (exit_layer * per_layer + head) / (runner.num_layers * per_layer + head)


def prior_costs(max_drafts: int) -> list[float]:
    """``v(T)`` for ``T = 1 .. max_drafts + 1`` before anything is measured: a verification of
    ``T`` tokens as one plain step plus :data:`VERIFY_SLOPE` per extra token."""
    return [1.0 + VERIFY_SLOPE * (T - 1) for T in range(1, max_drafts + 2)]
