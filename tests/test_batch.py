"""Batches: left padding, per-row acceptance, rows that stop at different times."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, cached_tiny_model

import eedecode
from eedecode.engine import chooser


def padded_batch(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    P = max(lengths)
    ids = torch.zeros(len(lengths), P, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, P - n :] = torch.randint(3, 97, (n,), generator=g)
        mask[i, P - n :] = 1
    return ids, mask


def hf(model, ids, mask, **kw):
    return model.generate(ids, attention_mask=mask, do_sample=False, pad_token_id=0, **kw)


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_equals_hf_padded_batch_and_rows_alone(arch, monkeypatch):
    per_round = []  # emitted counts of every row, per round
    original = chooser.greedy_accept

    def recording(drafts, target_logits, num_drafts=None):
        tokens, n = original(drafts, target_logits, num_drafts)
        per_round.append(n.tolist())
        return tokens, n

    monkeypatch.setattr(chooser, "greedy_accept", recording)
    model = cached_tiny_model(arch, eos_token_id=None, bos_token_id=None)
    lengths = [5, 17, 1, 9, 12]
    ids, mask = padded_batch(lengths)
    P = ids.shape[1]
    ref = hf(model, ids, mask, max_new_tokens=25)
    for mode, settings in [
        ("autoregressive", {}),
        ("self_speculative", dict(exit_layer=1, num_speculations=2)),
        ("self_speculative", dict(exit_layer=3, num_speculations=5)),
        ("adaptive", {}),
    ]:
        out = eedecode.generate(
            model,
            ids,
            attention_mask=mask,
            mode=mode,
            **settings,
            max_new_tokens=25,
            return_dict_in_generate=True,
        )
        assert torch.equal(out.sequences, ref), (mode, settings)
    # rows accepted their own number of drafts in the same round
    assert any(len(set(counts)) > 1 for counts in per_round)
    for i, n in enumerate(lengths):
        alone = eedecode.generate(
            model, ids[i : i + 1, P - n :], exit_layer=3, num_speculations=5, max_new_tokens=25
        )
        assert torch.equal(alone[0, n:], ref[i, P:])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_rows_that_stop_at_different_times(arch):
    """EOS ends rows at different steps; finished rows are padded, the others go on, as in HF."""
    model = cached_tiny_model(arch, eos_token_id=None, bos_token_id=None)
    lengths = [6, 3, 11, 8]
    ids, mask = padded_batch(lengths, seed=1)
    P = ids.shape[1]
    free = hf(model, ids, mask, max_new_tokens=30)
    eos = free[0, P + 4].item()  # row 0 stops after 5 tokens; the others whenever they meet it
    ref = hf(model, ids, mask, max_new_tokens=30, eos_token_id=eos)
    stops = [(row[P:] == eos).nonzero() for row in ref]
    assert len({int(s[0]) if len(s) else -1 for s in stops}) > 1, "rows should stop at different times"
    for k in (1, 4, 8):
        out = eedecode.generate(
            model,
            ids,
            attention_mask=mask,
            exit_layer=2,
            num_speculations=k,
            max_new_tokens=30,
            eos_token_id=eos,
            pad_token_id=0,
        )
        assert torch.equal(out, ref)
        for i, n in enumerate(lengths):
            alone = eedecode.generate(
                model,
                ids[i : i + 1, P - n :],
                exit_layer=2,
                num_speculations=k,
                max_new_tokens=30,
                eos_token_id=eos,
            )
            row = ref[i, P:]
            keep = int((row == eos).nonzero()[0]) + 1 if (row == eos).any() else len(row)
            assert alone[0, n:].tolist() == row[:keep].tolist()


def test_sampled_batch_rows_are_independent_and_reproducible():
    model = cached_tiny_model("llama", eos_token_id=None, bos_token_id=None)
    ids = torch.randint(3, 97, (1, 4), generator=torch.Generator().manual_seed(0)).repeat(8, 1)
    out = eedecode.generate(
        model, ids, exit_layer=2, num_speculations=3, max_new_tokens=12, do_sample=True, seed=0
    )
    assert len({tuple(r) for r in out[:, 4:].tolist()}) > 1  # identical prompts, different draws
    again = eedecode.generate(
        model, ids, exit_layer=2, num_speculations=3, max_new_tokens=12, do_sample=True, seed=0
    )
    assert torch.equal(out, again)
