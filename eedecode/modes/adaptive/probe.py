"""What the prompt already says about each exit layer, before any draft is made from it; and
the adaptive mode's cost model.

The prefill runs every layer over the prompt anyway. While the adaptive policy knows little
about an exit layer, the prefill stops there on its way up, and on the prompt's last
:data:`WINDOW` positions compares that layer's exit-head top-1 with the full model's. That is
the test a greedy draft at that position would face (teacher forcing): a draft from layer ``E``
is accepted exactly when the two agree. (The probe reads the plain top-1: it ignores logits
processors, sampling and a restricted draft vocabulary, which only its statistics would see.)
Two things come of it, both before the first round:

* **The stop rule's calibration** (:class:`eedecode.drafting.stop_rules.Calibration`) is seeded with each
  probed position's confidence and agreement, so drafts from a layer never tried do not run to
  the maximum length on an uninformed prior.
* **The draft-length model** (:class:`eedecode.drafting.run_lengths.RunLengths`) is seeded with the runs of
  agreement along the window. From it and the costs (:func:`layer_cost`, :func:`prior_costs`,
  :func:`measured_costs`) the adaptive mode predicts each exit layer's speed-up, DEL's expected
  accepted tokens per unit of cost (Zarch et al. 2025), and offers only the best layer, and
  only if it is predicted to pay: on a model whose shallow layers agree badly it explores no
  hopeless arm.

Probing stops for a layer once it has seen :data:`ENOUGH` positions (a couple of prompts) and
resumes now and then, so that a layer not offered can come back. Prompt text agrees less with
the model than the model's own continuations do, so the probe leans pessimistic: its positions
weigh :data:`RUN_WEIGHT` of a drafted token in the draft-length model that sets draft lengths.
Whether a layer is offered at all is judged on the probe alone (the same positions for every
layer): a layer predicted not to beat plain decoding costs exploration and cannot win.
"""

from __future__ import annotations

import weakref

import torch

Tensor = torch.Tensor
#: model -> (weights of one layer, weights of the LM head): counted once per model.
_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

#: Prompt positions probed per call (the last ones).
WINDOW = 32
#: Probed positions per exit layer after which probing that layer stops.
ENOUGH = 64
#: What a probed position weighs in the draft-length model against a draft judged in a round:
#: prompt text agrees with the model less than the model's own continuations, so rounds soon
#: outweigh the probe.
RUN_WEIGHT = 0.25
#: Offer an exit layer when its predicted speed-up over plain decoding is at least this.
PAYS = 1.0
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
        window[E], start = h[:, P - W :].clone(), E  # a copy: the whole block is not kept alive
    h = runner.run_layers(h, start, runner.num_layers, cache)
    positions = torch.arange(P - W, P, device=h.device)
    final = runner.exit_head(h[:, P - W :], stats=("argmax",)).argmax  # [B, W], on the head's device
    real = (positions[None, :] >= cache.pad.to(h.device)[:, None]).to(final.device)  # [B, W]
    probes = {}
    for E, s in window.items():  # the exit head's statistics, chunked over the vocabulary
        st = runner.exit_head(translate(E, s) if translate is not None else s, stats=("argmax", "max_prob"))
        probes[E] = (st.max_prob, st.argmax == final)
    return h[:, -1], probes, real


def layer_cost(runner, exit_layer: int) -> float:
    """A draft step from ``exit_layer`` in full steps, by the weights it reads (its layers and the
    LM head against every layer and the head): a decoding step reads each weight once."""
    if runner.model not in _WEIGHTS:
        _WEIGHTS[runner.model] = (
            sum(p.numel() for p in runner.layers[0].parameters()),
            runner.lm_head.weight.numel(),
        )
    per_layer, head = _WEIGHTS[runner.model]
    return (exit_layer * per_layer + head) / (runner.num_layers * per_layer + head)


def prior_costs(max_drafts: int) -> list[float]:
    """``v(T)`` for ``T = 1 .. max_drafts + 1`` before anything is measured: a verification of
    ``T`` tokens as one plain step plus :data:`VERIFY_SLOPE` per extra token."""
    return [1.0 + VERIFY_SLOPE * (T - 1) for T in range(1, max_drafts + 2)]


def measured_costs(seconds: dict, entry: int, costs: list[float]) -> list[float]:
    """A verification of ``T`` tokens entering at layer ``entry`` and its round's bookkeeping, in
    plain decoding rounds, from ``seconds`` (the adaptive mode's measured times: ``none``,
    ``overhead``, ``verify:<entry>:<T>`` and, for an exit layer, ``exit:E=<entry>``, the pass
    that makes the last draft's exit state); ``costs[T - 1]`` (the prior) where not measured."""
    full, overhead = seconds.get("none"), seconds.get("overhead", 0.0)
    overhead += seconds.get(f"exit:E={entry}", 0.0) if entry else 0.0
    out = []
    for T, prior in enumerate(costs, start=1):
        v = seconds.get(f"verify:{entry}:{T}")
        out.append((v + overhead) / full if v and full else prior)
    return out
