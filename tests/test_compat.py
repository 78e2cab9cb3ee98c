"""What eedecode runs of a model: changes to modules whose forward it never calls are refused up
front with the module's name; changes to those it calls are honoured; every depth from one layer
works; Hugging Face's inputs are taken or refused as HF would need."""

from __future__ import annotations

import types

import pytest
import torch
from conftest import Recorder, tiny_model
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaDecoderLayer

import eedecode


def refused(model, words):
    streamer = Recorder()
    with pytest.raises(ValueError) as err:
        eedecode.generate(model, torch.tensor([[5, 6, 7]]), max_new_tokens=4, streamer=streamer)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert streamer.calls == []  # nothing streamed


def test_a_replaced_attention_forward_is_refused():
    model = tiny_model("llama")
    attn = model.model.layers[2].self_attn
    attn.forward = types.MethodType(lambda self, *a, **kw: LlamaAttention.forward(self, *a, **kw), attn)
    refused(model, ["model.model.layers.2.self_attn", "forward was replaced"])


def test_an_attention_subclass_that_overrides_forward_is_refused():
    class Scaled(LlamaAttention):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            return (out[0] * 0.5, *out[1:])

    model = tiny_model("llama")
    old = model.model.layers[1].self_attn
    new = Scaled(model.config, layer_idx=1)
    new.load_state_dict(old.state_dict())
    model.model.layers[1].self_attn = new
    refused(model, ["model.model.layers.1.self_attn", "Scaled", "not Hugging Face's"])


def test_a_patched_decoder_layer_or_model_forward_is_refused():
    model = tiny_model("llama")
    layer = model.model.layers[0]
    layer.forward = types.MethodType(lambda self, *a, **kw: LlamaDecoderLayer.forward(self, *a, **kw), layer)
    refused(model, ["model.model.layers.0", "forward was replaced"])
    model = tiny_model("llama")
    model.forward = lambda *a, **kw: None
    refused(model, ["the model", "forward was replaced"])


def test_a_replaced_projection_forward_is_honoured():
    """The runner calls a projection through its module when its forward is not the class's own."""
    model = tiny_model("llama", eos_token_id=None)
    x = torch.tensor([[5, 6, 7, 8]])
    proj = model.model.layers[1].mlp.down_proj
    proj.forward = types.MethodType(lambda self, h: torch.nn.functional.linear(h, self.weight) * 0.5, proj)
    ref = model.generate(x, max_new_tokens=12, do_sample=False, pad_token_id=0)
    for mode in ("autoregressive", "self_speculative", "adaptive"):
        settings = dict(exit_layer=2, num_speculations=3) if mode == "self_speculative" else {}
        assert torch.equal(eedecode.generate(model, x, mode=mode, **settings, max_new_tokens=12), ref)


@pytest.mark.parametrize("layers", [1, 2])
def test_every_depth_works_or_is_refused_up_front(layers):
    model = tiny_model("llama", num_hidden_layers=layers, eos_token_id=None)
    x = torch.tensor([[5, 6, 7, 8]])
    ref = model.generate(x, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(eedecode.generate(model, x, max_new_tokens=10), ref)  # the default call
    assert torch.equal(eedecode.generate(model, x, mode="autoregressive", max_new_tokens=10), ref)
    if layers == 1:
        streamer = Recorder()
        with pytest.raises(ValueError, match="exit_layer: there is no exit layer on a 1-layer model"):
            eedecode.generate(model, x, exit_layer=1, max_new_tokens=3, streamer=streamer)
        assert streamer.calls == []
    else:
        out = eedecode.generate(model, x, exit_layer=1, num_speculations=2, max_new_tokens=10)
        assert torch.equal(out, ref)


def test_no_input_ids_starts_from_bos_as_hf_does():
    model = tiny_model("llama", eos_token_id=None, bos_token_id=1)
    ref = model.generate(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(eedecode.generate(model, max_new_tokens=8), ref)
    nobos = tiny_model("llama", eos_token_id=None, bos_token_id=None)
    with pytest.raises(ValueError, match="input_ids: needed"):
        eedecode.generate(nobos, max_new_tokens=8)


def test_generating_past_max_position_embeddings_goes_on_as_hf_does():
    model = tiny_model("llama", eos_token_id=None, max_position_embeddings=32)
    x = torch.randint(3, 97, (1, 28), generator=torch.Generator().manual_seed(2))
    ref = model.generate(x, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(eedecode.generate(model, x, max_new_tokens=12), ref)
    out = eedecode.generate(model, x, exit_layer=2, num_speculations=2, max_new_tokens=12)
    assert torch.equal(out, ref)
