"""Tests of the fused exit head (eedecode.kernels): the Triton kernel and the chunked torch
reference, both against a plain float64 oracle built on Hugging Face's own LlamaRMSNorm.

On the CPU the Triton kernel runs in Triton's interpreter. Triton reads TRITON_INTERPRET when it is
first imported (conftest's transformers import already does that), so the tests of the kernel run
in a child pytest started with TRITON_INTERPRET=1 (`test_triton_interpreter_suite`: the node ids
with "triton" in them); this process runs the reference's and stays uninterpreted. Shapes are
small and odd (V not a multiple of the block, H = 96 in two masked chunks, T across token tiles).
GPU tests repeat the comparisons compiled, with bf16, and are skipped without CUDA.
"""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from eedecode.kernels import BACKEND_ENV, DRAFT_STATS, ExitHeadStats, exit_head, exit_head_reference
from eedecode.kernels.exit_head_reference import gumbel_noise, mix32, rms_norm_hf, row_keys, uniform_from_bits

EPS = 1e-5
FIELDS = ("max_prob", "entropy", "logsumexp", "margin", "token_logprob")
# (atol, rtol) per input dtype: the logits are accumulated in fp32 by every backend; 16-bit inputs
# add rare one-ulp flips of the rounded normalised state when rstd differs in its last bit.
TOLERANCES = {torch.float32: (2e-4, 2e-4), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 1e-2)}


IN_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
BACKENDS_HERE = ["reference", "triton"] if IN_INTERPRETER else ["reference"]


@pytest.mark.skipif(IN_INTERPRETER, reason="this process already interprets Triton")
def test_triton_interpreter_suite():
    """Run this file's Triton tests (node ids containing "triton") in Triton's interpreter."""
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider"]
    cmd += ["-m", "not gpu", "-k", "triton"]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and " passed" in done.stdout, done.stdout[-6000:] + done.stderr[-3000:]


def _inputs(lead, H, V, dtype, *, device="cpu", seed=0, norm_dtype=None, logit_scale=3.0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*lead, H, generator=g).to(dtype)
    norm_weight = (0.5 + torch.rand(H, generator=g)).to(norm_dtype or dtype)
    w = (torch.randn(V, H, generator=g) * logit_scale / math.sqrt(H)).to(dtype)
    return hidden.to(device), norm_weight.to(device), w.to(device)


def oracle(hidden, norm_weight, w, temperature=None, token_ids=None):
    """float64, unchunked: Hugging Face's LlamaRMSNorm, then logits in float64."""
    norm = LlamaRMSNorm(hidden.shape[-1], eps=EPS).to(hidden.device)
    norm.weight = torch.nn.Parameter(norm_weight.clone(), requires_grad=False)
    with torch.no_grad():
        h = norm(hidden).to(w.dtype)
    z = h.double() @ w.double().T / (temperature or 1.0)  # [..., V]
    logp = torch.log_softmax(z, -1)
    top2 = logp.topk(2, -1).values.exp()
    out = dict(
        z=z,
        max_prob=top2[..., 0],
        entropy=-(logp.exp() * logp).sum(-1),
        logsumexp=torch.logsumexp(z, -1),
        margin=top2[..., 0] - top2[..., 1],
    )
    if token_ids is not None:
        out["token_logprob"] = logp.gather(-1, token_ids[..., None])[..., 0]
    return out


def assert_matches(stats: ExitHeadStats, ref: dict, dtype):
    atol, rtol = TOLERANCES[dtype]
    for name in FIELDS:
        got = getattr(stats, name)
        if name not in ref:
            assert got is None
            continue
        assert got.dtype == torch.float32 and got.shape == ref[name].shape, name
        assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got.double(), ref[name], atol=atol, rtol=rtol, msg=name)
    z = ref["z"]
    assert stats.argmax.dtype == torch.int64 and stats.argmax.shape == z.shape[:-1]
    # The chosen entry is a maximum up to the accumulation error; where the top two are apart, exact.
    chosen = z.gather(-1, stats.argmax[..., None])[..., 0]
    z_max = z.max(-1).values
    assert (chosen >= z_max - atol * (1 + z_max.abs())).all()
    top2 = z.topk(2, -1).values
    clear = top2[..., 0] - top2[..., 1] > 10 * atol * (1 + z_max.abs())
    assert torch.equal(stats.argmax[clear], z.argmax(-1)[clear])


