"""Decoding modes, found by name in one registry (:mod:`eedecode.engine.mode`).

Built in: ``autoregressive`` (the baseline), ``self_speculative`` (LayerSkip-style drafting from
a fixed exit layer, verified over the exit query cache), ``adaptive`` (how to draft chosen at
run time by a bandit: plain, lookup or early-exit drafts) and ``early_exit`` (lossy: each token
leaves at the first exit point whose criterion fires). Adding a mode is one module that defines
a :class:`Mode` subclass and decorates it with :func:`register`.
"""

from ..engine.mode import (
    Mode,
    NoOptions,
    Round,
    all_option_fields,
    build_options,
    get_mode,
    mode_names,
    option,
    option_fields,
    register,
    unregister,
)
from . import adaptive, autoregressive, early_exit, self_speculative  # noqa: F401  (registers the built-in modes)

__all__ = [
    "NoOptions",
    "Round",
    "Mode",
    "all_option_fields",
    "build_options",
    "get_mode",
    "option",
    "option_fields",
    "register",
    "mode_names",
    "unregister",
]
