"""Hugging Face ``generate()`` conventions, each checked against ``model.generate`` on tiny models:
defaults as HF applies them, logits processors in every mode, outputs, RoPE variants, and the
deployments people use (bitsandbytes, accelerate offload). Refusals name the argument and stream
nothing."""

from __future__ import annotations

import importlib.util
import tempfile

import pytest
import torch
from conftest import Recorder, cached_tiny_model, tiny_config, tiny_model
from transformers import GenerationConfig, LlamaForCausalLM, StoppingCriteria
from transformers.generation.utils import GenerateDecoderOnlyOutput

import eedecode

SPEC = dict(exit_layer=2, num_speculations=3)
MODES = [("autoregressive", {}), ("self_speculative", SPEC)]
MODE_IDS = ["ar", "ss"]


def ids(batch=1, n=7, seed=0):
    return torch.randint(3, 97, (batch, n), generator=torch.Generator().manual_seed(seed))


def padded_batch():
    """Two left-padded rows (pad id 0) and their mask."""
    x = ids(2, 9, seed=5)
    x[0, :3] = 0
    mask = (x != 0).long()
    return x, mask


def hf(model, x, **kw):
    return model.generate(x, **kw)


def ours(model, x, mode, settings, **kw):
    return eedecode.generate(model, x, mode=mode, **settings, **kw)


# -- defaults, as HF applies them ------------------------------------------------------------------
@pytest.mark.parametrize("mode,settings", MODES, ids=MODE_IDS)
def test_no_length_argument_gives_hfs_default_length(mode, settings):
    model = cached_tiny_model("llama", eos_token_id=None)
    x = ids()
    ref = hf(model, x, pad_token_id=0)
    assert ref.shape[1] == x.shape[1] + 20  # HF's default: 20 new tokens
    assert torch.equal(ours(model, x, mode, settings), ref)


@pytest.mark.parametrize("mode,settings", MODES, ids=MODE_IDS)
def test_model_generation_config_settings_count_like_arguments(mode, settings):
    model = tiny_model("llama", eos_token_id=None)
    model.generation_config = GenerationConfig(max_new_tokens=13, repetition_penalty=1.7, pad_token_id=0)
    x = ids()
    ref = hf(model, x)
    assert ref.shape[1] == x.shape[1] + 13
    assert torch.equal(ours(model, x, mode, settings), ref)
    # a generation_config argument overrides the model's, and keyword arguments override both
    gc = GenerationConfig(max_new_tokens=6, no_repeat_ngram_size=2)
    assert torch.equal(
        ours(model, x, mode, settings, generation_config=gc), hf(model, x, generation_config=gc)
    )
    assert torch.equal(
        ours(model, x, mode, settings, generation_config=gc, max_new_tokens=9),
        hf(model, x, generation_config=gc, max_new_tokens=9),
    )


def test_default_top_k_when_sampling_is_hfs():
    """Sampling with the same seed through the same warpers draws the same tokens as HF: HF's
    default top_k=50 applies (the vocabulary has 97 entries) unless top_k=0 is passed."""
    model = cached_tiny_model("llama", eos_token_id=None)
    x = ids(2)
    for kw in ({}, {"top_k": 0}, {"temperature": 0.7, "top_p": 0.9}):
        torch.manual_seed(11)
        ref = hf(model, x, do_sample=True, max_new_tokens=15, pad_token_id=0, **kw)
        torch.manual_seed(11)
        got = eedecode.generate(model, x, mode="autoregressive", do_sample=True, max_new_tokens=15, **kw)
        assert torch.equal(got, ref), kw


@pytest.mark.parametrize("mode,settings", MODES, ids=MODE_IDS)
def test_eos_none_passed_explicitly_disables_stopping(mode, settings):
    model = cached_tiny_model("llama")  # eos 2 in its generation config
    x = ids(seed=3)
    free = hf(model, x, max_new_tokens=30, eos_token_id=None, pad_token_id=0)
    eos = int(free[0, x.shape[1] + 4])
    model_eos = tiny_model("llama", eos_token_id=eos)
    ref = hf(model_eos, x, max_new_tokens=30, eos_token_id=None, pad_token_id=0)
    assert ref.shape[1] == x.shape[1] + 30
    assert torch.equal(ours(model_eos, x, mode, settings, max_new_tokens=30, eos_token_id=None), ref)
    stopped = ours(model_eos, x, mode, settings, max_new_tokens=30)
    assert stopped.shape[1] < x.shape[1] + 30  # the model's eos stops it when not overridden


