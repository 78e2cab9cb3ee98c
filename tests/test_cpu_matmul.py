"""The CPU products of the hot path: equal to a float64 product within fp32 rounding on both
libraries (odd shapes, biases, column slices of fused matrices), and the rows that round alike."""

from __future__ import annotations

import pytest
import torch

from eedecode.kernels import cpu_matmul
from eedecode.kernels.cpu_matmul import linear, matmul_t, onednn_available

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN")


def _case(rows, n_in, n_out, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n_in, generator=g)
    w = torch.randn(n_out, n_in, generator=g) / n_in**0.5
    b = torch.randn(n_out, generator=g) if bias else None
    ref = x.double() @ w.double().t() + (0 if b is None else b.double())
    return x, w, b, ref


@pytest.fixture(params=["mkl", "onednn"])
def library(request, monkeypatch):
    """Force every product onto one library (thresholds at 0, or oneDNN switched off)."""
    if request.param == "onednn":
        if not onednn_available():
            pytest.skip("this torch build has no oneDNN")
        for name in ("ONEDNN_MIN_ROWS", "STREAM_MIN_ROWS", "ONEDNN_MIN_MACS"):
            monkeypatch.setattr(cpu_matmul, name, 0)
    else:
        monkeypatch.setattr(cpu_matmul, "onednn_available", lambda: False)
    return request.param


@pytest.mark.parametrize("rows", [1, 3, 4, 17])
@pytest.mark.parametrize("shape", [(33, 65), (96, 7), (256, 300)])
@pytest.mark.parametrize("bias", [False, True])
def test_products_match_float64(library, rows, shape, bias):
    x, w, b, ref = _case(rows, *shape, bias)
    w_t = w.t().contiguous()
    for got in (matmul_t(x, w_t, b), linear(x, w, b), linear(x, w_t.t(), b)):
        assert got.shape == (rows, shape[1]) and got.dtype == torch.float32
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_column_slice_of_a_fused_matrix(library):
    """q, k, v read as column slices of one [in, q + k + v] matrix (the packed layout)."""
    x, w, b, ref = _case(5, 40, 72, True)
    fused = torch.cat([torch.zeros(40, 24), w.t(), torch.zeros(40, 8)], 1)
    got = matmul_t(x, fused[:, 24:96], b)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_a_column_slice_never_goes_to_onednn(monkeypatch):
    """oneDNN reorders a sliced weight on every call (a vocabulary chunk of an LM head over 510
    rows took 6 s instead of 5 ms): slices stay on MKL at any size, whole matrices do not."""
    calls = []
    monkeypatch.setattr(cpu_matmul, "onednn_available", lambda: True)
    monkeypatch.setattr(cpu_matmul, "_onednn", lambda x, w, b: calls.append(w.shape) or x @ w.t())
    x = torch.randn(64, 256)
    wide = torch.randn(256, 4096)
    matmul_t(x, wide[:, :2048])
    assert calls == []
    matmul_t(x, wide)
    assert calls == [(4096, 256)]


def test_last_level_cache_decides_streaming():
    llc = cpu_matmul.last_level_cache_bytes()
    assert llc > 0
    assert cpu_matmul.streams_from_memory(llc + 1) and not cpu_matmul.streams_from_memory(llc)


def test_before_timing_the_cache_size_rule_and_tiny_models_have_nothing_to_time(monkeypatch):
    rule = cpu_matmul.library_before_timing
    small = [torch.zeros(256, 768)]  # 16 rows x 196k multiply-adds: over ONEDNN_MIN_MACS
    assert rule(small) == (cpu_matmul.ONEDNN_MIN_ROWS, True)
    assert rule([torch.zeros(32, 96)]) == (cpu_matmul.ONEDNN_MIN_ROWS, False)  # always MKL
    monkeypatch.setattr(cpu_matmul, "last_level_cache_bytes", lambda: 256 * 768 * 4 - 1)
    assert rule(small) == (cpu_matmul.STREAM_MIN_ROWS, True)  # more than the cache: streams


def test_which_library_serves_which_product(monkeypatch):
    monkeypatch.setattr(cpu_matmul, "onednn_available", lambda: True)
    use = cpu_matmul.use_onednn
    assert not use(3, 1024, 1024, torch.float32)  # few rows: MKL, the one-token steps' library
    assert use(4, 1024, 1024, torch.float32)
    assert not use(64, 32, 64, torch.float32)  # small: oneDNN's fixed cost does not pay
    assert not use(16, 1024, 1024, torch.bfloat16)
    f32 = torch.float32
    assert use(2, 1024, 1024, f32, onednn_from=2) and not use(1, 1024, 1024, f32, onednn_from=1)
    assert not use(15, 1024, 1024, f32, onednn_from=16) and use(16, 1024, 1024, f32, onednn_from=16)
    assert not use(4096, 1024, 1024, f32, onednn_from=cpu_matmul.ONEDNN_NEVER)


@needs_onednn
def test_onednn_rounds_every_row_as_if_alone(monkeypatch):
    """What lets verification of many rows match decoding one row at a time bit for bit."""
    for name in ("ONEDNN_MIN_ROWS", "STREAM_MIN_ROWS", "ONEDNN_MIN_MACS"):
        monkeypatch.setattr(cpu_matmul, name, 0)
    x, w, _, _ = _case(48, 256, 320, False)
    w_t = w.t().contiguous()
    alone = cpu_matmul._onednn(x[:1], w_t.t(), None)  # one row alone (the hot path sends it to MKL)
    for rows in (2, 3, 4, 9, 48):
        assert torch.equal(matmul_t(x[:rows], w_t)[:1], alone)


