"""The benchmark's llama.cpp methods (eedecode.bench.llamacpp): skipped with a message saying how to
install the extra when llama-cpp-python is absent; when it is installed, greedy decoding of the
same weights, timed beside HF; and every method's share of the memory-bandwidth floor."""

from __future__ import annotations

import importlib.util
import tempfile

import pytest
import torch
from conftest import cached_tiny_model

from eedecode import bench
from eedecode.bench import llamacpp, measure
from eedecode.bench.llamacpp import LlamaCpp
from eedecode.bench.method import model_weight_bytes
from eedecode.bench.methods import Speculation, available_methods, resolve_methods
from eedecode.cli import main

HAS_LLAMA_CPP = llamacpp.missing() is None


def tiny():
    return cached_tiny_model("llama", eos_token_id=None, bos_token_id=None)


@pytest.fixture
def without_llama_cpp(monkeypatch):
    """llama-cpp-python looks uninstalled, whether it is or not."""
    find_spec = importlib.util.find_spec

    def find(name, *args):
        return None if name == "llama_cpp" else find_spec(name, *args)

    monkeypatch.setattr(llamacpp.importlib.util, "find_spec", find)


def test_llama_cpp_methods_are_opt_in_at_batch_one():
    methods = available_methods()
    for name, display in (("llamacpp_f32", "llama.cpp (F32)"), ("llamacpp_f16", "llama.cpp (F16)")):
        m = methods[name]
        assert m.display == display and m.batch_one_only and not m.in_default
    assert "llamacpp_f32" not in bench.method_names()
    assert "llamacpp_f32" in bench.method_names(everything=True)


def test_absent_llama_cpp_is_skipped_with_how_to_install_it(without_llama_cpp, tmp_path, capsys):
    why = llamacpp.missing()
    assert why.startswith("llama-cpp-python is not installed") and "eedecode[llamacpp]" in why
    record = bench.run_benchmark(
        tiny(),
        None,
        [{"prompt": "x"}] * 2,
        methods=["hf", "llamacpp_f32"],
        spec=Speculation(2, 1),
        max_new_tokens=4,
        show_progress=False,
    )
    assert [r["method"] for r in record["results"]] == ["hf"]
    assert record["skipped"] == {"llamacpp_f32": why}
    assert f"skipped llamacpp_f32: {why}" in bench.markdown_table(record)
    with pytest.raises(ValueError, match="^methods: none can run here"):
        kw = dict(methods=["llamacpp_f16"], spec=Speculation(2, 1), show_progress=False)
        measure.run_measurements(tiny(), None, [{"prompt": "x"}], **kw)
    with pytest.raises(ImportError, match="^llamacpp_f32: llama-cpp-python is not installed"):
        bench.time_methods(tiny(), ["llamacpp_f32"], [torch.tensor([[5, 6, 7]])], max_new_tokens=2)
    # the command line says so before it measures
    args = ["bench", "--model", "demo", "--methods", "hf,llamacpp_f32", "--num-prompts", "1"]
    args += ["--max-new-tokens", "2", "--warmup", "0", "--no-floor", "--no-progress"]
    args += ["--output", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"skipping llamacpp_f32: {why}" in out and "| HF generate |" in out


def test_methods_pass_through_as_objects():
    m = LlamaCpp("F16")
    assert resolve_methods(["hf", m])[1] is m


def test_floor_share_is_tokens_per_s_over_the_bandwidth_floor(monkeypatch):
    """With the bandwidth sampled between turns, each result's share of the floor is its tokens/s
    over batch x bandwidth / the bytes of weights one step reads."""
    samples = iter([2e9, 4e9, 3e9] * 10)
    monkeypatch.setattr(measure.ReadBandwidth, "__init__", lambda self: None)
    monkeypatch.setattr(measure.ReadBandwidth, "sample", lambda self: next(samples))
    model = tiny()
    record = measure.run_measurements(
        model,
        None,
        [{"prompt": "x"}] * 3,
        methods=["hf", "eedecode_ar"],
        spec=Speculation(2, 1),
        max_new_tokens=4,
        floor=True,
        show_progress=False,
    )
    assert record["settings"]["bandwidth_bytes_per_s"] == 3e9 and record["settings"]["bandwidth_samples"] == 3
    nbytes = model_weight_bytes(model)
    layers = sum(p.numel() * 4 for p in model.model.layers.parameters())
    assert nbytes == layers + 32 * 4 + 97 * 32 * 4  # the layers, the final norm and the untied head
    for r in record["results"]:
        assert r["weight_bytes"] == nbytes
        assert r["floor_share"] == pytest.approx(r["tokens_per_s"] * nbytes / 3e9)
    assert "floor share" in bench.markdown_table(record)


@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed (the llamacpp extra)")
@pytest.mark.parametrize("tied", [False, True])
def test_llama_cpp_decodes_the_same_weights_as_hf(tied, tmp_path, monkeypatch):
    """The tiny model written as F32 GGUF (no tokenizer: a placeholder vocabulary) and decoded by
    llama.cpp greedily gives HF's tokens; the F16 file runs too. When time_methods returns, the
    methods it made from their names are gone, and their temporary GGUF files with them."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = cached_tiny_model("llama", eos_token_id=None, bos_token_id=None, tie_word_embeddings=tied)
    ids = [torch.randint(3, 97, (1, 4 + i), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    timed = bench.time_methods(model, ["hf", "llamacpp_f32", "llamacpp_f16"], ids, max_new_tokens=12)
    assert timed["llamacpp_f32"].identical_to_hf == 4
    assert timed["llamacpp_f16"].new_tokens == 4 * 12
    assert timed["llamacpp_f32"].latency["ttft_ms"] > 0  # its tokens reached the streamer as they came
    assert list(tmp_path.iterdir()) == []
    method = LlamaCpp("F32")
    try:
        assert method.weight_bytes(model) == model_weight_bytes(model)  # F32: the same bytes
        path = method.engine(model).path
        assert path.is_file()
    finally:
        method.close()
    assert not path.exists()  # closing deletes the temporary GGUF