@pytest.mark.parametrize("mode,settings", MODES, ids=MODE_IDS)
def test_attention_mask_is_inferred_from_the_pad_token(mode, settings):
    model = cached_tiny_model("llama", eos_token_id=None)
    x, mask = padded_batch()
    ref = hf(model, x, attention_mask=mask, max_new_tokens=12, pad_token_id=0)
    assert torch.equal(hf(model, x, max_new_tokens=12, pad_token_id=0), ref)  # HF infers it too
    assert torch.equal(ours(model, x, mode, settings, max_new_tokens=12, pad_token_id=0), ref)


class StopAfter(StoppingCriteria):
    def __init__(self, length):
        self.length = length

    def __call__(self, input_ids, scores, **kw):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool)


@pytest.mark.parametrize("mode,settings", MODES, ids=MODE_IDS)
def test_stopping_criteria_as_a_plain_list(mode, settings):
    model = cached_tiny_model("llama", eos_token_id=None)
    x = ids()
    ref = hf(model, x, max_new_tokens=20, stopping_criteria=[StopAfter(12)], pad_token_id=0)
    assert torch.equal(
        ours(model, x, mode, settings, max_new_tokens=20, stopping_criteria=[StopAfter(12)]), ref
    )


@pytest.mark.parametrize("mode,settings", [*MODES, ("adaptive", {})], ids=[*MODE_IDS, "auto"])
def test_a_length_criterion_passed_in_takes_precedence_as_in_hf(mode, settings):
    """HF uses a MaxLengthCriteria the caller passes instead of its own (longer or shorter than
    max_new_tokens), and emits one token even when the length is already reached."""
    from transformers import MaxLengthCriteria, StoppingCriteriaList

    model = cached_tiny_model("llama", eos_token_id=None)
    x = ids()
    for new in (30, 5, 1, 0, -2):  # the criterion's length past the prompt
        crit = StoppingCriteriaList([MaxLengthCriteria(x.shape[1] + new)])
        ref = hf(model, x, max_new_tokens=12, stopping_criteria=crit, pad_token_id=0)
        assert ref.shape[1] == x.shape[1] + max(new, 1)
        assert torch.equal(ours(model, x, mode, settings, max_new_tokens=12, stopping_criteria=crit), ref)


# -- logits processors -----------------------------------------------------------------------------
PROCESSORS = [
    dict(repetition_penalty=1.8),
    dict(no_repeat_ngram_size=2),
    dict(min_new_tokens=8),
    dict(bad_words_ids=[[5], [7, 8]]),
    dict(repetition_penalty=1.3, no_repeat_ngram_size=3, bad_words_ids=[[11]]),
]


@pytest.mark.parametrize("kw", PROCESSORS, ids=lambda kw: ",".join(kw))
@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_greedy_processors_match_hf_in_every_mode_and_batch(arch, kw):
    """Context-reading processors see the drafts before the position they score: greedy
    self-speculative output stays equal to HF's, batch 1 and a padded batch."""
    eos = 9 if "min_new_tokens" in kw else None  # min_new_tokens holds back EOS
    model = cached_tiny_model(arch, eos_token_id=eos)
    for x, mask in ((ids(), None), padded_batch()):
        ref = hf(model, x, attention_mask=mask, max_new_tokens=24, pad_token_id=0, **kw)
        for mode, settings in MODES + [("self_speculative", dict(exit_layer=1, num_speculations=6))]:
            got = ours(model, x, mode, settings, attention_mask=mask, max_new_tokens=24, pad_token_id=0, **kw)
            assert torch.equal(got, ref), (mode, settings)


