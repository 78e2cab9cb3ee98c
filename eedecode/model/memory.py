"""What eedecode keeps for a model between calls, in one object the caller can see, keep and reset.

Packing the weights, measuring a step's costs and learning a drafting policy take time; all three
hold for one model on one machine, so they are kept: the packed copy of the weights
(:mod:`eedecode.model.packing`), the verification cost table per batch size and block length
(:mod:`eedecode.model.costs`), which library serves its small verification blocks (measured
once), the weight counts the cost prior is built from, and each decoding
mode's learned state (the adaptive mode's policies, one per set of drafting options, and with
``lookup_memory=True`` the n-grams of earlier calls). They live in
the model's :class:`ModelMemory`, which :func:`memory_of` returns (the same object for as long as the
model lives; nothing is attached to the model itself). ``memory_of(model).reset()`` forgets it all.
"""

from __future__ import annotations

import weakref

import torch

_MEMORIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ModelMemory:
    """One model's measured costs and learned decoding state."""

    def __init__(self):
        self.block_costs: dict[tuple[int, int], list[float]] = {}  # (batch, tokens) -> costs
        self.weight_counts: tuple[int, int] | None = None  # (one layer, the LM head)
        #: From how many rows oneDNN serves products, per thread count (model.costs)
        self.onednn_from_rows: dict[int, int] = {}
        #: What the modes learned, by name (its own type): "adaptive" (the policies),
        #: "lookup_memory" (earlier calls' n-grams, eedecode.drafting.lookup.LookupMemory), ...
        self.modes: dict[str, object] = {}
        #: The packed copy of the weights (eedecode.model.packing): (fingerprint, layers, head, sums).
        self.packed: tuple | None = None

    def of_mode(self, name: str, factory):
        """The learned state of mode ``name``, made by ``factory()`` the first time."""
        if name not in self.modes:
            self.modes[name] = factory()
        return self.modes[name]

    def reset(self) -> None:
        """Forget every measurement and everything learned for this model."""
        self.block_costs.clear()
        self.weight_counts = None
        self.onednn_from_rows.clear()
        self.modes.clear()
        self.packed = None

    def __repr__(self) -> str:
        return (
            f"ModelMemory(packed copy: {self.packed is not None}, block cost tables: "
            f"{len(self.block_costs)}, oneDNN from rows: {self.onednn_from_rows}, "
            f"modes with learned state: {sorted(self.modes)})"
        )


def memory_of(model) -> ModelMemory:
    """The :class:`ModelMemory` of ``model`` (a new one the first time)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: must be a torch.nn.Module, got {type(model).__name__}")
    memory = _MEMORIES.get(model)
    if memory is None:
        memory = _MEMORIES[model] = ModelMemory()
    return memory
