"""``eedecode bench --profile``: what one step of each kind costs, and how close it comes to the
memory-bandwidth floor.

For an autoregressive step, a draft step and a verification pass (the engine's own pieces,
:func:`~eedecode.bench.steps.step_functions`), and one step of the Hugging Face model's own
forward with its cache for comparison: the aten ops dispatched (counted by a
``TorchDispatchMode``: deterministic, unlike times), the median wall time, the bytes the step
must read (the weights of the layers it runs, the LM head and the KV cache it attends over), and
the *floor*: those bytes over the machine's memory read bandwidth, measured here by a
matrix-vector product over a matrix far larger than the last-level cache between the steps
(:class:`ReadBandwidth`: the way a decoding step reads its weights, at the same threads).
``floor share`` = floor / measured time: 1.0 is a step that reads its weights as fast as that
product reads its matrix (a step can do slightly better: the probe is one product, not the best
possible read), and weights that fit in the last-level cache, like the demo model's 27 MB, are
read faster still: there the share is not bounded by 1. Then the verification cost table
(:func:`eedecode.model.costs.block_costs`) at batch sizes 1, 4 and 16.
"""

from __future__ import annotations

import inspect
import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..kernels.cpu_matmul import last_level_cache_bytes
from ..model.costs import block_costs, preferred_block_sizes
from .steps import median, step_functions

#: Bytes read by :class:`ReadBandwidth` at least (four times the last-level cache where that is more).
BANDWIDTH_BYTES = 256 << 20
#: The verification cost table (:func:`eedecode.model.costs.block_costs`): tokens per row, batch sizes.
BLOCK_TOKENS = 9
BLOCK_BATCH_SIZES = (1, 4, 16)


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched while active, by name (``with OpCounter() as c: ...``)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def count_ops(fn) -> Counter:
    """The aten ops ``fn()`` dispatches, by name."""
    with OpCounter() as counter:
        fn()
    return counter.ops