# ---------------------------------------------------------------------------------------------
# Kernel and reference against the float64 oracle.
# ---------------------------------------------------------------------------------------------
CASES = [  # (leading shape, hidden dtype, norm-weight dtype, temperature)
    ((1,), torch.float32, None, None),
    ((3,), torch.float32, None, 0.7),
    ((17,), torch.float32, None, 1.9),
    ((2, 3), torch.float32, None, None),
    ((1,), torch.float16, None, 0.5),
    ((3,), torch.float16, None, None),
    ((17,), torch.float16, None, 1.3),
    ((2, 3), torch.float16, torch.float32, 0.8),  # fp32 norm weight: the product is not rounded
]


@pytest.mark.parametrize("lead,dtype,norm_dtype,temperature", CASES)
@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_matches_float64_oracle(backend, lead, dtype, norm_dtype, temperature):
    H, V = 96, 1000
    hidden, nw, w = _inputs(lead, H, V, dtype, norm_dtype=norm_dtype, seed=len(lead) * 10 + lead[0])
    token_ids = torch.randint(0, V, lead, generator=torch.Generator().manual_seed(1))
    stats = exit_head(hidden, nw, EPS, w, temperature=temperature, token_ids=token_ids, backend=backend)
    assert stats.sample is None
    assert_matches(stats, oracle(hidden, nw, w, temperature, token_ids), dtype)


@pytest.mark.parametrize("lead,dtype,norm_dtype,temperature", CASES)
def test_draft_stats_reference_matches_oracle(lead, dtype, norm_dtype, temperature):
    """stats=DRAFT_STATS (the greedy draft step): argmax, max_prob and logsumexp only, same values."""
    hidden, nw, w = _inputs(lead, 96, 1000, dtype, norm_dtype=norm_dtype, seed=3)
    stats = exit_head(hidden, nw, EPS, w, temperature=temperature, backend="reference", stats=DRAFT_STATS)
    assert stats.entropy is None and stats.margin is None
    ref = oracle(hidden, nw, w, temperature)
    assert_matches(stats, {k: ref[k] for k in ("z", "max_prob", "logsumexp")}, dtype)
    full = exit_head(hidden, nw, EPS, w, temperature=temperature, backend="reference")
    assert torch.equal(stats.argmax, full.argmax)


