"""Triton kernels of the fused exit head: final RMSNorm -> LM head -> softmax statistics, without
materialising [T, V] logits. The torch reference beside it (`exit_head_reference.py`) states the
same maths and is what these kernels are tested against.

Two launches (three with `prenorm`):
0. (`prenorm` only) `_rms_norm_kernel` writes h = RMSNorm(x) [T, H] in W's dtype.
1. `_exit_head_partials_kernel`, grid (token tiles, vocabulary splits). A program owns TILE_T tokens
   and a contiguous run of BLOCK_V-row vocabulary blocks. For each block it computes the logits tile
   acc[t, v] = h[t, :] . W[v, :] with `tl.dot` (W streamed once per token tile; the tokens of a
   tile padded to at least 16, the smallest `tl.dot` shape), applying the RMSNorm to each H-chunk
   of the hidden state on the fly unless `prenorm`, and merges the block's statistics into running ones
   (online softmax). It writes one partial per (token, split).
2. `_exit_head_reduce_kernel`, grid (token blocks,): combines each token's partials with
   fixed-order tree reductions, so the result is bitwise deterministic for a given config.

Where the norm happens is a config choice. For small T it is a prologue inside the partials
kernel (a pass over the token tile's H for rstd = 1 / sqrt(mean(x^2) + eps), then
h = norm_weight * round(x * rstd) per H-chunk in the main loop): it re-reads T x H values
(kilobytes, from L2) against V x H for W, and saves a launch, which matters at T = 1 where the
whole head takes tens of microseconds. For large T the per-chunk elementwise work in the loop
competes with the tensor cores, so a separate launch normalises once (`prenorm`).

Only `tl.*` math is used, so the same source runs in Triton's interpreter (TRITON_INTERPRET=1) on
CPU tensors. Triton decides between compiling and interpreting at decoration time: for its own
library when triton is first imported, for these kernels when this module is imported.

Longer than 350 lines because the three kernels, their shared `@triton.jit` helpers and the
launcher read as one unit: they share constants and the partials layout, and splitting them
would scatter one algorithm over files (the formatter puts each launch argument on its own line).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

PARTIAL_FLOAT_FIELDS = 6  # m, s, a, second-largest z, z[token], best Gumbel key
PARTIAL_INT_FIELDS = 2  # argmax, Gumbel argmax
OUT_FLOAT_FIELDS = 5  # max_prob, entropy, logsumexp, margin, token_logprob
OUT_INT_FIELDS = 2  # argmax, sample


@triton.jit
def _mix32(x):
    """lowbias32 (C. Wellons), a bijective mixer on uint32; multiplications wrap mod 2^32."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _row_keys(seed_ptr, t):
    """k = mix(lo ^ mix(hi + 0x9E3779B9)) from the 64-bit seed; per row r = mix(k ^ mix(t))."""
    seed = tl.load(seed_ptr)
    lo = (seed & 0xFFFFFFFF).to(tl.uint32)
    hi = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    key = _mix32(lo ^ _mix32(hi + 0x9E3779B9))
    return _mix32(key ^ _mix32(t.to(tl.uint32)))