class ReadBandwidth:
    """Memory read bandwidth in bytes/s, sampled by a matrix-vector product over a float32 matrix
    of :data:`BANDWIDTH_BYTES` or four times the last-level cache, whichever is larger: a
    read-only stream, as a decoding step reads its weights, at the current torch threads. (A
    copy also writes, and writes cost a CPU more than reads: on a billion-parameter model a
    copy-based floor came out below the step itself.) Sampled between the steps it is compared
    with, so that both see the same load on a shared machine."""

    COLUMNS = 4096

    def __init__(self, nbytes: int | None = None):
        nbytes = nbytes or max(BANDWIDTH_BYTES, 4 * last_level_cache_bytes())
        rows = max(1, nbytes // 4 // self.COLUMNS)
        self.matrix = torch.ones(rows, self.COLUMNS)
        self.vector = torch.ones(self.COLUMNS)
        self.matrix @ self.vector  # touch the pages once, untimed

    def sample(self) -> float:
        t0 = time.perf_counter()
        self.matrix @ self.vector
        return self.matrix.numel() * 4 / (time.perf_counter() - t0)


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def layer_bytes(runner, i: int) -> int:
    """Bytes of decoder layer ``i``'s weights (packed matrices or the module's parameters)."""
    return sum(_nbytes(p) for p in runner.layers[i].parameters())


def step_bytes(runner, start: int, end: int, kv_len: int) -> int:
    """Bytes a step through layers ``[start, end)`` and the LM head must read: their weights, the
    final norm and head, and the keys and values of ``kv_len`` positions in those layers."""
    weights = sum(layer_bytes(runner, i) for i in range(start, end))
    head = sum(_nbytes(p) for p in (runner.norm.weight, runner.lm_head.weight))
    elem = torch.empty((), dtype=runner.dtype).element_size()
    kv = (end - start) * 2 * runner.num_kv_heads * runner.head_dim * kv_len * elem
    return weights + head + kv


def _hf_step(model, prompt: torch.Tensor):
    """One token through the HF model's own forward with its cache, reset to the prompt each call."""
    with torch.no_grad():
        out = model(prompt, use_cache=True)
    cache, token = out.get("cache") or out.get("past_key_values"), prompt[:, -1:]
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @torch.no_grad()
    def step():
        model(token, use_cache=True, **{key: cache})
        cache.crop(-1)  # back to the prompt

    return step


def profile_steps(model, prompt: torch.Tensor, exit_layer: int, num_speculations: int, reps: int = 30):
    """Ops, milliseconds, bytes, floor and floor share of each step kind (see the module doc)."""
    runner, steps, reset = step_functions(model, prompt, exit_layer, num_speculations)
    steps = {**steps, "hf_forward_step": _hf_step(model, prompt)}
    L, E, P = runner.num_layers, exit_layer, prompt.shape[1]
    nbytes = {
        "ar_step": step_bytes(runner, 0, L, P + 1),
        "draft_step": step_bytes(runner, 0, E, P + 1),
        "verify": step_bytes(runner, 0, L, P + num_speculations + 1),
        "hf_forward_step": step_bytes(runner, 0, L, P + 1),
    }
    ops = {}
    for name, fn in steps.items():
        reset()
        fn()  # warm
        reset()
        ops[name] = count_ops(fn)
    samples = {name: [] for name in steps}
    copier, bandwidths = ReadBandwidth(), []
    for i in range(reps + 2):  # take turns, so that drifts of the machine touch every step alike
        for name, fn in steps.items():
            reset()
            t0 = time.perf_counter()
            fn()
            if i >= 2:
                samples[name].append(time.perf_counter() - t0)
        if i >= 2:
            bandwidths.append(copier.sample())
            for fn in steps.values():  # the probe flushed the caches: warm them again, untimed
                reset()
                fn()
    del copier
    rows = {}
    for name in steps:
        # floor share per turn (the step and the bandwidth sampled together), then the median
        shares = [nbytes[name] / bw / t for bw, t in zip(bandwidths, samples[name], strict=True)]
        rows[name] = {
            "ops": sum(ops[name].values()),
            "top_ops": dict(ops[name].most_common(8)),
            "ms": 1e3 * median(samples[name]),
            "bytes": nbytes[name],
            "floor_ms": 1e3 * nbytes[name] / median(bandwidths),
            "floor_share": median(shares),
        }
    blocks = {str(b): block_costs(runner, b, BLOCK_TOKENS) for b in BLOCK_BATCH_SIZES}
    return {"bandwidth_bytes_per_s": median(bandwidths), "steps": rows, "block_costs": blocks}


PROFILE_LABELS = {
    "ar_step": "eedecode autoregressive step",
    "draft_step": "eedecode draft step (layers [0, E) + exit head)",
    "verify": "eedecode verification (k + 1 tokens)",
    "hf_forward_step": "HF forward step (the model's own forward, one token, its cache)",
}


def profile_table(profile: dict, exit_layer: int, num_speculations: int) -> str:
    """The markdown table ``eedecode bench --profile`` prints."""
    bw = profile["bandwidth_bytes_per_s"] / 1e9
    lines = [
        f"E = {exit_layer}, k = {num_speculations}; memory read bandwidth {bw:.1f} GB/s (median of "
        "matrix-vector products over a matrix larger than the cache, between the steps; floor "
        "share: the median over turns of floor / time)",
        "",
        "| step | aten ops | ms (median) | MB read | floor ms | floor share |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in profile["steps"].items():
        lines.append(
            f"| {PROFILE_LABELS[name]} | {r['ops']} | {r['ms']:.3f} | {r['bytes'] / 1e6:.1f} "
            f"| {r['floor_ms']:.3f} | {r['floor_share']:.0%} |"
        )
    lines += [
        "",
        "A pass over T tokens per row (layers [0, L) and the head) relative to T = 1: what verifying "
        "k = T - 1 drafts costs",
        "",
        "| batch | " + " | ".join(f"T={t}" for t in range(1, BLOCK_TOKENS + 1)) + " | preferred T |",
        "|---:|" + "---:|" * (BLOCK_TOKENS + 1),
    ]
    for b, c in profile["block_costs"].items():
        preferred = ", ".join(map(str, preferred_block_sizes(c)))
        lines.append(f"| {b} | " + " | ".join(f"{x:.2f}" for x in c) + f" | {preferred} |")
    return "\n".join(lines)
