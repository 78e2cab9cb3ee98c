"""Packed weights: by default a copy beside the model (the model, its forward in every dtype, its
state_dict and save_pretrained untouched; the copy made again when the weights change), in place
on request (the parameters become views, no second copy); outputs within float rounding."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, tiny_model
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import eedecode
from eedecode.model import packing
from eedecode.model.memory import memory_of
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


def parameters_as_they_are(model) -> list:
    """Every parameter's identity, storage, version counter and value."""
    return [(n, id(p), p.data_ptr(), p._version, p.detach().clone()) for n, p in model.named_parameters()]


def unchanged(model, before) -> bool:
    now = parameters_as_they_are(model)
    return len(now) == len(before) and all(
        a[:4] == b[:4] and torch.equal(a[4], b[4]) for a, b in zip(now, before, strict=True)
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_a_packed_copy_beside_the_model_leaves_the_model_as_it_was(arch):
    model = tiny_model(arch, eos_token_id=None)
    x = ids()
    before = parameters_as_they_are(model)
    with torch.no_grad():
        logits = model(x).logits
    hooks = {n: len(m._state_dict_hooks) for n, m in model.named_modules()}
    runner = ModelRunner(model)  # pack="copy", the default
    assert all(p is not None for p in runner.packed) and runner.head_t is not None
    assert unchanged(model, before)
    assert {n: len(m._state_dict_hooks) for n, m in model.named_modules()} == hooks
    state = model.state_dict()  # still aliases the parameters: EMA through it works
    assert all(state[n].data_ptr() == p.data_ptr() for n, p in model.named_parameters())
    assert all(isinstance(v, torch.nn.Parameter) for v in model.state_dict(keep_vars=True).values())
    with torch.no_grad():
        assert torch.equal(model(x).logits, logits)  # bit for bit: the model's own forward
        cache = runner.new_cache(2, 13)
        got = runner.logits(runner.run_layers(runner.embed(x), 0, runner.num_layers, cache))
    torch.testing.assert_close(got, logits, rtol=0, atol=ATOL)
    # the copy costs the projections' bytes once more (and the untied head's), kept in the memory
    packed = memory_of(model).packed[1]
    copied = sum(t.numel() * t.element_size() for p in packed for t in vars(p).values() if t is not None)
    projections = sum(
        lin.weight.numel() * 4 + (lin.bias.numel() * 4 if lin.bias is not None else 0)
        for layer in model.model.layers
        for g in packing._groups(layer)
        for lin in g
    )
    assert copied == projections


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_generate_leaves_the_models_forward_bit_for_bit_in_every_dtype(dtype, tmp_path):
    model = tiny_model("llama", dtype=dtype, eos_token_id=None)
    x = ids(1, 9)
    with torch.no_grad():
        logits = model(x).logits
    model.save_pretrained(tmp_path / "before")
    eedecode.generate(model, x, max_new_tokens=12)
    with torch.no_grad():
        assert torch.equal(model(x).logits, logits)
    model.save_pretrained(tmp_path / "after")
    a = (tmp_path / "before" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "after" / "model.safetensors").read_bytes()


def test_a_rejected_call_touches_nothing():
    model = tiny_model("llama")
    memory_of(model).reset()
    before = parameters_as_they_are(model)
    with pytest.raises(ValueError, match="mode: must be one of"):
        eedecode.generate(model, ids(1, 5), mode="nonsense")
    assert unchanged(model, before) and memory_of(model).packed is None


def test_the_copy_is_kept_and_made_again_when_the_weights_change():
    model = tiny_model("llama")
    runner = ModelRunner(model)
    again = ModelRunner(model)
    assert [p.qkv.data_ptr() for p in again.packed] == [p.qkv.data_ptr() for p in runner.packed]
    q = model.model.layers[1].self_attn.q_proj
    with torch.no_grad():
        q.weight.add_(1.0)  # what an optimizer step does
    fresh = ModelRunner(model)
    assert torch.equal(fresh.packed[1].qkv[:, : q.out_features].t(), q.weight)
    other = tiny_model("llama", seed=1)
    model.load_state_dict(other.state_dict())
    fresh = ModelRunner(model)
    assert torch.equal(
        fresh.packed[1].qkv[:, : q.out_features].t(), other.model.layers[1].self_attn.q_proj.weight
    )
    model.to(torch.float64).to(torch.float32)  # new tensors
    x = ids(1, 9)
    runner = ModelRunner(model)
    with torch.no_grad():
        ref = model(x).logits
        got = runner.logits(runner.run_layers(runner.embed(x), 0, runner.num_layers, runner.new_cache(1, 9)))
    torch.testing.assert_close(got, ref, rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    "write",
    [
        lambda w: w.data.add_(0.05 * torch.randn_like(w)),  # a LoRA merge through .data
        lambda w: w.data.copy_(torch.randn_like(w)),
        lambda w: w.data.__setitem__((0, slice(None)), 1.0),  # one row
    ],
    ids=["data-add", "data-copy", "data-row"],
)
def test_the_copy_is_made_again_after_a_write_the_version_counter_misses(write):
    model = tiny_model("llama", eos_token_id=None)
    x = ids(2, 6)
    eedecode.generate(model, x, max_new_tokens=4)
    torch.manual_seed(0)
    for layer in model.model.layers:
        write(layer.mlp.down_proj.weight)
        write(layer.self_attn.v_proj.weight)
    ref = model.generate(x, max_new_tokens=12, do_sample=False)
    for mode in ("autoregressive", "adaptive"):
        assert torch.equal(eedecode.generate(model, x, mode=mode, max_new_tokens=12), ref), mode
    down = model.model.layers[0].mlp.down_proj.weight
    assert torch.equal(ModelRunner(model).packed[0].down.t(), down)


@pytest.mark.parametrize("arch", ARCHS)
def test_packing_in_place_is_opt_in_and_keeps_one_copy(arch):
    model = tiny_model(arch, eos_token_id=None)
    x = ids()
    with torch.no_grad():
        before = model(x).logits
    generated = model.generate(x[:1], max_new_tokens=20, do_sample=False, pad_token_id=0)
    nbytes = storage_bytes(model)
    runner = ModelRunner(model, pack="in_place")
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
    # a later runner finds the packed layout and leaves it alone, whatever it asks for
    again = ModelRunner(model)
    assert [p.qkv.data_ptr() for p in again.packed] == [p.qkv.data_ptr() for p in runner.packed]
    out = eedecode.generate(model, x[:1], max_new_tokens=20, pack="in_place")
    assert torch.equal(out, generated)


def test_tied_head_stays_tied_and_unpacked():
    model = tiny_model("llama", tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    for pack in ("copy", "in_place"):
        runner = ModelRunner(model, pack=pack)
        assert runner.head_t is None  # the embedding lookup reads rows of [V, H]
        assert model.lm_head.weight is model.model.embed_tokens.weight
        assert model.lm_head.weight.is_contiguous()


def test_in_place_packing_saves_and_writes_through(tmp_path):
    model = tiny_model("qwen2")  # biases fused too
    state = {k: v.clone() for k, v in model.state_dict().items()}
    runner = ModelRunner(model, pack="in_place")
    saved = model.state_dict()
    assert all(v.is_contiguous() for v in saved.values())
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    q = model.model.layers[1].self_attn.q_proj
    with torch.no_grad():
        q.weight.add_(1.0)  # an optimizer step writes into the packed storage
    assert torch.equal(runner.packed[1].qkv[:, : q.out_features].t(), q.weight)


def test_bad_pack_is_named():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"pack: must be one of \('copy', 'in_place', 'none'\)"):
        eedecode.generate(model, ids(1, 5), pack="yes")
    with pytest.raises(ValueError, match="pack: must be one of"):
        ModelRunner(model, pack=True)


def test_hooked_and_non_plain_layers_are_not_packed():
    model = tiny_model("llama")
    assert all(p is not None for p in ModelRunner(model).packed)  # a copy made before the hook
    model.model.layers[0].mlp.up_proj.register_forward_hook(lambda *a: None)
    model.model.layers[1].mlp.act_fn = torch.nn.GELU()
    for pack in ("copy", "in_place"):
        runner = ModelRunner(model, pack=pack)
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


def test_free_memory_counts_the_page_cache_the_kernel_can_drop(monkeypatch, tmp_path):
    import builtins
    import io

    from eedecode.model import packing

    meminfo = "MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   18000000 kB\n"
    real_open = builtins.open
    monkeypatch.setattr(
        builtins,
        "open",
        lambda f, *a, **k: io.StringIO(meminfo) if f == "/proc/meminfo" else real_open(f, *a, **k),
    )
    assert packing._available_bytes() == 18000000 * 1024
