"""Bad input: a clear error naming the argument, raised before anything reaches the streamer."""

from __future__ import annotations

import pytest
import torch
from conftest import Recorder, cached_tiny_model
from transformers import GPT2Config, GPT2LMHeadModel

import eedecode


def ids(n=5, batch=1):
    return torch.randint(3, 97, (batch, n), generator=torch.Generator().manual_seed(0))


CASES = [
    # (kwargs, exception, words the message must contain)
    (dict(exit_layer=0), ValueError, ["exit_layer", "1..5"]),
    (dict(exit_layer=6), ValueError, ["exit_layer", "1..5"]),
    (dict(exit_layer=-2), ValueError, ["exit_layer", "1..5"]),
    (dict(exit_layer=2.5), ValueError, ["exit_layer", "int"]),
    (dict(exit_layer=None), ValueError, ["exit_layer", "required", "adaptive"]),
    # a bad value given is named before the exit layer that was not
    (
        dict(exit_layer=None, num_assistant_tokens_schedule="weird"),
        ValueError,
        ["num_assistant_tokens_schedule (eedecode's schedule)", "weird"],
    ),
    (
        dict(exit_layer=None, num_speculations=None, kv_strategy="rerun"),
        ValueError,
        ["kv_strategy: selects mode='self_speculative'", "exit_layer: required"],
    ),
    (
        dict(mode="autoregressive", exit_layer=None, num_speculations=None, num_assistant_tokens=3),
        ValueError,
        ["num_assistant_tokens: not a setting of mode='autoregressive'"],
    ),
    (dict(num_speculations=0), ValueError, ["num_speculations", ">= 1"]),
    (dict(input_ids=torch.zeros(1, 0, dtype=torch.long)), ValueError, ["input_ids", "empty prompt"]),
    (dict(input_ids=torch.zeros(0, 4, dtype=torch.long)), ValueError, ["input_ids", "empty prompt"]),
    (dict(input_ids=torch.ones(5, dtype=torch.long)), ValueError, ["input_ids", "[batch, prompt_length]"]),
    (dict(max_new_tokens=-1), ValueError, ["max_new_tokens", ">= 1"]),
    (dict(max_new_tokens=0), ValueError, ["max_new_tokens", ">= 1"]),
    (dict(max_new_tokens=2.5), ValueError, ["max_new_tokens", "an int"]),
    (
        dict(attention_mask=torch.ones(1, 4, dtype=torch.long)),
        ValueError,
        ["attention_mask", "input_ids' shape (1, 5)"],
    ),
    (dict(attention_mask=torch.tensor([[1, 1, 1, 1, 0]])), ValueError, ["attention_mask", "left"]),
    (dict(mode="beam"), ValueError, ["mode", "self_speculative", "autoregressive"]),
    (dict(bad_words_ids=[[99999]]), ValueError, ["bad_words_ids", "99999", "outside the vocabulary"]),
    (dict(sequence_bias={(99999,): 1.0}), ValueError, ["sequence_bias", "outside the vocabulary"]),
    (dict(logits_processor=[None]), ValueError, ["logits_processor", "an item None"]),
    (dict(stopping_criteria=[1]), ValueError, ["stopping_criteria", "an item 1"]),
    (dict(stopping_criteria=5), ValueError, ["stopping_criteria", "a list"]),
    (dict(logits_processor=5), ValueError, ["logits_processor", "a list"]),
    (dict(do_sample=True, temperature=0.0), ValueError, ["temperature", "> 0"]),
    (dict(do_sample=True, top_p=1.5), ValueError, ["top_p", "<= 1"]),
    (dict(do_sample=True, top_k=-3), ValueError, ["top_k", ">= 0"]),
    (dict(do_sample=True, top_k=2.0), ValueError, ["top_k", "an int"]),
    (dict(input_ids=torch.tensor([[5, 97]])), ValueError, ["input_ids", "97", "[0, 97)"]),
    (dict(input_ids=torch.tensor([[5, -1]])), ValueError, ["input_ids", "-1"]),
    (dict(input_ids=torch.ones(1, 3)), ValueError, ["input_ids", "integer"]),
    (dict(input_ids="hello"), ValueError, ["input_ids", "LongTensor"]),
    (dict(generator=3), ValueError, ["generator", "torch.Generator"]),
    (dict(seed="7"), ValueError, ["seed", "int"]),
    (dict(seed=2**70), ValueError, ["seed", "[-2**63, 2**64)"]),
    (dict(pack="yes"), ValueError, ["pack", "'copy', 'in_place', 'none'"]),
    (dict(num_threads=0), ValueError, ["num_threads", ">= 1"]),
    (dict(inputs_embeds=torch.zeros(1, 5, 32)), ValueError, ["inputs_embeds", "token ids"]),
    (dict(past_key_values=object()), ValueError, ["past_key_values", "its own cache"]),
    (dict(num_speculations=10**9), None, []),  # capped by the tokens left: no giant allocation
    (dict(repetition_penalty=0.0), ValueError, ["repetition_penalty", "> 0"]),
    (dict(num_return_sequences=2), ValueError, ["num_return_sequences"]),
    (dict(output_attentions=True), ValueError, ["output_attentions"]),
    (dict(penalty_alpha=0.6, top_k=4), ValueError, ["penalty_alpha"]),
    (dict(stop_strings=["x"]), ValueError, ["tokenizer"]),
    (dict(num_beams=4), ValueError, ["num_beams"]),
    (dict(exit_layer=2, assistant_early_exit=3), ValueError, ["exit_layer", "assistant_early_exit"]),
    (dict(frobnicate=1), TypeError, ["frobnicate"]),
    (dict(draft_confidence_threshold=1.5), ValueError, ["draft_confidence_threshold", "[0, 1]"]),
    (dict(eos_token_id="x"), ValueError, ["eos_token_id"]),
]


