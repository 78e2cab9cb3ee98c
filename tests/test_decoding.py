"""The exit query cache: layers < E never run twice for a draft token; verification runs [E, L) only."""

from __future__ import annotations

import pytest
import torch
from conftest import cached_tiny_model

import eedecode
from eedecode.model.runner import ModelRunner


@pytest.mark.parametrize("exit_layer,k", [(1, 1), (2, 3), (4, 8), (5, 2)])
def test_layers_below_exit_never_run_during_verification(monkeypatch, exit_layer, k):
    model = cached_tiny_model("llama", eos_token_id=None, bos_token_id=None)
    L = model.config.num_hidden_layers
    P = 7
    tokens_seen = [0] * L  # tokens through each layer, counted by hooks on the model's own modules
    hooks = [
        layer.self_attn.q_proj.register_forward_hook(
            lambda mod, args, out, i=i: tokens_seen.__setitem__(i, tokens_seen[i] + args[0].shape[1])
        )
        for i, layer in enumerate(model.model.layers)
    ]
    calls = []  # (start, end, tokens) of every runner call
    original = ModelRunner.run_layers

    def recording(self, hidden, start, end, cache):
        calls.append((start, end, hidden.shape[1]))
        return original(self, hidden, start, end, cache)

    monkeypatch.setattr(ModelRunner, "run_layers", recording)
    try:
        ids = torch.randint(3, 97, (1, P), generator=torch.Generator().manual_seed(0))
        out = eedecode.generate(
            model,
            ids,
            exit_layer=exit_layer,
            num_speculations=k,
            max_new_tokens=40,
            return_dict_in_generate=True,
        )
    finally:
        for h in hooks:
            h.remove()
    stats = out.stats

    assert calls[0] == (0, L, P)  # the prefill
    shallow_since_verify = 0
    for start, end, n in calls[1:]:
        if (start, end) == (0, exit_layer):
            assert n == 1  # drafting and the last draft: one new token at a time
            shallow_since_verify += 1
        else:
            assert (start, end) == (exit_layer, L)  # verification never touches layers < E
            assert n == shallow_since_verify  # ... and covers exactly the tokens drafted since the last one
            shallow_since_verify = 0
    assert shallow_since_verify == 0
    # Every layer saw each token exactly once per round: the prompt, then drafts + 1 per round.
    expected = P + stats.drafted_tokens + stats.rounds
    assert tokens_seen == [expected] * L
    assert stats.rounds == sum(1 for c in calls if c[0] == exit_layer)
