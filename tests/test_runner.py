"""The model runner: equal to HF's forward within fp32 rounding, over any layer split, on its packed,
functional and module paths."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, tiny_model

from eedecode.model.runner import ModelRunner

#: fp32 logits of eedecode against HF's forward (and the packed path against the modules). Observed
#: differences are below 1e-6 on the test configs: packed, transposed weights are multiplied by
#: another kernel than HF's F.linear, so the sums round differently; greedy tokens stay equal
#: (tests/test_generation.py, torch.equal).
LOGITS_ATOL = 1e-5


def incremental_logits(runner, ids, split_at, exit_layer):
    """Prompt through [0, E) then [E, L); then one token at a time through all layers."""
    cache = runner.new_cache(ids.shape[0], ids.shape[1] + 4)
    h = runner.run_layers(runner.embed(ids[:, :split_at]), 0, exit_layer, cache)
    out = [runner.logits(runner.run_layers(h, exit_layer, runner.num_layers, cache))]
    for t in range(split_at, ids.shape[1]):
        out.append(
            runner.logits(runner.run_layers(runner.embed(ids[:, t : t + 1]), 0, runner.num_layers, cache))
        )
    return torch.cat(out, 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_runner_equals_hf_forward(arch):
    model = tiny_model(arch)
    ids = torch.randint(3, 97, (2, 24), generator=torch.Generator().manual_seed(0))  # crosses the window 16
    with torch.no_grad():
        ref = model(ids).logits  # HF's forward on the weights as loaded, before packing
    runner = ModelRunner(model)
    cache = runner.new_cache(2, 24)
    full = runner.logits(runner.run_layers(runner.embed(ids), 0, runner.num_layers, cache))
    # Packed weights are multiplied by another kernel than HF's F.linear: equal up to fp32 rounding.
    torch.testing.assert_close(full, ref, rtol=0, atol=LOGITS_ATOL)
    torch.testing.assert_close(incremental_logits(runner, ids, 13, 2), ref, rtol=0, atol=LOGITS_ATOL)


def _hook_everything(model):
    """A forward hook on every submodule of the layers: forces the runner onto the module path."""
    return [m.register_forward_hook(lambda *a: None) for m in model.model.layers.modules()]


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_and_functional_paths_match_the_modules(arch):
    model = tiny_model(arch)
    fast = ModelRunner(model)
    assert all(not isinstance(c, torch.nn.Module) for calls in fast._calls for c in calls)
    hooks = _hook_everything(model)
    try:
        slow = ModelRunner(model)
    finally:
        for h in hooks:
            h.remove()
    assert all(isinstance(c, torch.nn.Module) for calls in slow._calls for c in calls)
    ids = torch.randint(3, 97, (2, 20), generator=torch.Generator().manual_seed(1))
    fast_logits, slow_logits = incremental_logits(fast, ids, 9, 3), incremental_logits(slow, ids, 9, 3)
    torch.testing.assert_close(fast_logits, slow_logits, rtol=0, atol=LOGITS_ATOL)


def test_hooked_and_unknown_modules_go_through_the_module():
    model = tiny_model("llama")
    layer = model.model.layers[0]
    seen = []
    layer.self_attn.q_proj.register_forward_hook(lambda m, a, o: seen.append(a[0].shape))
    layer.mlp.act_fn = torch.nn.GELU()  # not the gated SiLU MLP any more
    runner = ModelRunner(model)
    norm_in, q, k, v, o, norm_post, mlp = runner._calls[0]
    assert q is layer.self_attn.q_proj and mlp is layer.mlp
    assert not isinstance(k, torch.nn.Module) and not isinstance(norm_in, torch.nn.Module)
    cache = runner.new_cache(1, 8)
    runner.run_layers(runner.embed(torch.tensor([[5, 6, 7]])), 0, 2, cache)
    assert seen == [torch.Size([1, 3, 32])]


def test_half_precision_norms_use_the_module():
    """F.rms_norm rounds differently from HF's norm in bf16/fp16: the module is kept there."""
    model = tiny_model("llama", dtype=torch.bfloat16)
    runner = ModelRunner(model)
    layer = model.model.layers[0]
    assert (
        runner._calls[0][0] is layer.input_layernorm and runner._calls[0][5] is layer.post_attention_layernorm
    )