@pytest.mark.parametrize("chunk_size", [1, 7, 97, 199])
def test_reference_chunks_merge_exactly_enough(chunk_size):
    """Chunked reference == one-chunk reference: same argmax and sample, statistics to fp32 rounding."""
    hidden, nw, w = _inputs((5,), 64, 199, torch.float32, seed=3)
    tok = torch.tensor([0, 198, 17, 100, 3])
    seed = torch.tensor([42])
    whole = exit_head_reference(hidden, nw, EPS, w, 0.9, tok, seed, chunk_size=199)
    parts = exit_head_reference(hidden, nw, EPS, w, 0.9, tok, seed, chunk_size=chunk_size)
    assert torch.equal(whole.argmax, parts.argmax) and torch.equal(whole.sample, parts.sample)
    for name in FIELDS:
        torch.testing.assert_close(getattr(parts, name), getattr(whole, name), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Ties, extreme logits.
# ---------------------------------------------------------------------------------------------
def _planted_ties(device="cpu", dtype=torch.float16):
    """Logits r_t * rowsum(W[v]) computed exactly in fp32 by any summation order: every hidden row
    is constant (so h is one fp16 value r_t), W holds small integers. Rows 5, 40 (same block),
    700 (another split) share the largest row sum; 63, 64 (a block edge) and 900 the smallest."""
    H, V = 96, 1000
    g = torch.Generator().manual_seed(0)
    w = torch.randint(-1, 2, (V, H), generator=g).float()
    w[[5, 40, 700]] = 3.0
    w[[63, 64, 900]] = -3.0
    hidden = torch.tensor([1.0, 2.5, -1.0, -0.25])[:, None].expand(4, H)
    nw = torch.ones(H)
    return hidden.to(device, dtype), nw.to(device, dtype), w.to(device, dtype)


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_ties_pick_the_lowest_index(backend):
    hidden, nw, w = _planted_ties()
    stats = exit_head(hidden, nw, EPS, w, temperature=0.5, backend=backend)
    assert stats.argmax.tolist() == [5, 5, 63, 63]
    assert torch.equal(stats.margin, torch.zeros(4))  # p1 - p2 = 0 on a tie
    assert_matches(stats, oracle(hidden, nw, w, 0.5), torch.float16)


def _extreme_cases():
    H, V = 96, 700
    hidden, nw, w = _inputs((3,), H, V, torch.float32, seed=5, logit_scale=1.0)
    yield "huge logits", hidden, nw * 200.0, w, 0.05  # |z| ~ 1e4 .. 1e5
    # Every logit the same, -4800 r_t (exact in fp32: fp16 r_t times small integers), z ~ -5e5.
    constant_rows = torch.tensor([1.0, 2.0, 0.5])[:, None].expand(3, H).half()
    minus_50 = torch.full((V, H), -50.0).half()
    yield "very negative, all equal", constant_rows, torch.ones(H).half(), minus_50, 0.01
    big = (torch.randn(3, H) * 3e4).clamp(-6e4, 6e4).half()  # x^2 overflows fp16, not fp32
    yield "fp16 hidden near its max", big, nw.half(), w.half(), None


@pytest.mark.parametrize("case", list(range(3)), ids=[c[0] for c in _extreme_cases()])
@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_extreme_logits_stay_finite(backend, case):
    _, hidden, nw, w, temperature = list(_extreme_cases())[case]
    tok = torch.tensor([0, 1, 2])
    stats = exit_head(hidden, nw, EPS, w, temperature=temperature, token_ids=tok, seed=1, backend=backend)
    for name in FIELDS:
        assert torch.isfinite(getattr(stats, name)).all(), name
    ref = oracle(hidden, nw, w, temperature, tok)
    atol = 1e-3 * (1 + ref["logsumexp"].abs().max().item())
    torch.testing.assert_close(stats.logsumexp.double(), ref["logsumexp"], atol=atol, rtol=1e-5)
    for name in ("max_prob", "entropy", "margin"):
        torch.testing.assert_close(getattr(stats, name).double(), ref[name], atol=1e-4, rtol=1e-4)
    if case == 1:
        V = w.shape[0]
        assert stats.argmax.tolist() == [0, 0, 0]
        torch.testing.assert_close(stats.entropy, torch.full((3,), math.log(V)))


# ---------------------------------------------------------------------------------------------
# Gumbel-max sampling.
# ---------------------------------------------------------------------------------------------
def _lowbias32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_mix32_is_lowbias32_over_the_whole_32_bit_range():
    xs = [0, 1, 2**31 - 1, 2**31, 2**32 - 1] + torch.randint(0, 2**32, (200,)).tolist()
    assert mix32(torch.tensor(xs)).tolist() == [_lowbias32(x) for x in xs]


def test_uniforms_never_reach_0_or_1():
    u = uniform_from_bits(torch.tensor([0, 511, 512, 2**32 - 1]))
    assert u.tolist() == [2.0**-24, 2.0**-24, 3 * 2.0**-24, 1 - 2.0**-24]
    assert torch.isfinite(-torch.log(-torch.log(u))).all()
    g = gumbel_noise(row_keys(torch.tensor([3]), torch.arange(64)), torch.arange(5000))
    assert torch.isfinite(g).all() and abs(g.mean().item() - 0.5772) < 0.01  # Euler-Mascheroni


@pytest.mark.skipif(not IN_INTERPRETER, reason="runs in test_triton_interpreter_suite")
@pytest.mark.parametrize("seed", [0, 2**63 + 5, -1, torch.tensor(98765)], ids=["0", "2^63+5", "-1", "tensor"])
def test_triton_samples_equal_reference_samples(seed):
    hidden, nw, w = _inputs((17,), 96, 1000, torch.float32, seed=9, logit_scale=1.0)
    kw = dict(temperature=0.6, seed=seed)
    kernel = exit_head(hidden, nw, EPS, w, backend="triton", **kw).sample
    reference = exit_head(hidden, nw, EPS, w, backend="reference", **kw).sample
    assert kernel.dtype == torch.int64 and torch.equal(kernel, reference)
    assert len(set(kernel.tolist())) > 5  # flat-ish logits: rows draw different tokens


@pytest.mark.skipif(not IN_INTERPRETER, reason="runs in test_triton_interpreter_suite")
def test_triton_prenorm_path_matches_oracle():
    """The separate-normalisation launch used for large T, on the interpreter's small blocks."""
    kt = importlib.import_module("eedecode.kernels.exit_head_triton")
    config = kt.ExitHeadConfig(tile_t=16, block_v=128, block_h=64, prenorm=True)
    hidden, nw, w = _inputs((20,), 96, 1000, torch.float16, seed=4)
    tok = torch.randint(0, 1000, (20,), generator=torch.Generator().manual_seed(2))
    out_f, out_i = kt.exit_head_triton(hidden, nw, EPS, w, 1 / 0.9, tok, torch.tensor([5]), config=config)
    stats = ExitHeadStats(out_i[0], *out_f[:4], out_f[4], out_i[1])
    assert_matches(stats, oracle(hidden, nw, w, 0.9, tok), torch.float16)
    reference = exit_head(hidden, nw, EPS, w, temperature=0.9, seed=5, backend="reference")
    assert torch.equal(stats.sample, reference.sample)


def test_seed_conventions():
    hidden, nw, w = _inputs((4,), 32, 300, torch.float32, logit_scale=0.5)

    def draw(seed):
        return exit_head(hidden, nw, EPS, w, seed=seed).sample

    assert torch.equal(draw(7), draw(torch.tensor([7])))
    assert torch.equal(draw(-1), draw(2**64 - 1))  # taken mod 2^64
    assert len({tuple(draw(s).tolist()) for s in range(10)}) > 5


def _chi_square_pvalue(samples: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(samples, minlength=probs.numel()).double()
    expected = probs.double() * samples.numel()
    chi2 = ((counts - expected) ** 2 / expected).sum()
    return torch.special.gammaincc(torch.tensor((probs.numel() - 1) / 2.0), chi2 / 2).item()


def test_samples_follow_the_tempered_softmax():
    """20000 rows of one hidden state: each row draws independently (the row is in the hash).
    The same test rejects samples drawn at the wrong temperature, so it can fail."""
    H, V, N, temperature = 16, 6, 20000, 0.7
    hidden, nw, w = _inputs((1,), H, V, torch.float32, seed=2, logit_scale=0.7)
    rows = hidden.expand(N, H)
    probs = torch.softmax(oracle(hidden, nw, w, temperature)["z"][0], -1)
    assert probs.min() > 0.02 and probs.max() < 0.7
    good = exit_head(rows, nw, EPS, w, temperature=temperature, seed=2024).sample
    wrong = exit_head(rows, nw, EPS, w, temperature=1.0, seed=2024).sample
    assert _chi_square_pvalue(good, probs) > 1e-3
    assert _chi_square_pvalue(wrong, probs) < 1e-6


# ---------------------------------------------------------------------------------------------
# API: shapes, backend choice, errors.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_leading_shape_and_empty_input(backend):
    hidden, nw, w = _inputs((2, 3), 96, 500, torch.float32)
    tok = torch.zeros(2, 3, dtype=torch.int32)
    stats = exit_head(hidden, nw, EPS, w, token_ids=tok, seed=0, backend=backend)
    assert stats.topk_ids is None and stats.topk_probs is None  # not asked for
    assert all(f.shape == (2, 3) for f in stats[:7])
    empty = exit_head(hidden[:0], nw, EPS, w, seed=0, backend=backend)
    assert all(f.shape == (0, 3) for f in empty if f is not None)


def test_top_k_keeps_its_dimension_under_a_leading_shape():
    hidden, nw, w = _inputs((2, 3), 96, 500, torch.float32)
    stats = exit_head(hidden, nw, EPS, w, top_k=4, backend="reference")
    assert stats.topk_ids.shape == (2, 3, 4) and stats.topk_probs.shape == (2, 3, 4)
    flat = exit_head(hidden.reshape(6, 96), nw, EPS, w, top_k=4, backend="reference")
    assert torch.equal(stats.topk_ids.reshape(6, 4), flat.topk_ids)
    assert torch.equal(stats.topk_ids[..., 0], stats.argmax)


def test_triton_backend_without_triton_says_how_to_install_it(monkeypatch):
    exit_head_module = importlib.import_module("eedecode.kernels.exit_head")
    monkeypatch.setattr(exit_head_module, "_triton_importable", lambda: False)
    hidden, nw, w = _inputs((2,), 96, 50, torch.float32)
    with pytest.raises(ValueError, match=r"pip install 'eedecode\[triton\]'"):
        exit_head(hidden, nw, EPS, w, backend="triton")
    assert exit_head(hidden, nw, EPS, w).argmax.shape == (2,)  # automatic: the reference


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_out_of_range_token_gives_nan(backend):
    hidden, nw, w = _inputs((3,), 96, 300, torch.float32)
    tok = torch.tensor([-1, 300, 299])
    lp = exit_head(hidden, nw, EPS, w, token_ids=tok, backend=backend).token_logprob
    assert lp[:2].isnan().all() and torch.isfinite(lp[2])


def test_backend_choice(monkeypatch):
    kernels = importlib.import_module("eedecode.kernels.exit_head")
    calls = []
    monkeypatch.setattr(
        kernels, "exit_head_reference", lambda *a, **kw: calls.append(1) or exit_head_reference(*a, **kw)
    )
    hidden, nw, w = _inputs((2,), 32, 50, torch.float32)
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    exit_head(hidden, nw, EPS, w)  # CPU tensors: reference
    assert calls == [1]
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        exit_head(hidden, nw, EPS, w, backend="triton")
    monkeypatch.setenv(BACKEND_ENV, "triton")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        exit_head(hidden, nw, EPS, w)
    exit_head(hidden, nw, EPS, w, backend="reference")  # the argument beats the environment
    assert calls == [1, 1]
    monkeypatch.setenv(BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match=BACKEND_ENV):
        exit_head(hidden, nw, EPS, w)
    with pytest.raises(ValueError, match="backend"):
        exit_head(hidden, nw, EPS, w, backend="Triton")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(temperature=0.0),
        dict(temperature=-1.0),
        dict(temperature=float("nan")),
        dict(temperature=float("inf")),
        dict(temperature="hot"),
        dict(token_ids=torch.zeros(3, dtype=torch.long)),
        dict(token_ids=torch.zeros(2, dtype=torch.float32)),
        dict(seed=1.5),
        dict(seed=torch.tensor([1, 2])),
    ],
)
def test_bad_arguments_raise(kwargs):
    hidden, nw, w = _inputs((2,), 32, 50, torch.float32)
    with pytest.raises(ValueError):
        exit_head(hidden, nw, EPS, w, **kwargs)