@pytest.mark.parametrize("kw", [dict(min_p=0.05), dict(typical_p=0.8), dict(repetition_penalty=1.5)])
def test_sampling_processors_match_hf_autoregressively(kw):
    model = cached_tiny_model("qwen2", eos_token_id=None)
    x = ids(2)
    torch.manual_seed(3)
    ref = hf(model, x, do_sample=True, max_new_tokens=15, pad_token_id=0, **kw)
    torch.manual_seed(3)
    got = eedecode.generate(model, x, mode="autoregressive", do_sample=True, max_new_tokens=15, **kw)
    assert torch.equal(got, ref)
    spec = eedecode.generate(model, x, **SPEC, do_sample=True, max_new_tokens=15, seed=1, **kw)
    assert spec.shape == ref.shape


def test_num_return_sequences_expands_the_batch_like_hf():
    model = cached_tiny_model("llama", eos_token_id=None)
    x = ids(2)
    torch.manual_seed(5)
    ref = hf(model, x, do_sample=True, num_return_sequences=3, max_new_tokens=10, pad_token_id=0)
    torch.manual_seed(5)
    got = eedecode.generate(
        model, x, mode="autoregressive", do_sample=True, num_return_sequences=3, max_new_tokens=10
    )
    assert ref.shape[0] == 6 and torch.equal(got, ref)
    spec = eedecode.generate(
        model, x, **SPEC, do_sample=True, num_return_sequences=3, max_new_tokens=10, seed=0
    )
    assert spec.shape == ref.shape and torch.equal(spec[:, :7], x.repeat_interleave(3, 0))


@pytest.mark.parametrize("mode,settings", MODES, ids=MODE_IDS)
def test_stop_strings_with_a_tokenizer(mode, settings):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(eedecode.demo_model_path("plain"))
    model = cached_tiny_model("llama", eos_token_id=None, vocab_size=len(tokenizer))
    x = torch.tensor([tokenizer("def main():").input_ids])
    free = hf(model, x, max_new_tokens=20, pad_token_id=0)
    stop = tokenizer.decode(free[0, x.shape[1] + 5 : x.shape[1] + 6])
    kw = dict(max_new_tokens=20, stop_strings=[stop], tokenizer=tokenizer)
    ref = hf(model, x, pad_token_id=0, **kw)
    assert ref.shape[1] < free.shape[1]
    assert torch.equal(ours(model, x, mode, settings, **kw), ref)


@pytest.mark.parametrize("mode,settings", MODES, ids=MODE_IDS)
def test_output_scores_and_logits_like_hf(mode, settings):
    model = cached_tiny_model("mistral", eos_token_id=None)
    x = ids(seed=4)
    kw = dict(max_new_tokens=9, return_dict_in_generate=True, output_scores=True, output_logits=True)
    ref = hf(model, x, pad_token_id=0, repetition_penalty=1.4, **kw)
    got = ours(model, x, mode, settings, repetition_penalty=1.4, **kw)
    assert isinstance(got, GenerateDecoderOnlyOutput)
    assert torch.equal(got["sequences"], ref.sequences) and torch.equal(got.sequences, got[0])
    assert len(got.scores) == len(ref.scores) == 9 and len(got.logits) == 9
    for a, b in zip(got.scores + got.logits, ref.scores + ref.logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert got.stats.new_tokens == 9


def test_output_scores_of_a_batch_whose_rows_stop_apart():
    model = cached_tiny_model("llama")
    x = ids(2, seed=6)
    free = hf(model, x, max_new_tokens=12, pad_token_id=0, eos_token_id=None)
    eos = int(free[0, x.shape[1] + 3])
    kw = dict(
        max_new_tokens=12, eos_token_id=eos, pad_token_id=0, return_dict_in_generate=True, output_scores=True
    )
    ref = hf(model, x, **kw)
    got = eedecode.generate(model, x, **SPEC, **kw)
    assert torch.equal(got.sequences, ref.sequences) and len(got.scores) == len(ref.scores)
    row0_len = int((ref.sequences[0, x.shape[1] :] != 0).sum())
    for t in range(row0_len):  # the rows' own steps agree; HF keeps scoring finished rows, we hold zeros
        torch.testing.assert_close(got.scores[t][0], ref.scores[t][0], atol=1e-5, rtol=1e-5)


def test_heuristic_schedule_is_lossless_and_moves_the_draft_length():
    model = cached_tiny_model("llama", eos_token_id=None)
    x = ids()
    ref = hf(model, x, max_new_tokens=30, pad_token_id=0)
    out = eedecode.generate(
        model,
        x,
        exit_layer=2,
        num_assistant_tokens=2,
        num_assistant_tokens_schedule="heuristic",
        max_new_tokens=30,
        return_dict_in_generate=True,
    )
    assert torch.equal(out.sequences, ref)
    const = eedecode.generate(
        model, x, exit_layer=2, num_speculations=2, max_new_tokens=30, return_dict_in_generate=True
    )
    assert out.stats.drafted_tokens != const.stats.drafted_tokens  # the schedule changed k


# -- RoPE variants ---------------------------------------------------------------------------------
ROPES = {
    "default": dict(),
    "linear": dict(rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "dynamic": dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=24),
    "yarn": dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}),
    "longrope": dict(
        rope_scaling={
            "rope_type": "longrope",
            "short_factor": [1.0 + 0.1 * i for i in range(4)],
            "long_factor": [2.0 + 0.5 * i for i in range(4)],
            "original_max_position_embeddings": 16,
        },
        max_position_embeddings=64,
    ),
}


