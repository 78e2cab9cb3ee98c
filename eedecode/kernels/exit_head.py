"""The exit head: final RMSNorm -> LM head -> softmax statistics, without [tokens, vocab] logits.

Evaluated at every draft step of self-speculative decoding (LayerSkip, Elhoushi et al. 2024): the
argmax is the greedy draft, max_prob / entropy / margin feed exit and stop rules, `sample` and
`token_logprob` give speculative sampling its draft x ~ q and q(x) (Leviathan et al. 2023).

Backends: "triton" (`exit_head_triton.py`) and "reference" (`exit_head_reference.py`, chunked torch).
Chosen per call: the `backend` argument, else the environment variable EEDECODE_EXIT_HEAD_BACKEND,
else Triton for CUDA tensors and the reference otherwise. The Triton backend runs CPU tensors only
in Triton's interpreter, i.e. when TRITON_INTERPRET=1 is set, and was set before triton was first
imported (Triton reads it when it decorates its own library).

Sampling is Gumbel-max: sample = argmax_v(z_v + g_v), z = logits / temperature,
g = -log(-log u) with u in [2^-24, 1 - 2^-24] drawn from a counter-based hash of
(seed, flat row index, vocabulary index) (`exit_head_reference.row_keys`, `gumbel_noise`), which
both backends implement bit for bit: the same seed gives the same sample on either (up to
floating-point near-ties of z + g). Pass a different seed for every step.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import os
from numbers import Integral, Real

import torch

from .exit_head_reference import DEFAULT_STATS, STATS, ExitHeadStats, exit_head_reference

BACKEND_ENV = "EEDECODE_EXIT_HEAD_BACKEND"
BACKENDS = ("triton", "reference")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def exit_head(
    hidden: torch.Tensor,  # [..., H]
    norm_weight: torch.Tensor,  # [H]
    eps: float,
    lm_head_weight: torch.Tensor,  # [V, H]
    *,
    temperature: float | None = None,
    token_ids: torch.Tensor | None = None,  # [...]
    seed: int | torch.Tensor | None = None,
    backend: str | None = None,
    stats: frozenset[str] | set[str] | tuple[str, ...] = DEFAULT_STATS,
    top_k: int = 0,
) -> ExitHeadStats:
    """Softmax statistics of logits = RMSNorm(hidden) @ lm_head_weight.T, per leading index.

    ``stats`` names the statistics wanted (:data:`STATS`); others may come back as None.
    :data:`DRAFT_STATS` (``argmax``, ``max_prob``, ``logsumexp``: what a greedy draft step and a
    confidence rule need) lets the reference skip the rest; the Triton kernel computes its
    fixed set at no extra cost. ``top_k > 0`` adds the k likeliest tokens and their
    probabilities (computed by the reference: the kernel has no top-k).

    All statistics, `token_logprob` and `sample` are of softmax(logits / temperature). See
    `ExitHeadStats` for the fields. No autograd. No host synchronisation, provided that on a GPU
    the seed is a device tensor (a Python int is copied to the device, which waits) and the
    temperature a Python number; that is also what a CUDA graph capture of this call needs.
    """
    _check_shapes(hidden, norm_weight, lm_head_weight, token_ids)
    stats = _check_stats(stats, top_k)
    lead, H = hidden.shape[:-1], hidden.shape[-1]
    inv_temperature = 1.0 if temperature is None else 1.0 / _check_temperature(temperature)
    x = hidden if hidden.dim() == 2 else hidden.reshape(-1, H)
    x = x if x.stride(-1) == 1 else x.contiguous()
    tok = None if token_ids is None else token_ids.reshape(-1).to(torch.int64)
    seed_t = None if seed is None else _seed_tensor(seed, hidden.device)
    name = _resolve_backend(backend, hidden.device)

    if name == "reference" or x.shape[0] == 0 or top_k:
        flat = exit_head_reference(
            x, norm_weight, eps, lm_head_weight, inv_temperature, tok, seed_t, stats=stats, top_k=top_k
        )
    else:
        impl = _triton_impl(hidden.device)
        w = lm_head_weight if lm_head_weight.stride(-1) == 1 else lm_head_weight.contiguous()
        out_f, out_i = impl.exit_head_triton(
            x, norm_weight.contiguous(), eps, w, inv_temperature, tok, seed_t
        )
        flat = ExitHeadStats(
            argmax=out_i[0],
            max_prob=out_f[0],
            entropy=out_f[1],
            logsumexp=out_f[2],
            margin=out_f[3],
            token_logprob=out_f[4] if tok is not None else None,
            sample=out_i[1] if seed_t is not None else None,
        )
    if hidden.dim() == 2:  # already [T, H]: reshapes would be no-ops that still cost a dispatch each
        return flat
    # top-k fields are [N, k]: they keep their trailing dimension
    return ExitHeadStats(*(None if f is None else f.reshape(*lead, *f.shape[1:]) for f in flat))


# ---------------------------------------------------------------------------------------------
# Argument checks (shapes and dtypes only: nothing here reads device memory).
# ---------------------------------------------------------------------------------------------
def _check_shapes(hidden, norm_weight, lm_head_weight, token_ids) -> None:
    if hidden.dim() < 1 or hidden.shape[-1] == 0:
        raise ValueError(f"hidden must be [..., H] with H > 0, got {tuple(hidden.shape)}")
    H = hidden.shape[-1]
    if tuple(norm_weight.shape) != (H,):
        raise ValueError(f"norm_weight must be [H={H}], got {tuple(norm_weight.shape)}")
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != H or lm_head_weight.shape[0] == 0:
        raise ValueError(f"lm_head_weight must be [V, H={H}] with V > 0, got {tuple(lm_head_weight.shape)}")
    for name, t in (("hidden", hidden), ("norm_weight", norm_weight), ("lm_head_weight", lm_head_weight)):
        if t.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
        if t.device != hidden.device:
            raise ValueError(f"{name} is on {t.device}, hidden on {hidden.device}")
    if token_ids is not None:
        if token_ids.shape != hidden.shape[:-1]:
            raise ValueError(
                f"token_ids must have hidden's leading shape {tuple(hidden.shape[:-1])}, "
                f"got {tuple(token_ids.shape)}"
            )
        if token_ids.dtype.is_floating_point or token_ids.dtype.is_complex or token_ids.dtype == torch.bool:
            raise ValueError(f"token_ids must be an integer tensor, got {token_ids.dtype}")
        if token_ids.device != hidden.device:
            raise ValueError(f"token_ids is on {token_ids.device}, hidden on {hidden.device}")


def _check_stats(stats, top_k) -> frozenset[str]:
    stats = frozenset(stats)
    unknown = sorted(stats - set(STATS))
    if unknown:
        raise ValueError(f"stats: unknown {unknown}; choose from {STATS}")
    if isinstance(top_k, bool) or not isinstance(top_k, Integral) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0, got {top_k!r}")
    if "topk" in stats and not top_k:
        raise ValueError("stats: 'topk' needs top_k > 0")
    return stats | {"topk"} if top_k else stats


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (Real, torch.Tensor)):
        raise ValueError(f"temperature must be a positive number or None, got {temperature!r}")
    value = float(temperature)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"temperature must be finite and > 0, got {value}")
    return value


def _seed_tensor(seed, device: torch.device) -> torch.Tensor:
    """int64 [1] on `device`; a Python int is taken mod 2^64 (as two's complement)."""
    if isinstance(seed, torch.Tensor):
        if seed.numel() != 1 or seed.dtype.is_floating_point or seed.dtype == torch.bool:
            raise ValueError(f"seed tensor must hold one integer, got {seed.dtype} {tuple(seed.shape)}")
        return seed.reshape(1).to(device=device, dtype=torch.int64)
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise ValueError(f"seed must be an int or a one-element integer tensor, got {seed!r}")
    seed = int(seed) & (2**64 - 1)
    return torch.tensor([seed - 2**64 if seed >= 2**63 else seed], dtype=torch.int64, device=device)


# ---------------------------------------------------------------------------------------------
# Backend choice.
# ---------------------------------------------------------------------------------------------
def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def _resolve_backend(backend: str | None, device: torch.device) -> str:
    name, source = backend, "backend"
    if name is None:
        name, source = os.environ.get(BACKEND_ENV) or None, BACKEND_ENV
    if name is None:
        return "triton" if device.type == "cuda" and _triton_importable() else "reference"
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS} (or unset for automatic), got {name!r}")
    if name == "triton" and not _triton_importable():
        raise ValueError(
            f"{source}: the triton exit-head backend needs Triton, which is not installed; "
            "install it with `pip install 'eedecode[triton]'` (Linux), or use the reference backend"
        )
    if name == "triton" and device.type != "cuda" and not _interpret_requested():
        raise ValueError(
            f"the triton exit-head backend needs CUDA tensors (got {device.type}); "
            "set TRITON_INTERPRET=1 to run it in Triton's interpreter"
        )
    return name


def _triton_impl(device: torch.device):
    """The Triton module. Triton decides between compiling and interpreting when a function is
    decorated, for its own library (tl.sum, tl.max, ...) when triton is first imported: so the
    interpreter works only if TRITON_INTERPRET=1 was set before that."""
    module = importlib.import_module(".exit_head_triton", __package__)
    if (device.type != "cuda" or _interpret_requested()) and not module.INTERPRETER_USABLE:
        raise ValueError(
            "TRITON_INTERPRET=1 is set, but triton was imported before it was set, so its kernels are "
            "compiled, not interpreted; set TRITON_INTERPRET=1 before anything imports triton"
        )
    return module
