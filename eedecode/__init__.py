"""eedecode: self-speculative (early-exit) decoding for LLaMA-family models.

``eedecode.generate(model, **inputs)`` is a drop-in for Hugging Face ``model.generate(**inputs)``:
the model drafts with its own first layers and LM head (or copies drafts from its context) and
verifies them in one pass of the full model; greedy output is the same token for token.

Names are imported on first use, so that ``import eedecode`` (and the ``eedecode`` command's
``--help``) does not load torch and transformers.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "generate": "eedecode.api.generation",
    "GenerateOutput": "eedecode.api.generation",
    "GenerationStats": "eedecode.api.generation",
    "DecodingConfig": "eedecode.api.plan",
    "SUPPORTED_ARCHITECTURES": "eedecode.model.compat",
    "demo_model_path": "eedecode.model.demo",
    "LoadedModel": "eedecode.model.loading",
    "load_model": "eedecode.model.loading",
    "ModelRunner": "eedecode.model.runner",
    "ModelMemory": "eedecode.model.memory",
    "memory_of": "eedecode.model.memory",
    "Mode": "eedecode.modes",
    "register": "eedecode.modes",
    "mode_names": "eedecode.modes",
}
#: Earlier names of public objects: still answered, with a DeprecationWarning.
_RENAMED = {"Strategy": "Mode", "strategy_names": "mode_names"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _RENAMED:
        import warnings

        warnings.warn(f"eedecode.{name} is now eedecode.{_RENAMED[name]}", DeprecationWarning, stacklevel=2)
        return __getattr__(_RENAMED[name])
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'eedecode' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