@pytest.mark.parametrize("rope", list(ROPES) + ["llama3"])
def test_rope_variants_match_hf_across_the_original_length(rope):
    """Prompt 10 + 30 new tokens crosses every variant's original length (16, or 24 for dynamic)."""
    arch = "llama3" if rope == "llama3" else "llama"
    torch.manual_seed(1)
    model = tiny_model(arch, eos_token_id=None, hidden_size=32, num_attention_heads=4, **ROPES.get(rope, {}))
    x = ids(1, 10)
    ref = hf(model, x, max_new_tokens=30, pad_token_id=0)
    assert torch.equal(eedecode.generate(model, x, mode="autoregressive", max_new_tokens=30), ref)
    if rope in ("dynamic", "longrope"):  # frequencies change with the length: verification cannot batch
        with pytest.raises(ValueError, match="rope_scaling"):
            eedecode.generate(model, x, **SPEC, max_new_tokens=30)
        short = hf(model, x, max_new_tokens=5, pad_token_id=0)  # stays below the switch: allowed
        assert torch.equal(eedecode.generate(model, x, **SPEC, max_new_tokens=5), short)
    else:
        assert torch.equal(eedecode.generate(model, x, **SPEC, max_new_tokens=30), ref)


# -- refusals: before the first token, naming the argument ------------------------------------------
def refused(model, words, exc=ValueError, **kw):
    streamer = Recorder()
    with pytest.raises(exc) as info:
        eedecode.generate(model, ids(), streamer=streamer, **{**SPEC, "max_new_tokens": 5, **kw})
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value}"
    assert streamer.calls == []


def test_unsupported_settings_in_the_models_generation_config_are_refused():
    model = tiny_model("llama")
    model.generation_config.num_beams = 3
    refused(model, ["num_beams", "model's generation_config"])
    model.generation_config.num_beams = 1
    model.generation_config.guidance_scale = 2.0
    refused(model, ["guidance_scale"])


def test_hooks_eedecode_would_skip_are_refused():
    model = tiny_model("llama")
    for module, name in ((model, "the model"), (model.model.layers[3], "model.layers.3")):
        handle = module.register_forward_hook(lambda *a: None)
        refused(model, ["model:", name, "hook"])
        handle.remove()
    handle = model.model.layers[1].self_attn.register_forward_pre_hook(lambda *a: None)
    refused(model, ["model.layers.1.self_attn"])
    handle.remove()
    seen = []  # a hook on a projection is honoured
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, a, o: seen.append(1))
    eedecode.generate(model, ids(), **SPEC, max_new_tokens=5)
    assert seen


