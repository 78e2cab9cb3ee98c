"""Torch reference of the fused exit head: final RMSNorm -> LM head -> softmax statistics.

It serves the CPU in production and is what the Triton kernel (`exit_head_triton.py`) is tested
against. The vocabulary is processed in chunks, so memory is O(T x chunk), never O(T x V); every
chunk's statistics are merged into running ones with the same online-softmax formulas the kernel
uses (see `merge_softmax_stats`). With a chunk at least V wide it is one norm, one matmul and a
handful of reductions.

Notation, per token row t (all in fp32): logits l = h @ W.T, z = l / temperature,
m = max z, s = sum exp(z - m), a = sum exp(z - m) (z - m). Then
    logsumexp = m + log s,   max_prob = 1 / s,   entropy = -sum p log p = log s - a / s,
    margin = p1 - p2 = (1 - exp(z2 - m)) / s   (z2 the second-largest z, duplicates counted),
    token_logprob = z[token] - logsumexp,      sample = argmax(z + g),  g ~ Gumbel(0, 1).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .cpu_matmul import linear

# Per temporary of [T, chunk] fp32; a chunk is at least V wide when T x V fits in it.
CHUNK_ELEMENTS = 1 << 20
_MASK32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9


#: The statistics a caller may ask for (``stats=``); ``token_logprob`` needs ``token_ids``, ``sample``
#: a seed and ``topk`` a ``top_k``.
STATS = ("argmax", "max_prob", "entropy", "logsumexp", "margin", "token_logprob", "sample", "topk")
#: What a greedy draft step or a confidence rule needs.
DRAFT_STATS = frozenset({"argmax", "max_prob", "logsumexp"})
#: The default: every statistic that needs no extra input.
DEFAULT_STATS = frozenset({"argmax", "max_prob", "entropy", "logsumexp", "margin"})


class ExitHeadStats(NamedTuple):
    """Softmax statistics of the exit head, fp32 (int64 for indices), leading shape `[...]`.
    A statistic that was not asked for may be None.

    All of them describe softmax(logits / temperature) (temperature 1 when none is given).
    `margin` is a *probability* margin p1 - p2 (0 on a tie); `logsumexp` is of logits / temperature;
    `token_logprob` is log p(token_ids) (NaN for ids outside [0, V)), None unless token_ids were given;
    `sample` is a Gumbel-max sample, None unless a seed was given; `topk_ids` / `topk_probs`
    ``[..., k]`` are the k likeliest tokens and their probabilities, most likely first, None unless
    a ``top_k`` was given.
    """

    argmax: torch.Tensor
    max_prob: torch.Tensor
    entropy: torch.Tensor | None
    logsumexp: torch.Tensor
    margin: torch.Tensor | None
    token_logprob: torch.Tensor | None = None
    sample: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    topk_probs: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------
# Counter-based uniforms: the Triton kernel implements the same bit operations on uint32.
# ---------------------------------------------------------------------------------------------
def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """x * c mod 2^32 for 0 <= x < 2^32 held in int64, without overflowing int64."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons): a bijective 32-bit integer mixer. x: int64 in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def row_keys(seed: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Per-row 32-bit keys: k = mix(lo ^ mix(hi + 0x9E3779B9)), r = mix(k ^ mix(row)).
    seed: int64 [1] (its 64 bits are used), rows: int64 [T] -> [T]."""
    seed = seed.to(torch.int64).reshape(1)
    lo, hi = seed & _MASK32, (seed >> 32) & _MASK32
    key = mix32(lo ^ mix32((hi + _GOLDEN32) & _MASK32))
    return mix32(key ^ mix32(rows))


def uniform_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """u = ((bits >> 9) + 1/2) 2^-23: the top 23 bits, centred, so u in [2^-24, 1 - 2^-24] exactly
    in fp32 (never 0 or 1, so -log(-log u) is finite)."""
    return ((bits >> 9).to(torch.float32) + 0.5) * 2.0**-23


def gumbel_noise(rkey: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """g[t, v] = -log(-log u), u = uniform_from_bits(mix(rkey[t] ^ mix(v))).
    rkey: [T], cols: int64 [C] -> fp32 [T, C]."""
    u = uniform_from_bits(mix32(rkey[:, None] ^ mix32(cols)[None, :]))
    return -torch.log(-torch.log(u))


# ---------------------------------------------------------------------------------------------
# Norm, and the online merge of softmax statistics.
# ---------------------------------------------------------------------------------------------
def rms_norm_hf(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm exactly: xn = (x32 * rsqrt(mean(x32^2) + eps)).to(x.dtype); weight * xn
    (the product in torch's promoted dtype, rounded as Hugging Face rounds it)."""
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        # one fused op, bit-identical to the formula below in float32 (tests/test_runner.py)
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)
    x32 = x.float()
    xn = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xn.to(x.dtype)