@triton.jit
def _gumbel_noise(rkey, v):
    """g[t, v] = -log(-log u), u = ((bits >> 9) + 1/2) 2^-23, bits = mix(rkey[t] ^ mix(v))."""
    bits = _mix32(rkey[:, None] ^ _mix32(v.to(tl.uint32))[None, :])
    u = ((bits >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07
    return -tl.log(-tl.log(u))


@triton.jit
def _rms_rstd(x_ptr, t, t_mask, stride_xt, H, eps, TILE_T: tl.constexpr, BLOCK_H: tl.constexpr):
    """rstd[t] = 1 / sqrt(mean_k x[t, k]^2 + eps), fp32; 0 for padding tokens. -> [TILE_T]"""
    ss = tl.zeros([TILE_T], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_H):
        k = k0 + tl.arange(0, BLOCK_H)
        mask = t_mask[:, None] & (k < H)[None, :]
        x = tl.load(x_ptr + t[:, None] * stride_xt + k[None, :], mask=mask, other=0.0).to(tl.float32)
        ss += tl.sum(x * x, axis=1)
    return tl.where(t_mask, tl.rsqrt(ss / H + eps), 0.0)


@triton.jit
def _rms_norm(x, rstd, nw, ROUND_PRODUCT: tl.constexpr):
    """LlamaRMSNorm of a tile: norm_weight * (x * rstd).to(x.dtype), the product computed in fp32
    (exact for 16-bit operands) and rounded to x's dtype when that is torch's promoted dtype."""
    xn = (x.to(tl.float32) * rstd).to(x.dtype)
    h = nw.to(tl.float32) * xn.to(tl.float32)
    if ROUND_PRODUCT:
        h = h.to(x.dtype)
    return h


@triton.jit
def _logits_tile(
    x_ptr,
    nw_ptr,
    w_ptr,
    v,
    v_mask,
    t,
    t_mask,
    rstd,
    stride_xt,
    stride_wv,
    H,
    PRENORMED: tl.constexpr,
    ROUND_PRODUCT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    TILE_T: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """acc[t, v] = sum_k h[t, k] W[v, k] in fp32, h = RMSNorm(x) cast to W's dtype; with
    PRENORMED, x_ptr already holds h. Tokens are the dot's M side, as queries are in flash
    attention, so the softmax reductions over v run along rows. -> [TILE_T, BLOCK_V]"""
    acc = tl.zeros([TILE_T, BLOCK_V], dtype=tl.float32)
    w_cols = w_ptr + v.to(tl.int64)[None, :] * stride_wv
    for k0 in range(0, H, BLOCK_H):
        k = k0 + tl.arange(0, BLOCK_H)
        k_mask = k < H
        x_mask = t_mask[:, None] & k_mask[None, :]
        h = tl.load(x_ptr + t[:, None] * stride_xt + k[None, :], mask=x_mask, other=0.0)  # [TILE_T, BLOCK_H]
        if not PRENORMED:
            nw = tl.load(nw_ptr + k, mask=k_mask, other=0.0)
            h = _rms_norm(h, rstd[:, None], nw[None, :], ROUND_PRODUCT)
        w_mask = k_mask[:, None] & v_mask[None, :]
        w = tl.load(w_cols + k[:, None], mask=w_mask, other=0.0)  # [BLOCK_H, BLOCK_V]
        acc = tl.dot(h.to(w_ptr.dtype.element_ty), w, acc=acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    nw_ptr,
    h_ptr,
    T,
    H,
    stride_xt,
    eps,
    ROUND_PRODUCT: tl.constexpr,
    TILE_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """h[t, :] = LlamaRMSNorm(x[t, :]) in h's dtype (W's): the prologue of the PRENORMED path."""
    t = tl.program_id(0) * TILE_T + tl.arange(0, TILE_T)
    t_mask = t < T
    rstd = _rms_rstd(x_ptr, t, t_mask, stride_xt, H, eps, TILE_T, BLOCK_H)
    for k0 in range(0, H, BLOCK_H):
        k = k0 + tl.arange(0, BLOCK_H)
        mask = t_mask[:, None] & (k < H)[None, :]
        x = tl.load(x_ptr + t[:, None] * stride_xt + k[None, :], mask=mask, other=0.0)
        nw = tl.load(nw_ptr + k, mask=k < H, other=0.0)
        h = _rms_norm(x, rstd[:, None], nw[None, :], ROUND_PRODUCT)
        tl.store(h_ptr + t[:, None] * H + k[None, :], h.to(h_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _merge(m1, s1, a1, m2, s2, a2):
    """Online-softmax merge of (m, s, a), s = sum e^{z-m}, a = sum e^{z-m} (z - m):
    m = max(m1, m2), s = s1 e^{m1-m} + s2 e^{m2-m}, a = sum_i e^{mi-m} (ai + (mi - m) si);
    an empty part (s = 0, m = -inf) contributes 0 instead of -inf * 0."""
    m = tl.maximum(m1, m2)
    shift1 = tl.where(s1 > 0, m1 - m, 0.0)
    shift2 = tl.where(s2 > 0, m2 - m, 0.0)
    al1 = tl.where(s1 > 0, tl.exp(shift1), 0.0)
    al2 = tl.where(s2 > 0, tl.exp(shift2), 0.0)
    return m, al1 * s1 + al2 * s2, al1 * (a1 + shift1 * s1) + al2 * (a2 + shift2 * s2)


@triton.jit
def _first_max(z, v):
    """Row max of z [TILE_T, BLOCK_V], its lowest column index v, and the second-largest value
    (the max with that one entry removed, so a duplicated max gives second == max)."""
    top = tl.max(z, axis=1)
    idx = tl.min(tl.where(z == top[:, None], v[None, :], 2147483647), axis=1)
    second = tl.max(tl.where(v[None, :] == idx[:, None], float("-inf"), z), axis=1)
    return top, idx, second


@triton.jit
def _exit_head_partials_kernel(
    x_ptr,
    nw_ptr,
    w_ptr,
    tok_ptr,
    seed_ptr,
    part_f_ptr,
    part_i_ptr,
    T,
    V,
    H,
    stride_xt,
    stride_wv,
    eps,
    inv_temp,
    num_blocks,
    HAS_TOKENS: tl.constexpr,
    HAS_SEED: tl.constexpr,
    PRENORMED: tl.constexpr,
    ROUND_PRODUCT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    TILE_T: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Partials of one (token tile, vocabulary split): for z = logits * inv_temp over the split's
    blocks, m = max z, s = sum e^{z-m}, a = sum e^{z-m}(z-m), lowest argmax, second-largest z,
    z[token] (0 if the token is elsewhere), and the best Gumbel key z + g with its index.
    Written to part_f[f, t, split] (fp32) and part_i[f, t, split] (int32)."""
    pid_t, split, num_splits = tl.program_id(0), tl.program_id(1), tl.num_programs(1)
    t = pid_t * TILE_T + tl.arange(0, TILE_T)
    t_mask = t < T
    if PRENORMED:
        rstd = tl.zeros([TILE_T], tl.float32)  # unused
    else:
        rstd = _rms_rstd(x_ptr, t, t_mask, stride_xt, H, eps, TILE_T, BLOCK_H)

    m = tl.full([TILE_T], float("-inf"), tl.float32)
    s = tl.zeros([TILE_T], tl.float32)
    a = tl.zeros([TILE_T], tl.float32)
    second = tl.full([TILE_T], float("-inf"), tl.float32)
    arg = tl.zeros([TILE_T], tl.int32)
    tok_z = tl.zeros([TILE_T], tl.float32)
    g_best = tl.full([TILE_T], float("-inf"), tl.float32)
    g_arg = tl.zeros([TILE_T], tl.int32)
    if HAS_TOKENS:
        tok = tl.load(tok_ptr + t, mask=t_mask, other=-1)
    if HAS_SEED:
        rkey = _row_keys(seed_ptr, t)

    for blk in range(split * num_blocks // num_splits, (split + 1) * num_blocks // num_splits):
        v = blk * BLOCK_V + tl.arange(0, BLOCK_V)
        v_mask = v < V
        acc = _logits_tile(
            x_ptr,
            nw_ptr,
            w_ptr,
            v,
            v_mask,
            t,
            t_mask,
            rstd,
            stride_xt,
            stride_wv,
            H,
            PRENORMED,
            ROUND_PRODUCT,
            DOT_PRECISION,
            TILE_T,
            BLOCK_V,
            BLOCK_H,
        )
        z = tl.where(v_mask[None, :], acc * inv_temp, float("-inf"))  # [TILE_T, BLOCK_V]
        b_max, b_arg, b_second = _first_max(z, v)
        d = tl.where(v_mask[None, :], z - b_max[:, None], 0.0)
        e = tl.where(v_mask[None, :], tl.exp(d), 0.0)
        arg = tl.where(b_max > m, b_arg, arg)  # strict: on ties the earlier block wins
        second = tl.maximum(tl.maximum(second, b_second), tl.minimum(m, b_max))
        m, s, a = _merge(m, s, a, b_max, tl.sum(e, axis=1), tl.sum(e * d, axis=1))
        if HAS_TOKENS:
            tok_z += tl.sum(tl.where(v[None, :] == tok[:, None], z, 0.0), axis=1)
        if HAS_SEED:
            key = tl.where(v_mask[None, :], z + _gumbel_noise(rkey, v), float("-inf"))
            k_max, k_arg, _ = _first_max(key, v)
            g_arg = tl.where(k_max > g_best, k_arg, g_arg)
            g_best = tl.maximum(g_best, k_max)

    ts = T * num_splits
    out = t * num_splits + split
    tl.store(part_f_ptr + out, m, mask=t_mask)
    tl.store(part_f_ptr + ts + out, s, mask=t_mask)
    tl.store(part_f_ptr + 2 * ts + out, a, mask=t_mask)
    tl.store(part_f_ptr + 3 * ts + out, second, mask=t_mask)
    tl.store(part_f_ptr + 4 * ts + out, tok_z, mask=t_mask)
    tl.store(part_f_ptr + 5 * ts + out, g_best, mask=t_mask)
    tl.store(part_i_ptr + out, arg, mask=t_mask)
    tl.store(part_i_ptr + ts + out, g_arg, mask=t_mask)


@triton.jit
def _exit_head_reduce_kernel(
    part_f_ptr,
    part_i_ptr,
    tok_ptr,
    out_f_ptr,
    out_i_ptr,
    T,
    V,
    num_splits,
    HAS_TOKENS: tl.constexpr,
    HAS_SEED: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Combine the partials j = 0..S-1 of BLOCK_T tokens with tree reductions in a fixed order
    (bitwise deterministic). M = max_j m_j, s = sum_j s_j e^{m_j-M},
    a = sum_j e^{m_j-M} (a_j + (m_j - M) s_j); logsumexp = M + log s, max_prob = 1/s,
    entropy = log s - a/s, margin = (1 - e^{z2-M})/s with z2 = max(max_j second_j, max of m_j over
    the splits other than the argmax's). The argmax comes from the lowest split attaining M (splits
    are in vocabulary order, so this is the lowest index); likewise the Gumbel sample."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = t < T
    j = tl.arange(0, BLOCK_S)
    mask = (j < num_splits)[None, :] & (t >= 0)[:, None]  # [BLOCK_T, BLOCK_S]
    ts = T * num_splits
    # Padding tokens read the last real token's partials (finite maths); their stores are masked.
    src = tl.minimum(t, T - 1)[:, None] * num_splits + j[None, :]
    m = tl.load(part_f_ptr + src, mask=mask, other=float("-inf"))
    s = tl.load(part_f_ptr + ts + src, mask=mask, other=0.0)
    a = tl.load(part_f_ptr + 2 * ts + src, mask=mask, other=0.0)
    second = tl.load(part_f_ptr + 3 * ts + src, mask=mask, other=float("-inf"))
    arg = tl.load(part_i_ptr + src, mask=mask, other=0)

    big_m = tl.max(m, axis=1)
    live = s > 0
    shift = tl.where(live, m - big_m[:, None], 0.0)
    alpha = tl.where(live, tl.exp(shift), 0.0)
    s_tot = tl.sum(alpha * s, axis=1)
    a_tot = tl.sum(alpha * (a + shift * s), axis=1)
    win = tl.min(tl.where(m == big_m[:, None], j[None, :], BLOCK_S), axis=1)
    is_win = j[None, :] == win[:, None]
    z2 = tl.maximum(tl.max(second, axis=1), tl.max(tl.where(is_win, float("-inf"), m), axis=1))
    lse = big_m + tl.log(s_tot)
    tl.store(out_f_ptr + t, 1.0 / s_tot, mask=t_mask)
    tl.store(out_f_ptr + T + t, tl.log(s_tot) - a_tot / s_tot, mask=t_mask)
    tl.store(out_f_ptr + 2 * T + t, lse, mask=t_mask)
    tl.store(out_f_ptr + 3 * T + t, (1.0 - tl.exp(z2 - big_m)) / s_tot, mask=t_mask)
    tl.store(out_i_ptr + t, tl.sum(tl.where(is_win, arg, 0), axis=1).to(tl.int64), mask=t_mask)
    if HAS_TOKENS:
        tok = tl.load(tok_ptr + tl.minimum(t, T - 1))
        tok_z = tl.sum(tl.load(part_f_ptr + 4 * ts + src, mask=mask, other=0.0), axis=1)
        logprob = tl.where((tok >= 0) & (tok < V), tok_z - lse, float("nan"))
        tl.store(out_f_ptr + 4 * T + t, logprob, mask=t_mask)
    if HAS_SEED:
        g_best = tl.load(part_f_ptr + 5 * ts + src, mask=mask, other=float("-inf"))
        g_arg = tl.load(part_i_ptr + ts + src, mask=mask, other=0)
        g_top = tl.max(g_best, axis=1)
        g_win = tl.min(tl.where(g_best == g_top[:, None], j[None, :], BLOCK_S), axis=1)
        sample = tl.sum(tl.where(j[None, :] == g_win[:, None], g_arg, 0), axis=1)
        tl.store(out_i_ptr + T + t, sample.to(tl.int64), mask=t_mask)


# ---------------------------------------------------------------------------------------------
# Host side.
# ---------------------------------------------------------------------------------------------
# Decided when this module was imported. The interpreter also needs Triton's own library (tl.sum,
# tl.max: jit functions) interpreted, i.e. TRITON_INTERPRET=1 already when triton was imported.
INTERPRETED = isinstance(_exit_head_partials_kernel, InterpretedFunction)
INTERPRETER_USABLE = INTERPRETED and not isinstance(tl.sum, JITFunction)


@dataclass(frozen=True)
class ExitHeadConfig:
    """Launch shape. Fixed per T (no autotuning), so results are reproducible run to run: the
    vocabulary split, and with it the floating-point merge order, depends on the config."""

    tile_t: int  # tokens per program (>= 16: the smallest tl.dot shape)
    block_v: int  # vocabulary rows per tl.dot tile
    block_h: int  # hidden columns per tl.dot step
    num_warps: int = 4
    num_stages: int = 3
    programs_per_sm: int = 2  # programs aimed for, per multiprocessor, over the whole grid
    prenorm: bool = False  # normalise in a separate launch (h [T, H] in W's dtype) or in the loop


INTERPRETER_CONFIG = ExitHeadConfig(tile_t=16, block_v=128, block_h=64, num_warps=1, num_stages=1)
INTERPRETER_SPLITS = 3  # enough to exercise both merges: within a program and across programs


def default_config(num_tokens: int) -> ExitHeadConfig:
    """Per-T launch shapes, chosen for Hopper from the compiler's resource report (sm_90: no
    register spills with or without sampling, <= 72 KB of shared memory so two programs fit per
    multiprocessor) -- not yet from timings: `benchmarks/bench_exit_head.py --sweep` times them."""
    if INTERPRETED:
        return INTERPRETER_CONFIG
    if num_tokens <= 16:  # bandwidth-bound: 64 x 128 W tiles, 4-deep cp.async pipeline, mma.sync
        return ExitHeadConfig(tile_t=16, block_v=64, block_h=128, num_warps=4, num_stages=4)
    if num_tokens <= 64:  # wgmma from here on (M = tokens >= 64)
        return ExitHeadConfig(tile_t=64, block_v=128, block_h=64, num_warps=8, num_stages=3, prenorm=True)
    return ExitHeadConfig(tile_t=128, block_v=64, block_h=64, num_warps=8, num_stages=3, prenorm=True)


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_splits(cfg: ExitHeadConfig, num_blocks: int, num_tiles: int, device: torch.device) -> int:
    if INTERPRETED or device.type != "cuda":
        return min(num_blocks, INTERPRETER_SPLITS)
    target = cfg.programs_per_sm * _num_sms(device.index or 0)
    return max(1, min(num_blocks, target // num_tiles))


def exit_head_triton(
    hidden: torch.Tensor,  # [T, H], last dim contiguous
    norm_weight: torch.Tensor,  # [H]
    eps: float,
    lm_head_weight: torch.Tensor,  # [V, H], last dim contiguous
    inv_temperature: float = 1.0,
    token_ids: torch.Tensor | None = None,  # int64 [T]
    seed: torch.Tensor | None = None,  # int64 [1]
    config: ExitHeadConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernels. Returns out_f: fp32 [5, T] (max_prob, entropy, logsumexp, margin,
    token_logprob) and out_i: int64 [2, T] (argmax, sample); rows for absent inputs are garbage."""
    (T, H), V = hidden.shape, lm_head_weight.shape[0]
    cfg = config or default_config(T)
    dev = hidden.device
    num_blocks, num_tiles = triton.cdiv(V, cfg.block_v), triton.cdiv(T, cfg.tile_t)
    num_splits = _num_splits(cfg, num_blocks, num_tiles, dev)
    part_f = torch.empty(PARTIAL_FLOAT_FIELDS, T, num_splits, dtype=torch.float32, device=dev)
    part_i = torch.empty(PARTIAL_INT_FIELDS, T, num_splits, dtype=torch.int32, device=dev)
    out_f = torch.empty(OUT_FLOAT_FIELDS, T, dtype=torch.float32, device=dev)
    out_i = torch.empty(OUT_INT_FIELDS, T, dtype=torch.int64, device=dev)
    has_tokens, has_seed = token_ids is not None, seed is not None
    tok = token_ids if has_tokens else out_i
    seed_arg = seed if has_seed else out_i
    round_product = torch.promote_types(norm_weight.dtype, hidden.dtype) == hidden.dtype
    precision = "ieee" if lm_head_weight.dtype == torch.float32 else "tf32"

    x = hidden
    if cfg.prenorm:
        x = torch.empty(T, H, dtype=lm_head_weight.dtype, device=dev)
        _rms_norm_kernel[(triton.cdiv(T, 16),)](
            hidden,
            norm_weight,
            x,
            T,
            H,
            hidden.stride(0),
            float(eps),
            ROUND_PRODUCT=round_product,
            TILE_T=16,
            BLOCK_H=min(256, triton.next_power_of_2(H)),
        )
    _exit_head_partials_kernel[(num_tiles, num_splits)](
        x,
        norm_weight,
        lm_head_weight,
        tok,
        seed_arg,
        part_f,
        part_i,
        T,
        V,
        H,
        x.stride(0),
        lm_head_weight.stride(0),
        float(eps),
        float(inv_temperature),
        num_blocks,
        HAS_TOKENS=has_tokens,
        HAS_SEED=has_seed,
        PRENORMED=cfg.prenorm,
        ROUND_PRODUCT=round_product,
        DOT_PRECISION=precision,
        TILE_T=cfg.tile_t,
        BLOCK_V=cfg.block_v,
        BLOCK_H=cfg.block_h,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    block_s = max(16, triton.next_power_of_2(num_splits))
    block_t = min(triton.next_power_of_2(T), max(1, 4096 // block_s), 64)
    _exit_head_reduce_kernel[(triton.cdiv(T, block_t),)](
        part_f,
        part_i,
        tok,
        out_f,
        out_i,
        T,
        V,
        num_splits,
        HAS_TOKENS=has_tokens,
        HAS_SEED=has_seed,
        BLOCK_T=block_t,
        BLOCK_S=block_s,
        num_warps=4,
    )
    return out_f, out_i
