"""The CPU matrix products of the decoding hot path: which library serves which shape.

Decoding multiplies a few rows (one token per batch row, or a verification block of ``k + 1``)
by every weight matrix once per step. On the CPU two libraries that torch ships can do it, and
which is faster depends on the shape (measured at one thread on the project's AMD EPYC (Zen 4)
VM, torch 2.13 with MKL 2024.2 and oneDNN 3.12; docs/benchmarks.md, "Matrix products"):

* **MKL** ``torch.mm(x, w_t)`` on a weight stored transposed and contiguous (``w_t [in, out]``):
  the fastest for 1 to 3 rows (for one row, ~1.5x ``F.linear`` on the usual ``[out, in]`` weight
  over the demo model's weights). From 4 rows on it switches to another kernel whose time grows
  with the rows. Its per-call cost is ~1 µs.
* **oneDNN** (``torch.ops.mkldnn._linear_pointwise``, the op torch's own CPU compiler emits for
  linear layers): about flat from 1 to 8 rows and 2x MKL at 16-48 rows, but ~11 µs per call, so
  it pays only for large products.

So: MKL below :data:`ONEDNN_MIN_ROWS` rows or :data:`ONEDNN_MIN_MACS` multiply-adds, oneDNN above.
Both compute in the weights' dtype with fp32 accumulation (checked against float64 in the tests).

Rounding, which the lossless guarantee depends on: every row of an MKL product of 1 to 3 rows is
bit-identical to the same row multiplied alone, and so is every row of a oneDNN product of any
number of rows (tests/test_cpu_matmul.py checks both). A product of 4 or more rows that MKL serves
may round a row differently from that row alone.
"""

from __future__ import annotations

import functools
import os

import torch

Tensor = torch.Tensor

#: MKL serves products of fewer rows than this; oneDNN may serve larger ones.
ONEDNN_MIN_ROWS = 4
#: ... and only products of at least this many multiply-adds (its fixed cost is ~11 µs).
ONEDNN_MIN_MACS = 1 << 20
#: Set to 0 to keep every product on MKL (for comparisons).
ONEDNN_ENV = "EEDECODE_ONEDNN"


@functools.cache
def onednn_available() -> bool:
    """oneDNN's linear op exists in this torch build and runs (checked once, on a tiny product)."""
    if os.environ.get(ONEDNN_ENV, "1") == "0" or not torch.backends.mkldnn.is_available():
        return False
    try:
        x, w = torch.ones(2, 3), torch.ones(4, 3)
        return bool(torch.equal(_onednn(x, w, None), torch.full((2, 4), 3.0)))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _onednn(x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ w.T + bias`` by oneDNN; ``w`` ``[out, in]`` either contiguous or transposed-contiguous."""
    return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")


def use_onednn(rows: int, in_features: int, out_features: int, dtype: torch.dtype) -> bool:
    """Whether oneDNN serves a product of ``rows`` rows by an ``[in, out]`` weight."""
    macs = rows * in_features * out_features
    return (
        rows >= ONEDNN_MIN_ROWS and macs >= ONEDNN_MIN_MACS and dtype == torch.float32 and onednn_available()
    )


def matmul_t(x: Tensor, w_t: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x [N, in] @ w_t [in, out] (+ bias [out])`` for a weight stored transposed (``w_t`` may be
    a column slice of a wider matrix: MKL reads it with its leading dimension)."""
    rows = x.shape[0]
    if rows >= ONEDNN_MIN_ROWS and x.is_cpu and use_onednn(rows, w_t.shape[0], w_t.shape[1], x.dtype):
        return _onednn(x, w_t.t(), bias)
    return torch.mm(x, w_t) if bias is None else torch.addmm(bias, x, w_t)


def linear(x: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x [N, in], w [out, in], bias)``. A contiguous weight of at least
    :data:`ONEDNN_MIN_MACS` elements goes to oneDNN whatever the rows (MKL reads an ``[out, in]``
    weight slowly: half the speed on SmolLM2's LM head), so all its rows round alike; a
    transposed-contiguous weight (``w_t.t()``) goes to :func:`matmul_t`."""
    if x.device.type == "cpu" and w.dim() == 2 and w.stride(0) == 1 and w.stride(1) >= w.shape[0] > 1:
        return matmul_t(x, w.t(), bias)
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and w.is_contiguous()
        and w.numel() >= ONEDNN_MIN_MACS
        and onednn_available()
    ):
        return _onednn(x, w, bias)
    return torch.nn.functional.linear(x, w, bias)