def test_a_forward_with_output_hidden_states_leaves_the_model_usable():
    """transformers keeps its own output-capturing hooks on the layers after such a forward."""
    model = tiny_model("llama", eos_token_id=None)
    x = ids()
    with torch.no_grad():
        states = model(x, output_hidden_states=True, output_attentions=True).hidden_states
    assert len(states) == model.config.num_hidden_layers + 1
    ref = hf(model, x, max_new_tokens=8, pad_token_id=0)
    assert torch.equal(eedecode.generate(model, x, max_new_tokens=8), ref)
    assert torch.equal(eedecode.generate(model, x, **SPEC, max_new_tokens=8), ref)
    handle = model.model.layers[2].register_forward_hook(lambda *a: None)  # a user's hook still counts
    refused(model, ["model.layers.2", "hook"])
    handle.remove()


def test_train_mode_runs_as_given_or_is_refused():
    model = tiny_model("llama", eos_token_id=None).train()  # no dropout: the same as eval
    x = ids()
    ref = hf(model.eval(), x, max_new_tokens=8, pad_token_id=0)
    assert torch.equal(eedecode.generate(model.train(), x, **SPEC, max_new_tokens=8), ref)
    dropping = tiny_model("llama", attention_dropout=0.1).train()
    refused(dropping, ["train()", "model.eval()"])


def test_unknown_keyword_is_a_type_error():
    refused(cached_tiny_model("llama"), ["frobnicate"], exc=TypeError, frobnicate=1)


# -- deployments -----------------------------------------------------------------------------------
def _saved(model):
    folder = tempfile.mkdtemp()
    model.save_pretrained(folder)
    return folder


def test_accelerate_cpu_and_disk_offload_and_cpu_offload():
    from accelerate import cpu_offload

    model = tiny_model("llama", eos_token_id=None)
    x = ids(2)
    ref = hf(model, x, max_new_tokens=10, pad_token_id=0)
    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.norm": "disk",
        "lm_head": "disk",
    }
    device_map.update({f"model.layers.{i}": "cpu" if i < 3 else "disk" for i in range(6)})
    offloaded = LlamaForCausalLM.from_pretrained(
        _saved(model), device_map=device_map, offload_folder=tempfile.mkdtemp()
    ).eval()
    assert offloaded.model.layers[4].input_layernorm.weight.device.type == "meta"
    for mode, settings in MODES:
        assert torch.equal(ours(offloaded, x, mode, settings, max_new_tokens=10, pad_token_id=0), ref)
    hooked = tiny_model("llama", eos_token_id=None)
    cpu_offload(hooked, execution_device=torch.device("cpu"))
    assert torch.equal(eedecode.generate(hooked, x, **SPEC, max_new_tokens=10, pad_token_id=0), ref)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
@pytest.mark.parametrize("bits", [8, 4])
def test_bitsandbytes_models_equal_hf_on_the_same_quantized_model(bits):
    from transformers import BitsAndBytesConfig

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config("llama", hidden_size=64, intermediate_size=128, eos_token_id=None))
    q = BitsAndBytesConfig(load_in_8bit=bits == 8, load_in_4bit=bits == 4)
    qm = LlamaForCausalLM.from_pretrained(_saved(model), quantization_config=q, device_map="cpu").eval()
    x = ids()
    ref = hf(qm, x, max_new_tokens=10, pad_token_id=0)
    for mode, settings in MODES:
        assert torch.equal(ours(qm, x, mode, settings, max_new_tokens=10), ref)


def test_token_lists_are_checked_as_hf_checks_them():
    """HF ignores suppress_tokens outside the vocabulary and takes NumPy ids in bad_words_ids."""
    import numpy as np

    model = tiny_model("llama", eos_token_id=None)
    x = ids()
    for kw in (dict(suppress_tokens=[200]), dict(bad_words_ids=[[np.int64(5)]])):
        ref = hf(model, x, max_new_tokens=8, pad_token_id=0, **kw)
        assert torch.equal(eedecode.generate(model, x, max_new_tokens=8, **kw), ref), kw
