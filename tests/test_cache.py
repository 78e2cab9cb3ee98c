"""KV cache: per-layer and per-row lengths, rollback by moving lengths, masks that match HF."""

from __future__ import annotations

import torch
from conftest import cached_tiny_model

from eedecode.model.runner import ModelRunner


def test_rollback_moves_lengths_without_copying():
    runner = ModelRunner(cached_tiny_model("llama"))
    cache = runner.new_cache(batch_size=1, max_len=32)
    ptrs = [k.data_ptr() for k in cache.keys]
    ids = torch.randint(3, 97, (1, 10))
    runner.run_layers(runner.embed(ids[:, :6]), 0, runner.num_layers, cache)
    runner.run_layers(runner.embed(ids[:, 6:]), 0, 2, cache)  # shallow layers run ahead
    assert cache.lengths[:, 0].tolist() == [10, 10, 6, 6, 6, 6]
    assert cache.bound == [10, 10, 6, 6, 6, 6]
    cache.rollback(torch.tensor([7]), 7, uniform=True)
    assert cache.lengths[:, 0].tolist() == [7] * 6
    assert [k.data_ptr() for k in cache.keys] == ptrs


def test_rows_with_different_lengths_match_rows_run_alone():
    """Scatter writes and per-row masks (non-uniform rows) give each row what it gets alone."""
    runner = ModelRunner(cached_tiny_model("mistral"))  # sliding window 16: masks cut both ways
    L = runner.num_layers
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 97, (2, 30), generator=g)
    batch = runner.new_cache(batch_size=2, max_len=48)
    runner.run_layers(runner.embed(ids[:, :20]), 0, L, batch)
    batch.rollback(torch.tensor([20, 14]), 20, uniform=False)  # row 1 "rejected" 6 tokens
    nxt = torch.stack([ids[0, 20:24], ids[1, 14:18]])  # each row continues from its own length
    out = runner.run_layers(runner.embed(nxt), 0, L, batch)
    for row, (start, stop) in enumerate([(20, 24), (14, 18)]):
        alone = runner.new_cache(batch_size=1, max_len=48)
        runner.run_layers(runner.embed(ids[row : row + 1, :start]), 0, L, alone)
        ref = runner.run_layers(runner.embed(ids[row : row + 1, start:stop]), 0, L, alone)
        torch.testing.assert_close(out[row : row + 1], ref, rtol=1e-5, atol=1e-5)
    assert batch.lengths[:, 0].tolist() == [24] * L and batch.lengths[:, 1].tolist() == [18] * L


def test_left_padding_matches_hf_positions_and_mask():
    model = cached_tiny_model("qwen2")
    runner = ModelRunner(model)
    ids = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    ref = model(ids, attention_mask=mask).logits
    cache = runner.new_cache(batch_size=2, max_len=16)
    cache.set_padding(mask)
    got = runner.logits(runner.run_layers(runner.embed(ids), 0, runner.num_layers, cache))
    valid = mask.bool()
    torch.testing.assert_close(got[valid], ref[valid], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(got).all()  # padding queries attend to themselves, never to nothing