@pytest.mark.parametrize("kwargs,exc,words", CASES, ids=[",".join(c[0]) for c in CASES])
def test_bad_input_is_rejected_before_streaming(kwargs, exc, words):
    model = cached_tiny_model("llama")
    streamer = Recorder()
    args = dict(input_ids=ids(), exit_layer=2, num_speculations=3, max_new_tokens=5, streamer=streamer)
    args.update(kwargs)
    if exc is None:  # accepted: it must run, and stream
        eedecode.generate(model, **args)
        assert streamer.calls[-1] == "end"
        return
    with pytest.raises(exc) as info:
        eedecode.generate(model, **args)
    for word in words:
        assert word in str(info.value), f"{word!r} not in: {info.value}"
    assert streamer.calls == []


def test_unsupported_architecture_names_the_supported_ones():
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50)).eval()
    with pytest.raises(ValueError) as info:
        eedecode.generate(model, ids(), exit_layer=1, max_new_tokens=3)
    message = str(info.value)
    assert "GPT2LMHeadModel" in message
    for name in eedecode.SUPPORTED_ARCHITECTURES:
        assert name in message


def test_streamer_with_a_batch_is_rejected():
    model = cached_tiny_model("llama")
    streamer = Recorder()
    with pytest.raises(ValueError, match="streamer"):
        eedecode.generate(model, ids(batch=2), exit_layer=2, max_new_tokens=3, streamer=streamer)
    assert streamer.calls == []


def test_a_setting_of_another_mode_names_the_mode_it_belongs_to():
    model = cached_tiny_model()
    with pytest.raises(ValueError, match=r"^criterion: not a setting of mode='adaptive'.*mode='early_exit'$"):
        eedecode.generate(model, ids(), criterion="max-prob:0.5", max_new_tokens=2)
    with pytest.raises(ValueError, match=r"^exit_layer: not a setting of mode='early_exit'.*'adaptive'"):
        eedecode.generate(model, ids(), mode="early_exit", exit_layer=2, max_new_tokens=2)
