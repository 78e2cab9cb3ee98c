"""What the prompt already says about each exit layer, before any draft is made from it.

The prefill runs every layer over the prompt anyway. While the adaptive policy knows little
about an exit layer, the prefill stops there on its way up, and on the prompt's last
:data:`WINDOW` positions compares that layer's exit-head top-1 with the full model's. That is
the test a greedy draft at that position would face (teacher forcing): a draft from layer ``E``
is accepted exactly when the two agree. (The probe reads the plain top-1: it ignores logits
processors, sampling and a restricted draft vocabulary, which only its statistics would see.)
Two things come of it, both before the first round:

* **The stop rule's calibration** (:class:`eedecode.drafting.stop_rules.Calibration`) is seeded
  with each probed position's confidence and agreement, so drafts from a layer never tried do not
  run to the maximum length on an uninformed prior.
* **The draft-length model** (:class:`eedecode.drafting.run_lengths.RunLengths`) is seeded with
  the runs of agreement along the window. From it and the cost model (:mod:`eedecode.model.costs`)
  the plan (:mod:`.planner`) predicts each exit layer's speed-up, DEL's expected accepted tokens
  per unit of cost (Zarch et al. 2025), and offers only the best layer, and only if it is
  predicted to pay: on a model whose shallow layers agree badly it explores no hopeless arm.

Probing stops for a layer once it has seen :data:`ENOUGH` positions (a couple of prompts) and
resumes now and then, so that a layer not offered can come back. Prompt text agrees less with
the model than the model's own continuations do, so the probe leans pessimistic: its positions
weigh :data:`RUN_WEIGHT` of a drafted token in the draft-length model that sets draft lengths.
Whether a layer is offered at all is judged on the probe alone (the same positions for every
layer): a layer predicted not to beat plain decoding costs exploration and cannot win.
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