def exit_head_logits(
    hidden: torch.Tensor, norm_weight: torch.Tensor, eps: float, lm_head_weight: torch.Tensor
) -> torch.Tensor:
    """The fp32 logits ``[..., V]`` whose softmax the exit head's statistics and samples describe,
    materialised (for a few rows: speculative sampling needs the whole draft distribution q)."""
    h = _head_input(rms_norm_hf(hidden, norm_weight, eps), lm_head_weight.dtype)
    V = lm_head_weight.shape[0]
    chunk = _weight_chunk(lm_head_weight)
    if chunk >= V:
        return _chunk_logits(h, lm_head_weight)
    return torch.cat([_chunk_logits(h, lm_head_weight[v0 : v0 + chunk]) for v0 in range(0, V, chunk)], -1)


def merge_softmax_stats(m1, s1, a1, m2, s2, a2):
    """Merge (m, s, a) of two disjoint parts of the vocabulary.

    m = max(m1, m2),  s = s1 e^{m1-m} + s2 e^{m2-m},
    a = e^{m1-m} (a1 + (m1 - m) s1) + e^{m2-m} (a2 + (m2 - m) s2);
    an empty part (m = -inf, s = 0) contributes nothing (its (m_i - m) s_i term is guarded to 0).
    """
    m = torch.maximum(m1, m2)
    parts = []
    for mi, si, ai in ((m1, s1, a1), (m2, s2, a2)):
        shift = torch.where(si > 0, mi - m, torch.zeros_like(mi))
        alpha = torch.where(si > 0, torch.exp(shift), torch.zeros_like(mi))
        parts.append((alpha * si, alpha * (ai + shift * si)))
    return m, parts[0][0] + parts[1][0], parts[0][1] + parts[1][1]


def _head_input(h: torch.Tensor, head_dtype: torch.dtype) -> torch.Tensor:
    """The normed state rounded to the head's dtype (as the LM head sees it), then fp32."""
    if h.dtype != head_dtype:
        h = h.to(head_dtype)
    return h if h.dtype == torch.float32 else h.float()