BAD_SHAPES = [  # (hidden, norm_weight, lm_head_weight)
    ((2, 32), (31,), (50, 32)),
    ((2, 32), (32,), (50, 31)),
    ((2, 32), (32,), (50,)),
    ((2, 0), (0,), (5, 0)),
]


@pytest.mark.parametrize("shapes", BAD_SHAPES)
def test_bad_shapes_raise(shapes):
    hidden, nw, w = (torch.randn(s) for s in shapes)
    with pytest.raises(ValueError):
        exit_head(hidden, nw, EPS, w)


# ---------------------------------------------------------------------------------------------
# Compiled on a GPU.
# ---------------------------------------------------------------------------------------------
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 16, 17, 130])
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_gpu_kernel_matches_oracle(dtype, T):
    H, V = 1024, 32003
    hidden, nw, w = _inputs((T,), H, V, dtype, device="cuda", seed=T)
    tok = torch.randint(0, V, (T,), device="cuda")
    stats = exit_head(hidden, nw, EPS, w, temperature=0.8, token_ids=tok, seed=5)  # auto: triton
    assert_matches(stats, oracle(hidden, nw, w, 0.8, tok), dtype)
    reference = exit_head(hidden, nw, EPS, w, temperature=0.8, token_ids=tok, seed=5, backend="reference")
    atol, rtol = TOLERANCES[dtype]
    for name in FIELDS:
        torch.testing.assert_close(getattr(stats, name), getattr(reference, name), atol=atol, rtol=rtol)
    assert torch.equal(stats.sample, reference.sample)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gpu_ties_pick_the_lowest_index(dtype):
    hidden, nw, w = _planted_ties("cuda", dtype)
    stats = exit_head(hidden, nw, EPS, w, temperature=0.5)
    assert stats.argmax.tolist() == [5, 5, 63, 63]
    assert torch.equal(stats.margin, torch.zeros(4, device="cuda"))


