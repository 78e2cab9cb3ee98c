"""Logits processors see what Hugging Face's loop shows them: the whole batch in its row order
(``batch_id`` of ``prefix_allowed_tokens_fn``, a bias indexed by row), finished rows padded, and
in autoregressive decoding one call per step, as HF makes them."""

from __future__ import annotations

import pytest
import torch
from conftest import cached_tiny_model
from transformers import LogitsProcessor

import eedecode

MODES = [
    ("autoregressive", {}),
    ("self_speculative", dict(exit_layer=2, num_speculations=3)),
    ("adaptive", {}),
]
NEW = 24


def batch():
    """Three prompts, one left-padded, that repeat themselves (lookup drafts) and differ per row."""
    x = torch.randint(3, 97, (3, 6), generator=torch.Generator().manual_seed(11))
    x = torch.cat([x, x, x[:, :2]], 1)
    x[1, :3] = 0
    return x, (x != 0).long()


def allowed(batch_id: int, ids: torch.Tensor) -> list[int]:
    """Each row its own band of the vocabulary, shifting with the length: a wrong batch_id, or a
    row's context taken for another's, changes the tokens."""
    start = 5 + 25 * batch_id + (ids.shape[-1] % 3)
    return list(range(start, start + 20)) + [2]


class RowBias(LogitsProcessor):
    """A [B, V] bias indexed by row, and an EOS pushed on each row at its own length."""

    def __init__(self, rows: int, vocab: int, prompt_length: int):
        g = torch.Generator().manual_seed(3)
        self.bias = 4.0 * torch.randn(rows, vocab, generator=g)
        self.stop_at = [prompt_length + 5 + 4 * b for b in range(rows)]

    def __call__(self, input_ids, scores):
        scores = scores + self.bias
        for b in range(scores.shape[0]):
            if input_ids.shape[1] >= self.stop_at[b]:
                scores[b, 2] = 1e4  # EOS
        return scores


class Counting(LogitsProcessor):
    def __init__(self):
        self.calls = 0

    def __call__(self, input_ids, scores):
        self.calls += 1
        return scores


@pytest.mark.parametrize("mode,settings", MODES, ids=[m for m, _ in MODES])
def test_prefix_allowed_tokens_fn_sees_each_rows_true_batch_id(mode, settings):
    model = cached_tiny_model("llama", eos_token_id=2)
    x, mask = batch()
    kw = dict(attention_mask=mask, max_new_tokens=NEW, pad_token_id=0, prefix_allowed_tokens_fn=allowed)
    ref = model.generate(x, do_sample=False, **kw)
    out = eedecode.generate(model, x, mode=mode, **settings, **kw)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("mode,settings", MODES, ids=[m for m, _ in MODES])
def test_a_per_row_processor_gets_the_whole_batch_and_rows_stop_apart(mode, settings):
    model = cached_tiny_model("llama", eos_token_id=2)
    x, mask = batch()
    bias = RowBias(3, model.config.vocab_size, x.shape[1])
    kw = dict(attention_mask=mask, max_new_tokens=NEW, pad_token_id=0, logits_processor=[bias])
    ref = model.generate(x, do_sample=False, **kw)
    assert len({int((row == 2).nonzero()[0]) for row in ref[:, x.shape[1] :]}) == 3  # rows stop apart
    assert torch.equal(eedecode.generate(model, x, mode=mode, **settings, **kw), ref)


def test_autoregressive_decoding_calls_a_processor_as_often_as_hf():
    model = cached_tiny_model("llama", eos_token_id=2)
    x, mask = batch()
    theirs, ours = Counting(), Counting()
    bias = RowBias(3, model.config.vocab_size, x.shape[1])  # rows stop at different steps
    kw = dict(attention_mask=mask, max_new_tokens=NEW, pad_token_id=0)
    ref = model.generate(x, do_sample=False, logits_processor=[bias, theirs], **kw)
    out = eedecode.generate(model, x, mode="autoregressive", logits_processor=[bias, ours], **kw)
    assert torch.equal(out, ref) and ours.calls == theirs.calls > 0