def _streaming_model(monkeypatch, **overrides):
    """A tiny model whose runner believes its weights stream from memory, with products large
    enough for oneDNN (hidden 512: a 2-row product is over ONEDNN_MIN_MACS)."""
    from conftest import tiny_model

    from eedecode.model import costs

    monkeypatch.setattr(costs, "library_before_timing", lambda weights: (cpu_matmul.STREAM_MIN_ROWS, True))
    kw = dict(hidden_size=512, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=4)
    return tiny_model(**{**kw, **overrides})


@pytest.mark.parametrize(
    "faster_from, threshold",
    [(2, 2), (4, 4), (16, 16), (None, "never")],
)
def test_block_library_is_measured_once_per_model(monkeypatch, faster_from, threshold):
    """Before its first block of 2 to 16 rows the runner times a full-depth pass over 2, 4 and 16
    tokens with each library, lets oneDNN serve products from the smallest row count from which
    it was faster at every larger one, keeps that in the model's memory (per thread count), and a
    later runner of the same model reads it instead of timing again; reset() forgets it."""
    from eedecode.model import costs
    from eedecode.model.memory import memory_of
    from eedecode.model.runner import ModelRunner

    model = _streaming_model(monkeypatch)
    timed = []
    real = costs._scratch_passes
    never = cpu_matmul.ONEDNN_NEVER

    def fake_passes(runner, batch_size, sizes):
        real(runner, batch_size, sizes)  # the scratch cache, built as for real
        assert sizes == list(costs.LIBRARY_ROWS)

        def seconds(i):
            onednn = runner.onednn_from == 2
            assert runner.onednn_from in (2, never)
            timed.append((sizes[i], onednn))
            return 1.0 if onednn == (faster_from is not None and sizes[i] >= faster_from) else 2.0

        return seconds

    monkeypatch.setattr(costs, "_scratch_passes", fake_passes)
    runner = ModelRunner(model)
    ids = torch.randint(3, 90, (1, 40), generator=torch.Generator().manual_seed(0))
    runner.logits(runner.run_layers(runner.embed(ids[:, :1]), 0, runner.num_layers))  # one row: no timing
    runner.run_layers(runner.embed(ids), 0, runner.num_layers)  # a prompt of 40 tokens: no timing
    assert timed == [] and memory_of(model).onednn_from_rows == {}
    runner.run_layers(runner.embed(ids[:, :2]), 0, runner.num_layers)
    for T in costs.LIBRARY_ROWS:  # both libraries at each size, taking turns, after a warm-up turn
        assert timed.count((T, True)) == timed.count((T, False)) == 3
    threads = torch.get_num_threads()
    expected = never if threshold == "never" else threshold
    assert runner.onednn_from == expected and memory_of(model).onednn_from_rows == {threads: expected}
    n = len(timed)
    again = ModelRunner(model)
    assert again.onednn_from == expected  # read from memory when built: its prompts run with it too
    again.run_layers(again.embed(ids[:, :3]), 0, again.num_layers)
    assert len(timed) == n and again.onednn_from == expected  # not timed again
    memory_of(model).reset()
    assert memory_of(model).onednn_from_rows == {}


def test_onednn_faster_only_at_small_blocks_is_not_chosen(monkeypatch):
    """The threshold holds for every larger block: oneDNN faster at 2 rows but not at 16 stays off."""
    from eedecode.model import costs
    from eedecode.model.runner import ModelRunner

    model = _streaming_model(monkeypatch)
    real = costs._scratch_passes

    def fake_passes(runner, batch_size, sizes):
        real(runner, batch_size, sizes)
        return lambda i: 1.0 if (runner.onednn_from == 2) == (sizes[i] < 16) else 2.0

    monkeypatch.setattr(costs, "_scratch_passes", fake_passes)
    runner = ModelRunner(model)
    assert costs.choose_block_library(runner) == cpu_matmul.ONEDNN_NEVER


def test_block_library_is_chosen_inside_a_call_and_tokens_match(monkeypatch):
    """The choice made on the real clock in the middle of a self-speculative call, between the
    prompt and the first verification: the call's tokens equal autoregressive decoding's (the
    timing passes use a scratch cache, never the call's), and the choice is kept."""
    import eedecode
    from eedecode.model.memory import memory_of

    model = _streaming_model(monkeypatch)
    ids = torch.randint(3, 90, (1, 24), generator=torch.Generator().manual_seed(1))
    plain = eedecode.generate(model, ids, mode="autoregressive", max_new_tokens=16)
    assert memory_of(model).onednn_from_rows == {}  # one-row steps and the prompt never ask
    kw = dict(exit_layer=1, num_speculations=1, max_new_tokens=16)
    spec = eedecode.generate(model, ids, mode="self_speculative", **kw)
    assert torch.equal(spec, plain)
    assert set(memory_of(model).onednn_from_rows) == {torch.get_num_threads()}


def test_without_packed_matrices_there_is_nothing_to_choose(monkeypatch):
    from eedecode.model.costs import choose_block_library
    from eedecode.model.memory import memory_of
    from eedecode.model.runner import ModelRunner

    model = _streaming_model(monkeypatch)
    runner = ModelRunner(model, pack="none")
    assert choose_block_library(runner) == runner.onednn_from
    assert memory_of(model).onednn_from_rows == {}