@pytest.mark.gpu
def test_gpu_is_deterministic_and_samples_follow_softmax():
    hidden, nw, w = _inputs((300,), 2048, 32000, torch.bfloat16, device="cuda")
    tok = torch.zeros(300, dtype=torch.long, device="cuda")
    first, second = (exit_head(hidden, nw, EPS, w, seed=3, token_ids=tok) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))

    H, V, N = 16, 6, 200_000
    hidden, nw, w = _inputs((1,), H, V, torch.float32, device="cuda", seed=2, logit_scale=1.5)
    probs = torch.softmax(oracle(hidden, nw, w, 0.7)["z"][0], -1).cpu()
    samples = exit_head(hidden.expand(N, H), nw, EPS, w, temperature=0.7, seed=11).sample.cpu()
    wrong = exit_head(hidden.expand(N, H), nw, EPS, w, temperature=0.8, seed=11).sample.cpu()
    assert _chi_square_pvalue(samples, probs) > 1e-3
    assert _chi_square_pvalue(wrong, probs) < 1e-6


@pytest.mark.gpu
def test_gpu_cuda_graph_replay_with_a_device_seed():
    hidden, nw, w = _inputs((4,), 512, 5000, torch.bfloat16, device="cuda")
    seed = torch.tensor([1], device="cuda")
    exit_head(hidden, nw, EPS, w, seed=seed)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = exit_head(hidden, nw, EPS, w, seed=seed)
    for step in range(3):
        seed.fill_(100 + step)
        graph.replay()
        eager = exit_head(hidden, nw, EPS, w, seed=seed)
        assert all(torch.equal(a, b) for a, b in zip(captured, eager, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reference_norm_is_hf_norm_bit_for_bit(dtype):
    norm = LlamaRMSNorm(96, eps=EPS).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(96, generator=torch.Generator().manual_seed(0)) + 0.5)
    g = torch.Generator().manual_seed(1)
    for scale in (1e-3, 1.0, 1e3):
        x = (torch.randn(7, 96, generator=g) * scale).to(dtype)
        with torch.no_grad():
            assert torch.equal(rms_norm_hf(x, norm.weight, EPS), norm(x))
