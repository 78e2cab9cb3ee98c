"""The CPU matrix products of the decoding hot path: which library serves which shape.

Decoding multiplies a few rows (one token per batch row, or a verification block of ``k + 1``)
by every weight matrix once per step. On the CPU two libraries that torch ships can do it, and
which is faster depends on the shape (measured at one thread on the project's AMD EPYC (Zen 4)
VM, torch 2.13 with MKL 2024.2 and oneDNN 3.12; benchmarks/bench_cpu_matmul.py,
docs/benchmarks.md):

* **MKL** ``torch.mm(x, w_t)`` on a weight stored transposed and contiguous (``w_t [in, out]``):
  the fastest for one row (over the demo model's weights 2.5x ``F.linear`` on the usual
  ``[out, in]`` weight) and, while the weights fit in the last-level cache, for 2 and 3 rows. Its
  time grows with the rows, and from 4 rows on it switches kernels. Per call it costs ~1 µs.
* **oneDNN** (``torch.ops.mkldnn._linear_pointwise``, the op torch's own CPU compiler emits for
  linear layers): about flat from 1 to 8 rows and 2x MKL at 16-48 rows, but ~11 µs per call, so
  it pays only for large products.

So: MKL below :data:`ONEDNN_MIN_ROWS` rows (:data:`STREAM_MIN_ROWS` when the model's weights do
not fit in the last-level cache, :func:`streams_from_memory`, and oneDNN was measured faster for
the model's 2-token blocks: the choice depends on the CPU and the shapes, see
:func:`eedecode.model.costs.choose_small_block_library`) or :data:`ONEDNN_MIN_MACS` multiply-adds,
oneDNN above. Both compute in fp32 (checked against float64 in the tests).

Rounding, which the lossless guarantee rests on: every row of a oneDNN product of any number of
rows is bit-identical to that row multiplied alone (tests/test_cpu_matmul.py). MKL does not
promise it: on an AMD EPYC (Zen 4) its products of 1 to 3 rows rounded every row alike, on an
Intel Xeon its 2-row products differ from its one-row products in the last bits. A verification
block served by another kernel than a one-token step may round a row differently: its tokens then
equal autoregressive decoding's except at floating-point near-ties.
"""

from __future__ import annotations

import functools
import os

import torch

Tensor = torch.Tensor

#: MKL serves products of fewer rows than this; oneDNN may serve larger ones.
ONEDNN_MIN_ROWS = 4
#: ... or of fewer than this when the weights stream from memory (:func:`streams_from_memory`).
STREAM_MIN_ROWS = 2
#: ... and only products of at least this many multiply-adds (its fixed cost is ~11 µs).
ONEDNN_MIN_MACS = 1 << 20
#: Set to 0 to keep every product on MKL (for comparisons).
ONEDNN_ENV = "EEDECODE_ONEDNN"
#: When sysfs does not say how large the last-level cache is.
DEFAULT_LLC_BYTES = 32 << 20


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


def use_onednn(
    rows: int, in_features: int, out_features: int, dtype: torch.dtype, stream: bool = False
) -> bool:
    """Whether oneDNN serves a product of ``rows`` rows by an ``[in, out]`` weight (``stream``:
    oneDNN may serve it from :data:`STREAM_MIN_ROWS` rows, as for a model whose weights stream from
    memory and whose small blocks oneDNN served faster when measured)."""
    macs = rows * in_features * out_features
    return (
        rows >= (STREAM_MIN_ROWS if stream else ONEDNN_MIN_ROWS)
        and macs >= ONEDNN_MIN_MACS
        and dtype == torch.float32
        and onednn_available()
    )


def matmul_t(x: Tensor, w_t: Tensor, bias: Tensor | None = None, stream: bool = False) -> Tensor:
    """``x [N, in] @ w_t [in, out] (+ bias [out])`` for a weight stored transposed (``w_t`` may be
    a column slice of a wider matrix: MKL reads it with its leading dimension, and serves it
    whatever the rows). ``stream``: oneDNN may serve it from :data:`STREAM_MIN_ROWS` rows (see
    :func:`use_onednn`)."""
    rows = x.shape[0]
    # oneDNN only on a whole transposed matrix: a column slice (its leading dimension wider than
    # its columns) makes it reorder the weight on every call, ~1000x slower (a vocabulary chunk of
    # the LM head over 510 rows: 6 s instead of 5 ms).
    if (
        rows >= STREAM_MIN_ROWS
        and x.is_cpu
        and w_t.is_contiguous()
        and use_onednn(rows, *w_t.shape, x.dtype, stream)
    ):
        return _onednn(x, w_t.t(), bias)
    return torch.mm(x, w_t) if bias is None else torch.addmm(bias, x, w_t)


@functools.cache
def last_level_cache_bytes() -> int:
    """The CPU's last-level cache (Linux sysfs), else :data:`DEFAULT_LLC_BYTES`."""
    for index in (3, 2):
        path = f"/sys/devices/system/cpu/cpu0/cache/index{index}/size"
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    return DEFAULT_LLC_BYTES


def streams_from_memory(weight_bytes: int) -> bool:
    """Whether a step's weights stream from memory rather than from the last-level cache. Then
    oneDNN's fixed cost per call is small beside each product, and it may serve 2 and 3 rows too,
    where measured faster for the model on this machine: on SmolLM2 (538 MB) on an AMD EPYC a
    full-depth pass of 2 and 3 tokens took 0.70-0.87x the time with oneDNN that it took with MKL;
    on a Llama-3.2-1B shape (4.9 GB) on an Intel Xeon it took 1.4x. One token stays on MKL."""
    return weight_bytes > last_level_cache_bytes()


def linear(x: Tensor, w: Tensor, bias: Tensor | None = None, stream: bool = False) -> Tensor:
    """``F.linear(x [N, in], w [out, in], bias)``. A contiguous weight of at least
    :data:`ONEDNN_MIN_MACS` elements goes to oneDNN whatever the rows (MKL reads an ``[out, in]``
    weight slowly: half the speed on SmolLM2's LM head), so all its rows round alike; a
    transposed-contiguous weight (``w_t.t()``) goes to :func:`matmul_t` (with ``stream``)."""
    if x.device.type == "cpu" and w.dim() == 2 and w.stride(0) == 1 and w.stride(1) >= w.shape[0] > 1:
        return matmul_t(x, w.t(), bias, stream)
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and w.is_contiguous()
        and w.numel() >= ONEDNN_MIN_MACS
        and onednn_available()
    ):
        return _onednn(x, w, bias)
    return torch.nn.functional.linear(x, w, bias)
