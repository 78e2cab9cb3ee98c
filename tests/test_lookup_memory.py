"""Lookup drafts from earlier calls (``lookup_memory=True``): what the memory keeps, where it is
searched, that the output stays exact, and that nothing but a finished call writes to it."""

from __future__ import annotations

import pytest
import torch
from conftest import cached_tiny_model

import eedecode
from eedecode.bench import measure
from eedecode.drafting.lookup import LookupMemory, NgramIndex
from eedecode.model.memory import memory_of
from eedecode.modes.adaptive import settle
from eedecode.modes.adaptive.options import AdaptiveOptions


def test_the_memory_keeps_what_followed_each_ngrams_latest_occurrence():
    memory = LookupMemory(span=3)
    memory.add([[1, 2, 3, 4, 5], [9, 1, 2, 7]], ngram_max=3)
    assert memory.get((1, 2)) == [7]  # the later row wins
    assert memory.get((1, 2, 3)) == [4, 5]
    assert memory.get((2, 3)) == [4, 5]
    assert memory.get((3,)) is None  # shorter than its ngram_min (2): too weak a match
    assert memory.get((4, 5)) is None  # nothing followed


def test_the_memory_forgets_the_oldest_ngrams_past_its_capacity():
    memory = LookupMemory(capacity=4, span=2)
    memory.add([[1, 2, 3, 4]], ngram_max=2)  # (1,2) (2,3) (3,4)
    memory.add([[5, 6, 7, 1, 2, 8]], ngram_max=2)  # (5,6) (6,7) (7,1) (1,2) again, the newest
    assert len(memory) == 4
    assert memory.get((2, 3)) is None and memory.get((3, 4)) is None  # the oldest two went
    assert memory.get((5, 6)) == [7, 1] and memory.get((1, 2)) == [8]  # (1, 2) was renewed


def test_a_rows_own_context_comes_first_at_each_ngram_length():
    memory = LookupMemory()
    memory.add([[4, 5, 6, 40, 41], [5, 6, 50, 51]], ngram_max=3)
    prompt = torch.tensor([[5, 6, 60, 4, 5, 6]])
    index = NgramIndex(prompt, torch.tensor([0]), ngram_max=3, memory=memory)
    drafts, counts = index.drafts(2)
    assert drafts == [[40, 41]] and counts == [2]  # "4 5 6" from memory beats the row's own "5 6"
    prompt = torch.tensor([[9, 5, 6, 60, 5, 6]])
    index = NgramIndex(prompt, torch.tensor([0]), ngram_max=3, memory=memory)
    assert index.drafts(2) == ([[60, 5]], [2])  # "5 6": the row's own occurrence before the memory's
    prompt = torch.tensor([[1, 2, 7]])
    index = NgramIndex(prompt, torch.tensor([0]), ngram_max=3, memory=memory)
    assert index.drafts(2) == ([[0, 0]], [0])  # neither has it
    assert NgramIndex(torch.tensor([[4, 5, 6]]), torch.tensor([0])).drafts(2) == ([[0, 0]], [0])  # no memory


def _model():
    model = cached_tiny_model("llama", eos_token_id=None, num_hidden_layers=4)
    memory_of(model).reset()
    return model


def test_calls_with_the_memory_give_plain_decodings_tokens_and_fill_it(monkeypatch):
    monkeypatch.setattr(settle, "ENABLED", False)  # rounds that look up drafts, whatever the timings
    model = _model()
    g = torch.Generator().manual_seed(7)
    first = torch.randint(3, 97, (2, 12), generator=g)
    ar = eedecode.generate(model, first, max_new_tokens=20, mode="autoregressive")
    out = eedecode.generate(model, first, max_new_tokens=20, lookup_memory=True)
    assert torch.equal(out, ar)
    memory = memory_of(model).modes["lookup_memory"]
    assert memory.get(tuple(ar[0, -3:-1].tolist())) is not None  # the output's n-grams are kept
    # a later call whose text continues the first's output: the memory's drafts are proposed
    hits = []
    real = LookupMemory.get
    monkeypatch.setattr(LookupMemory, "get", lambda self, key: hits.append(key) or real(self, key))
    later = torch.cat([torch.randint(3, 97, (2, 4), generator=g), ar[:, 14:26]], 1)
    out = eedecode.generate(model, later, max_new_tokens=20, lookup_memory=True, return_dict_in_generate=True)
    assert torch.equal(
        out.sequences, eedecode.generate(model, later, max_new_tokens=20, mode="autoregressive")
    )
    assert hits  # the memory was searched
    assert memory.get(tuple(out.sequences[1, -3:-1].tolist())) is not None  # and took this call in