def _chunk_logits(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """[T, H] x [C, H] -> fp32 [T, C], accumulated in fp32 (16-bit weights are upcast per chunk).
    On the CPU by the product that reads the weight's layout fastest (`cpu_matmul.linear`)."""
    w = w if w.dtype == torch.float32 else w.float()
    if h.dim() != 2:
        return linear(h.reshape(-1, h.shape[-1]), w).view(*h.shape[:-1], w.shape[0])
    return linear(h, w)


def _weight_chunk(w: torch.Tensor) -> int:
    """Vocabulary rows per chunk: all of them for fp32 weights (used in place); for 16-bit weights
    few enough that their fp32 copy stays within :data:`CHUNK_ELEMENTS`, never a copy of the head."""
    if w.dtype == torch.float32:
        return w.shape[0]
    return max(1, CHUNK_ELEMENTS // max(w.shape[1], 1))


def _first_max(z: torch.Tensor):
    """Max along the last dim, its lowest index, and the second-largest value (duplicates count)."""
    top, idx = z.max(dim=-1)
    if z.shape[-1] < 2:
        return top, idx, torch.full_like(top, float("-inf"))
    return top, idx, z.topk(2, dim=-1).values[:, 1]


class _Running(NamedTuple):
    """Statistics of the vocabulary seen so far, per row [T]: m, s, a as in `merge_softmax_stats`."""

    m: torch.Tensor
    s: torch.Tensor
    a: torch.Tensor
    arg: torch.Tensor  # lowest index attaining m
    second: torch.Tensor  # second-largest z
    tok_z: torch.Tensor | None  # z[token] if the token was seen, else 0
    g_best: torch.Tensor | None  # best Gumbel key z + g
    g_arg: torch.Tensor | None


def _chunk_stats(z: torch.Tensor, v0: int, token_ids, rkey) -> _Running:
    """Statistics of one chunk z [T, C] holding vocabulary entries v0 .. v0 + C - 1."""
    top, idx, second = _first_max(z)
    d = z - top[:, None]  # <= 0
    e = torch.exp(d)
    tok_z = g_best = g_arg = None
    if token_ids is not None:
        local = token_ids - v0
        inside = (local >= 0) & (local < z.shape[1])
        picked = z.gather(1, local.clamp(0, z.shape[1] - 1)[:, None])[:, 0]
        tok_z = torch.where(inside, picked, torch.zeros_like(picked))
    if rkey is not None:
        g_best, g_arg = (z + gumbel_noise(rkey, torch.arange(v0, v0 + z.shape[1], device=z.device))).max(-1)
        g_arg = g_arg + v0
    arg = idx + v0 if v0 else idx
    return _Running(top, e.sum(-1), torch.linalg.vecdot(e, d), arg, second, tok_z, g_best, g_arg)


def _merge_running(r: _Running, c: _Running) -> _Running:
    """Merge a later chunk c into r; on ties the earlier (lower-index) part wins."""
    m, s, a = merge_softmax_stats(r.m, r.s, r.a, c.m, c.s, c.a)
    second = torch.maximum(torch.maximum(r.second, c.second), torch.minimum(r.m, c.m))
    tok_z = None if r.tok_z is None else r.tok_z + c.tok_z
    g_best = g_arg = None
    if r.g_best is not None:
        g_best, g_arg = torch.maximum(r.g_best, c.g_best), torch.where(c.g_best > r.g_best, c.g_arg, r.g_arg)
    return _Running(m, s, a, torch.where(c.m > r.m, c.arg, r.arg), second, tok_z, g_best, g_arg)


# ---------------------------------------------------------------------------------------------
# The reference.
# ---------------------------------------------------------------------------------------------
def exit_head_reference(
    hidden: torch.Tensor,  # [T, H]
    norm_weight: torch.Tensor,  # [H]
    eps: float,
    lm_head_weight: torch.Tensor,  # [V, H]
    inv_temperature: float = 1.0,
    token_ids: torch.Tensor | None = None,  # int64 [T]
    seed: torch.Tensor | None = None,  # int64 [1]
    chunk_size: int | None = None,
    stats: frozenset[str] = DEFAULT_STATS,
    top_k: int = 0,
) -> ExitHeadStats:
    """Exit-head statistics of each row of `hidden` (flat [T]); see the module docstring.
    At least the statistics named in ``stats`` are computed (see :data:`STATS`)."""
    T, V = hidden.shape[0], lm_head_weight.shape[0]
    h = _head_input(rms_norm_hf(hidden, norm_weight, eps), lm_head_weight.dtype)  # [T, H] fp32
    chunk = chunk_size or min(max(1, CHUNK_ELEMENTS // max(T, 1)), _weight_chunk(lm_head_weight))
    return _vocab_stats(
        lambda v0, v1: _chunk_logits(h, lm_head_weight[v0:v1]),
        T,
        V,
        chunk,
        inv_temperature,
        token_ids,
        seed,
        stats,
        top_k,
        hidden.device,
    )


def logits_stats(
    logits: torch.Tensor,  # [T, V] fp32
    inv_temperature: float = 1.0,
    token_ids: torch.Tensor | None = None,
    seed: torch.Tensor | None = None,
    stats: frozenset[str] = DEFAULT_STATS,
    top_k: int = 0,
) -> ExitHeadStats:
    """The same statistics of logits that are already materialised (an LM head the fused path
    cannot read: quantized, biased, or behind hooks)."""
    T, V = logits.shape
    chunk = max(1, CHUNK_ELEMENTS // max(T, 1))
    return _vocab_stats(
        lambda v0, v1: logits[:, v0:v1],
        T,
        V,
        chunk,
        inv_temperature,
        token_ids,
        seed,
        stats,
        top_k,
        logits.device,
    )


def _vocab_stats(chunk_logits, T, V, chunk, inv_temperature, token_ids, seed, stats, top_k, device):
    """Statistics over the vocabulary, ``chunk`` entries at a time; ``chunk_logits(v0, v1)`` gives
    the fp32 logits of entries ``[v0, v1)``, ``[T, v1 - v0]``."""
    simple = stats <= DRAFT_STATS | {"topk"} and token_ids is None and seed is None
    if simple and chunk >= V:  # one pass of plain reductions: the draft step's path
        z = chunk_logits(0, V)  # [T, V]
        if inv_temperature != 1.0:
            z = z * inv_temperature
        if stats <= {"argmax"}:  # a greedy draft: nothing else
            return ExitHeadStats(z.argmax(-1), None, None, None, None)
        m, arg = z.max(dim=-1)  # the lowest index among equal maxima, as torch.argmax
        lse = torch.logsumexp(z, dim=-1)
        ids = probs = None
        if top_k:
            vals, ids = z.topk(min(top_k, V), dim=-1)
            probs = torch.exp(vals - lse[:, None])
        return ExitHeadStats(arg, torch.exp(m - lse), None, lse, None, None, None, ids, probs)
    rkey = None if seed is None else row_keys(seed.to(device), torch.arange(T, device=device))

    run, top = None, None
    for v0 in range(0, V, chunk):
        z = chunk_logits(v0, min(v0 + chunk, V))  # [T, C]
        if inv_temperature != 1.0:
            z = z * inv_temperature
        c = _chunk_stats(z, v0, token_ids, rkey)
        run = c if run is None else _merge_running(run, c)
        if top_k:
            top = _merge_topk(top, z, v0, top_k)

    log_s = torch.log(run.s)
    lse = run.m + log_s
    max_prob = torch.reciprocal(run.s)
    token_logprob = None
    if token_ids is not None:
        valid = (token_ids >= 0) & (token_ids < V)
        token_logprob = torch.where(valid, run.tok_z - lse, torch.full_like(lse, float("nan")))
    return ExitHeadStats(
        argmax=run.arg,
        max_prob=max_prob,
        entropy=log_s - run.a * max_prob,
        logsumexp=lse,
        margin=max_prob - torch.exp(run.second - run.m) * max_prob,
        token_logprob=token_logprob,
        sample=run.g_arg,
        topk_ids=None if top is None else top[1],
        topk_probs=None if top is None else torch.exp(top[0] - lse[:, None]),
    )


def _merge_topk(top, z: torch.Tensor, v0: int, k: int):
    """The running k largest (values, ids) ``[T, k]`` merged with a chunk ``z`` of entries from v0."""
    vals, ids = z.topk(min(k, z.shape[1]), dim=-1)
    ids = ids + v0
    if top is not None:
        vals, ids = torch.cat([top[0], vals], 1), torch.cat([top[1], ids], 1)
        vals, pos = vals.topk(min(k, vals.shape[1]), dim=-1)
        ids = ids.gather(1, pos)
    return vals, ids
