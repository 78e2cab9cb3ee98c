"""Fused kernels of eedecode, each a Triton kernel beside its torch reference.

They live inside the package: nothing in the repository may be importable as a top-level
``kernels``, the name of Hugging Face's kernels package, which transformers imports (a folder of
that name at the repository root would shadow it for every command started there). Importing
this package does not import Triton; the Triton backend is loaded on first use.
"""

from .exit_head import BACKEND_ENV, BACKENDS, exit_head
from .exit_head_reference import (
    DEFAULT_STATS,
    DRAFT_STATS,
    STATS,
    ExitHeadStats,
    exit_head_logits,
    exit_head_reference,
    logits_stats,
)

__all__ = [
    "BACKEND_ENV",
    "BACKENDS",
    "DEFAULT_STATS",
    "DRAFT_STATS",
    "STATS",
    "ExitHeadStats",
    "exit_head",
    "exit_head_logits",
    "exit_head_reference",
    "logits_stats",
]
