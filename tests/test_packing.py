"""Packed weights: in place (the parameters become views, no second copy), outputs unchanged within
float rounding, Hugging Face generate and save_pretrained still work, stale packs noticed."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, tiny_model
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from eedecode.model import packing
from eedecode.model.runner import ModelRunner

#: Logits of the packed model against the unpacked one, float32 (observed: below 1e-6).
ATOL = 1e-5


def storage_bytes(model) -> int:
    """Bytes of the distinct storages behind the model's parameters."""
    seen = {}
    for p in model.parameters():
        s = p.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def ids(batch=2, length=13, seed=0):
    return torch.randint(3, 97, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_packing_keeps_outputs_and_memory(arch):
    model = tiny_model(arch, eos_token_id=None)
    x = ids()
    with torch.no_grad():
        before = model(x).logits
    generated = model.generate(x[:1], max_new_tokens=20, do_sample=False, pad_token_id=0)
    nbytes = storage_bytes(model)
    runner = ModelRunner(model)
    assert all(p is not None for p in runner.packed) and runner.head_t is not None
    # the parameters are views of the packed matrices: one copy of the weights
    assert storage_bytes(model) == nbytes
    attn = model.model.layers[0].self_attn
    qkv = runner.packed[0].qkv
    assert attn.q_proj.weight.data_ptr() == qkv.data_ptr()
    assert attn.v_proj.weight.untyped_storage().data_ptr() == qkv.untyped_storage().data_ptr()
    assert model.lm_head.weight.data_ptr() == runner.head_t.data_ptr()
    with torch.no_grad():
        after = model(x).logits
    torch.testing.assert_close(after, before, rtol=0, atol=ATOL)
    assert torch.equal(model.generate(x[:1], max_new_tokens=20, do_sample=False, pad_token_id=0), generated)
    # a second runner finds the packed layout and leaves it alone
    again = ModelRunner(model)
    assert [p.qkv.data_ptr() for p in again.packed] == [p.qkv.data_ptr() for p in runner.packed]


def test_tied_head_stays_tied_and_unpacked():
    model = tiny_model("llama", tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    runner = ModelRunner(model)
    assert runner.head_t is None  # the embedding lookup reads rows of [V, H]
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.is_contiguous()


def test_save_pretrained_round_trip(tmp_path):
    model = tiny_model("qwen2")  # biases fused too
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ModelRunner(model)
    saved = model.state_dict()
    assert all(v.is_contiguous() for v in saved.values())
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_load_state_dict_and_optimizer_steps_write_into_the_packed_storage():
    model = tiny_model("llama")
    runner = ModelRunner(model)
    q = model.model.layers[1].self_attn.q_proj
    with torch.no_grad():
        q.weight.add_(1.0)  # what an optimizer step does
    assert torch.equal(runner.packed[1].qkv[:, : q.out_features].t(), q.weight)
    other = tiny_model("llama", seed=1)
    model.load_state_dict(other.state_dict())
    assert torch.equal(
        runner.packed[1].qkv[:, : q.out_features].t(), other.model.layers[1].self_attn.q_proj.weight
    )


def test_replaced_parameters_are_packed_again():
    model = tiny_model("mistral")
    ModelRunner(model)
    model.to(torch.float64).to(torch.float32)  # new tensors: the old packed storage is let go
    assert packing.packed_layer(model.model.layers[0]) is None
    runner = ModelRunner(model)
    assert all(p is not None for p in runner.packed)
    x = ids(1, 9)
    with torch.no_grad():
        ref = model(x).logits
        cache = runner.new_cache(1, 9)
        got = runner.logits(runner.run_layers(runner.embed(x), 0, runner.num_layers, cache))
    torch.testing.assert_close(got, ref, rtol=0, atol=ATOL)


def test_hooked_and_non_plain_layers_are_not_packed():
    model = tiny_model("llama")
    model.model.layers[0].mlp.up_proj.register_forward_hook(lambda *a: None)
    model.model.layers[1].mlp.act_fn = torch.nn.GELU()
    runner = ModelRunner(model)
    assert runner.packed[0] is None and runner.packed[1] is None
    assert all(p is not None for p in runner.packed[2:])
    assert model.model.layers[0].mlp.up_proj.weight.is_contiguous()  # left as it was


def test_autograd_reaches_packed_parameters():
    model = tiny_model("llama")
    runner = ModelRunner(model)
    h = runner.run_layers(runner.embed(ids(1, 7)), 0, runner.num_layers)  # no cache: autograd on
    runner.logits(h).logsumexp(-1).sum().backward()
    grads = [lin.weight.grad for lin in packing._groups(model.model.layers[0])[0]]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_layer_kv_and_apply_rope_match_the_modules(arch):
    """The per-layer way to the keys and values of a hidden state (early-exit KV propagation)."""
    model = tiny_model(arch)
    runner = ModelRunner(model)
    hidden = torch.randn(2, 5, model.config.hidden_size)
    positions = torch.arange(3, 8)[None].repeat(2, 1)
    for i in (0, runner.num_layers - 1):
        attn = model.model.layers[i].self_attn
        with torch.no_grad():
            k, v = runner.layer_kv(i, hidden)
            h = model.model.layers[i].input_layernorm(hidden)
            ref_k = attn.k_proj(h).view(2, 5, runner.num_kv_heads, runner.head_dim)
            ref_v = attn.v_proj(h).view(2, 5, runner.num_kv_heads, runner.head_dim)
            torch.testing.assert_close(k, ref_k, rtol=0, atol=ATOL)
            torch.testing.assert_close(v, ref_v, rtol=0, atol=ATOL)
            cos, sin = model.model.rotary_emb(hidden, positions)
            ref_rot = apply_rotary_pos_emb(ref_k.transpose(1, 2), ref_k.transpose(1, 2), cos, sin)[0]
            assert torch.equal(runner.apply_rope(ref_k, positions, length=8), ref_rot.transpose(1, 2))
