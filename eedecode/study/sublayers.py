"""Sub-layer points of a decoder layer, for the exit head: the residual stream after attention and
after the MLP, and each module's output alone (the sub-layer analysis of "Early Exit Is a
Natural Capability in Transformer-based Models", arXiv 2412.01455: the skip connection's top-10
hypotheses are stable, the modules' are not).

A LLaMA layer computes ``a = x + attn(x)`` and ``y = a + mlp(a)``. The model runner runs a layer as
one piece; to see ``attn(x)`` and ``mlp(a)`` the study registers forward hooks on each layer's
``self_attn.o_proj`` and ``mlp`` and builds a runner after them, which then calls those modules
(the runner's documented behaviour for hooked modules) with the same numbers. Nothing of the
layer's forward is copied here.
"""

from __future__ import annotations

import contextlib

import torch

Tensor = torch.Tensor

#: The exit head is applied at these points of every studied layer.
POINTS = ("after_attention", "after_mlp", "attention", "mlp")
POINT_NAMES = {
    "after_attention": "residual after attention (x + attn)",
    "after_mlp": "residual after MLP (layer output)",
    "attention": "attention output alone",
    "mlp": "MLP output alone",
}


@contextlib.contextmanager
def capture_sublayers(model, layers: list[int]):
    """Hooks on ``layers``' attention output projection and MLP; yields ``{layer: {"attn": out,
    "mlp": out}}``, refreshed whenever a runner built inside the block runs those layers."""
    store: dict[int, dict[str, Tensor]] = {}
    handles = []

    def keep(i, key):
        return lambda module, args, out: store.setdefault(i, {}).__setitem__(key, out)

    try:
        for i in layers:
            layer = model.model.layers[i]
            handles.append(layer.self_attn.o_proj.register_forward_hook(keep(i, "attn")))
            handles.append(layer.mlp.register_forward_hook(keep(i, "mlp")))
        yield store
    finally:
        for h in handles:
            h.remove()


def overlap(a: Tensor, b: Tensor) -> Tensor:
    """Share of the ids in each row of ``a [n, k]`` that appear in the same row of ``b [n, k']``."""
    return (a[:, :, None] == b[:, None, :]).any(-1).float().mean(-1)
