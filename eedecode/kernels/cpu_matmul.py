"""The CPU matrix products of the decoding hot path: which library serves which shape.

Decoding multiplies a few rows (one token per batch row, or a verification block of ``k + 1``)
by every weight matrix once per step. On the CPU two libraries that torch ships can do it:

* **MKL** ``torch.mm(x, w_t)`` on a weight stored transposed and contiguous (``w_t [in, out]``):
  the fastest for one row (over the demo model's weights 2.5x ``F.linear`` on the usual
  ``[out, in]`` weight). Per call it costs ~1 µs. One row always goes to MKL.
* **oneDNN** (``torch.ops.mkldnn._linear_pointwise``, the op torch's own CPU compiler emits for
  linear layers): ~11 µs per call, so only for products of at least :data:`ONEDNN_MIN_MACS`
  multiply-adds.

Which is faster for a block of rows depends on the CPU and the shapes (benchmarks/
bench_cpu_matmul.py, docs/benchmarks.md). On an AMD EPYC (Zen 4) oneDNN was about flat from 1 to 8
rows and 2x MKL at 16-48 rows; on an Intel Xeon (AVX-512) MKL was faster at every row count from
1 to 48, on the demo model (at 4 rows 1.37 ms against 2.45 ms a pass) and on SmolLM2. So the
runner **measures** it, once per model and thread count: a full-depth pass over 2, 4 and 16
tokens with each library (:func:`eedecode.model.costs.choose_block_library`), and oneDNN serves
products from the smallest of those row counts from which it was faster at every larger one
(:data:`ONEDNN_NEVER`: never). Until then the rule it replaces holds: oneDNN from
:data:`ONEDNN_MIN_ROWS` rows, or from :data:`STREAM_MIN_ROWS` when the model's weights do not
fit in the last-level cache (:func:`streams_from_memory`). Both compute in fp32 (checked against
float64 in the tests).

Rounding, which the lossless guarantee rests on: every row of a oneDNN product of any number of
rows is bit-identical to that row multiplied alone (tests/test_cpu_matmul.py). MKL does not
promise it: on an AMD EPYC (Zen 4) its products of 1 to 3 rows rounded every row alike, on an
Intel Xeon its multi-row products differ from its one-row products in the last bits. A
verification block served by another kernel than a one-token step may round a row differently:
its tokens then equal autoregressive decoding's except at floating-point near-ties.
"""

from __future__ import annotations

import functools
import os

import torch

Tensor = torch.Tensor

#: Until the runner has measured the libraries: MKL serves products of fewer rows than this,
#: oneDNN may serve larger ones ...
ONEDNN_MIN_ROWS = 4
#: ... or from this many when the weights stream from memory (:func:`streams_from_memory`).
STREAM_MIN_ROWS = 2
#: A threshold that no block reaches: every product on MKL.
ONEDNN_NEVER = 1 << 62
#: The blocks (tokens of a full-depth pass, batch size 1) at which the runner times the libraries.
LIBRARY_ROWS = (2, 4, 16)
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
    rows: int, in_features: int, out_features: int, dtype: torch.dtype, onednn_from: int | None = None
) -> bool:
    """Whether oneDNN serves a product of ``rows`` rows by an ``[in, out]`` weight: from
    ``onednn_from`` rows (default :data:`ONEDNN_MIN_ROWS`; the runner passes what it measured),
    never one row, and only products of at least :data:`ONEDNN_MIN_MACS` multiply-adds."""
    macs = rows * in_features * out_features
    return (
        rows >= max(2, ONEDNN_MIN_ROWS if onednn_from is None else onednn_from)
        and macs >= ONEDNN_MIN_MACS
        and dtype == torch.float32
        and onednn_available()
    )


def matmul_t(x: Tensor, w_t: Tensor, bias: Tensor | None = None, onednn_from: int | None = None) -> Tensor:
    """``x [N, in] @ w_t [in, out] (+ bias [out])`` for a weight stored transposed (``w_t`` may be
    a column slice of a wider matrix: MKL reads it with its leading dimension, and serves it
    whatever the rows). ``onednn_from``: oneDNN may serve it from that many rows (see
    :func:`use_onednn`)."""
    rows = x.shape[0]
    # oneDNN only on a whole transposed matrix: a column slice (its leading dimension wider than
    # its columns) makes it reorder the weight on every call, ~1000x slower (a vocabulary chunk of
    # the LM head over 510 rows: 6 s instead of 5 ms).
    if rows >= 2 and x.is_cpu and w_t.is_contiguous() and use_onednn(rows, *w_t.shape, x.dtype, onednn_from):
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
    oneDNN's fixed cost per call is small beside each product, and until the runner has measured
    the libraries it may serve 2 and 3 rows too (on SmolLM2 (538 MB) on an AMD EPYC a full-depth
    pass of 2 and 3 tokens took 0.70-0.87x the time with oneDNN that it took with MKL; on a
    Llama-3.2-1B shape (4.9 GB) on an Intel Xeon it took 1.4x)."""
    return weight_bytes > last_level_cache_bytes()


def onednn_from_text(onednn_from: int) -> int | str:
    """A threshold as records and reports show it: the row count, or "never"."""
    return "never" if onednn_from >= ONEDNN_NEVER else onednn_from


def library_before_timing(weights: list[Tensor], rows: int | None = None) -> tuple[int, bool]:
    """For a model's matrices: from how many rows oneDNN serves its products before the runner
    has timed the two libraries (:data:`STREAM_MIN_ROWS` if the weights stream from memory, else
    :data:`ONEDNN_MIN_ROWS`), and whether timing them can change anything (a product of ``rows``
    rows (default: the largest of :data:`LIBRARY_ROWS`) by one of them reaches
    :data:`ONEDNN_MIN_MACS`; tiny models stay on MKL whatever)."""
    rows = LIBRARY_ROWS[-1] if rows is None else rows
    nbytes = sum(w.nbytes for w in weights)
    matters = any(rows * w.numel() >= ONEDNN_MIN_MACS for w in weights)
    return (STREAM_MIN_ROWS if streams_from_memory(nbytes) else ONEDNN_MIN_ROWS), matters


def linear(x: Tensor, w: Tensor, bias: Tensor | None = None, onednn_from: int | None = None) -> Tensor:
    """``F.linear(x [N, in], w [out, in], bias)``. A contiguous weight of at least
    :data:`ONEDNN_MIN_MACS` elements goes to oneDNN whatever the rows (MKL reads an ``[out, in]``
    weight slowly: half the speed on SmolLM2's LM head), so all its rows round alike; a
    transposed-contiguous weight (``w_t.t()``) goes to :func:`matmul_t` (with ``onednn_from``)."""
    if x.device.type == "cpu" and w.dim() == 2 and w.stride(0) == 1 and w.stride(1) >= w.shape[0] > 1:
        return matmul_t(x, w.t(), bias, onednn_from)
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and w.is_contiguous()
        and w.numel() >= ONEDNN_MIN_MACS
        and onednn_available()
    ):
        return _onednn(x, w, bias)
    return torch.nn.functional.linear(x, w, bias)