def test_a_call_without_the_option_neither_reads_nor_writes_the_memory():
    model = _model()
    x = torch.randint(3, 97, (1, 10), generator=torch.Generator().manual_seed(8))
    eedecode.generate(model, x, max_new_tokens=10)
    assert "lookup_memory" not in memory_of(model).modes


def test_a_failed_call_adds_nothing():
    model = _model()
    x = torch.randint(3, 97, (1, 10), generator=torch.Generator().manual_seed(9))
    eedecode.generate(model, x, max_new_tokens=6, lookup_memory=True)
    memory = memory_of(model).modes["lookup_memory"]
    kept = dict(memory.next)

    class Boom:
        def put(self, value):
            if value.numel() == 1:
                raise RuntimeError("streamer failed")

        def end(self):
            pass

    with pytest.raises(RuntimeError, match="streamer failed"):
        eedecode.generate(model, x + 1, max_new_tokens=6, lookup_memory=True, streamer=Boom())
    assert memory.next == kept
    memory_of(model).reset()
    assert "lookup_memory" not in memory_of(model).modes


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lookup_memory": "yes"}, "lookup_memory: must be True or False, got 'yes'"),
        ({"lookup_memory": True, "lookup": False}, "lookup_memory: needs lookup=True"),
        ({"lookup_memory": True, "lookup_ngram": 1}, "lookup_memory: needs lookup_ngram >= 2"),
    ],
)
def test_bad_values_are_named(kwargs, message):
    model = _model()
    x = torch.randint(3, 97, (1, 6), generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=message):
        eedecode.generate(model, x, max_new_tokens=4, **kwargs)
    assert "lookup_memory" not in memory_of(model).modes


def test_a_model_off_the_cpu_is_refused_before_anything_runs():
    options = AdaptiveOptions(lookup_memory=True)
    with pytest.raises(ValueError, match="lookup_memory: needs a model on the CPU"):
        options.validate_device(torch.device("cuda", 0))
    options.validate_device(torch.device("cpu"))
    AdaptiveOptions().validate_device(torch.device("cuda", 0))  # without the option: nothing to check


def test_the_benchmark_starts_every_repeat_with_no_memory(monkeypatch):
    """A benchmark repeats its prompts: a repeat (or the warm-up) must not leave its outputs in
    the memory for the next one to draft back."""
    model = _model()
    forgotten = []
    real = measure.forget_calls
    monkeypatch.setattr(measure, "forget_calls", lambda m: forgotten.append(m) or real(m))
    prompts = [torch.randint(3, 97, (1, 6), generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    methods = ["hf", "eedecode_auto@lookup_memory=True"]
    res = measure.time_methods(model, methods, prompts, max_new_tokens=6, warmup=1, repeats=3)
    # before the warm-up (earlier batch sizes' calls of the same prompts), then once per repeat
    assert len(forgotten) == 4 and all(m is model for m in forgotten)
    assert res[methods[1]].identical_to_hf == 2  # HF's tokens on both prompts


def test_the_benchmark_checks_the_option_before_it_runs_anything():
    prompts = [torch.randint(3, 97, (1, 6), generator=torch.Generator().manual_seed(3))]
    spec = measure.Speculation(exit_layer=2, num_speculations=1)
    one = measure.resolve_methods(["hf", "eedecode_auto@lookup_memory=True"])
    with pytest.raises(ValueError, match="lookup_memory: needs a model on the CPU"):
        measure._check_run(prompts, spec, 4, one, 8, (1,), 0, 1, torch.device("cuda", 0))
    measure._check_run(prompts, spec, 4, one, 8, (1,), 0, 1, torch.device("cpu"))
    two = measure.resolve_methods(
        ["eedecode_auto@lookup_memory=True", "eedecode_auto@lookup_memory=True@max_drafts=4"]
    )
    with pytest.raises(ValueError, match="methods: at most one method with lookup_memory=True per run"):
        measure._check_run(prompts, spec, 4, two, 8, (1,), 0, 1, torch.device("cpu"))
