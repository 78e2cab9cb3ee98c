"""The GGUF writer (eedecode.model.gguf_export): llama.cpp's tensor names and RoPE layout, values that
survive a round trip through the file (and through the transformers GGUF loader), F16 files,
dequantised copies of a GGUF file, the vocabulary, what it refuses to write, and a model left
as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_model

from eedecode import demo_model_path
from eedecode.model.gguf_export import (
    BYTE,
    CONTROL,
    gguf_from_gguf,
    gguf_from_model,
    gguf_weight_bytes,
    model_tensors,
    permute_qk,
    unpermute_qk,
    vocabulary,
    write_gguf,
)

gguf = pytest.importorskip("gguf")


def read(path) -> dict[str, np.ndarray]:
    """The file's tensors as ``[out, in]`` arrays in the file's own dtype."""
    reader = gguf.GGUFReader(str(path))
    return {t.name: np.array(t.data) for t in reader.tensors}


def field(path, key):
    return gguf.GGUFReader(str(path)).get_field(key).contents()


def test_qk_permutation_is_llama_cpps_and_its_inverse_undoes_it():
    w = np.arange(2 * 8 * 3, dtype=np.float32).reshape(16, 3)  # 2 heads of head_dim 8, 3 inputs
    p = permute_qk(w, 2)
    # llama.cpp pairs row i of a head's first half with row i of its second half
    assert [int(r) for r in p[:8, 0] // 3] == [0, 4, 1, 5, 2, 6, 3, 7]
    assert np.array_equal(unpermute_qk(p, 2), w)


@pytest.mark.parametrize("tied", [False, True])
def test_a_model_round_trips_through_the_file(tmp_path, tied):
    model = tiny_model("llama", tie_word_embeddings=tied)
    path = gguf_from_model(model, tmp_path / "m.gguf")
    tensors = read(path)
    expected = dict(model_tensors(model))
    assert tensors.keys() == expected.keys()
    assert ("output.weight" in tensors) is not tied  # tied: llama.cpp reads token_embd as the head
    for name, value in expected.items():
        assert tensors[name].dtype == np.float32 and np.array_equal(tensors[name], value), name
    q = model.model.layers[1].self_attn.q_proj.weight.detach().numpy()
    assert np.array_equal(unpermute_qk(tensors["blk.1.attn_q.weight"], 4), q)
    assert field(path, "general.architecture") == "llama"
    assert field(path, "llama.block_count") == 6
    assert field(path, "llama.attention.head_count_kv") == 2
    assert field(path, "general.file_type") == 0  # all F32


def test_the_transformers_gguf_loader_reads_back_the_same_weights(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama")
    gguf_from_model(model, tmp_path / "m.gguf")
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_f16_files_keep_the_norms_in_f32(tmp_path):
    model = tiny_model("llama")
    tensors = read(gguf_from_model(model, tmp_path / "m.gguf", dtype="F16"))
    q = permute_qk(model.model.layers[0].self_attn.q_proj.weight.detach().numpy(), 4)
    assert tensors["blk.0.attn_q.weight"].dtype == np.float16
    assert np.array_equal(tensors["blk.0.attn_q.weight"], q.astype(np.float16))
    assert tensors["blk.0.attn_norm.weight"].dtype == np.float32
    with pytest.raises(ValueError, match="^dtype: must be one of F32, F16"):
        gguf_from_model(model, tmp_path / "x.gguf", dtype="Q4_0")


def test_a_quantized_gguf_is_written_dequantised_with_its_metadata(tmp_path):
    """The route SmolLM2's Q4_1 file takes: each tensor dequantised by the gguf package (what the
    transformers loader gives eedecode), the metadata copied."""
    source = gguf_from_model(tiny_model("llama"), tmp_path / "f32.gguf")
    w = gguf.GGUFWriter(str(tmp_path / "q8.gguf"), "llama")
    reader = gguf.GGUFReader(str(source))
    for f in reader.fields.values():
        if not f.name.startswith("GGUF.") and f.name != "general.architecture":
            vtype = f.types[0]
            sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(f.name, f.contents(), vtype, sub_type=sub)
    q8 = gguf.GGMLQuantizationType.Q8_0
    for t in reader.tensors:
        data = np.array(t.data)
        if data.ndim == 2:  # the matrices quantized, the norms kept
            w.add_tensor(t.name, gguf.quants.quantize(data, q8), raw_dtype=q8)
        else:
            w.add_tensor(t.name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    quantized = gguf.GGUFReader(str(tmp_path / "q8.gguf"))
    out = read(gguf_from_gguf(tmp_path / "q8.gguf", tmp_path / "deq.gguf"))
    for t in quantized.tensors:
        assert np.array_equal(out[t.name], gguf.dequantize(t.data, t.tensor_type)), t.name
    assert field(tmp_path / "deq.gguf", "general.file_type") == 0
    assert field(tmp_path / "deq.gguf", "tokenizer.ggml.tokens") == field(source, "tokenizer.ggml.tokens")
    # write_gguf takes this route when given the .gguf the model was loaded from
    again = write_gguf(None, tmp_path / "again.gguf", source=tmp_path / "q8.gguf")
    assert read(again).keys() == out.keys()


def test_the_demo_tokenizers_vocabulary():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_path("early_exit"))
    vocab = vocabulary(tokenizer, 4096)
    assert vocab["model"] == "llama"  # SentencePiece-style BPE with byte fallback
    assert all(vocab["tokens"][i] == piece for piece, i in tokenizer.get_vocab().items())
    assert vocab["types"][vocab["tokens"].index("<0x0A>")] == BYTE
    assert vocab["types"][tokenizer.eos_token_id] == CONTROL
    assert (vocab["bos_id"], vocab["eos_id"], vocab["pad_id"]) == (1, 2, 3)
    padded = vocabulary(tokenizer, 4100)  # a model vocabulary larger than the tokenizer's
    assert padded["tokens"][-1] == "[PAD4099]"


def test_without_a_tokenizer_a_placeholder_vocabulary_llama_cpp_accepts():
    vocab = vocabulary(None, 300)
    assert len(vocab["tokens"]) == 300 and len(set(vocab["tokens"])) == 300
    assert "<0x0A>" in vocab["tokens"]  # llama.cpp looks the newline token up when it loads


@pytest.mark.parametrize(
    "arch, overrides, message",
    [
        ("mistral", {}, "sliding window"),
        ("qwen2", {}, "LLaMA models only"),
        ("llama3", {}, "only the default RoPE"),
        ("llama", {"attention_bias": True}, "biases"),
    ],
)
def test_what_llama_cpps_llama_would_compute_differently_is_refused(tmp_path, arch, overrides, message):
    with pytest.raises(ValueError, match=message):
        gguf_from_model(tiny_model(arch, **overrides), tmp_path / "m.gguf")


@pytest.mark.parametrize("dtype", ["F32", "F16"])
def test_exporting_leaves_the_model_as_it_was(tmp_path, dtype):
    """The writer converts: the model's values, storage, dtype, grad flags and config are as before,
    and the arrays it hands the writer cannot write to the parameters they may share memory with."""
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pointers = {k: v.data_ptr() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    gguf_from_model(model, tmp_path / "m.gguf", dtype=dtype)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].data_ptr() == pointers[k] for k in before)
    assert all(p.requires_grad and p.dtype == torch.float32 for p in model.parameters())
    assert model.config.to_dict() == config and not model.training
    name, array = next(model_tensors(model))
    assert name == "token_embd.weight" and not array.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        array[0, 0] = 1.0
    assert torch.equal(model.model.embed_tokens.weight, before["model.embed_tokens.weight"])


def test_weight_bytes_count_a_tied_embedding_once_as_the_head(tmp_path):
    untied = gguf_from_model(tiny_model("llama"), tmp_path / "u.gguf")
    tied = gguf_from_model(tiny_model("llama", tie_word_embeddings=True), tmp_path / "t.gguf")
    embed = 97 * 32 * 4
    assert gguf_weight_bytes(untied) == sum(a.nbytes for a in read(untied).values()) - embed
    assert gguf_weight_bytes(tied) == sum(a.nbytes for a in read(tied).values())
