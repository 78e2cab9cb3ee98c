"""Writing a LLaMA model's weights as a GGUF file, so that llama.cpp runs *the same weights* as
eedecode and Hugging Face (the benchmark's ``llamacpp_*`` methods, :mod:`eedecode.bench.llamacpp`).
It converts: the model is only read. Its parameters reach the writer as read-only NumPy views (no
copy of an F32 CPU model, and no write can reach it), and nothing of its config changes.

Two routes, both at a chosen precision (``F32`` or ``F16``):

* :func:`gguf_from_model`: a Hugging Face ``LlamaForCausalLM`` in memory (a checkpoint folder, the
  demo models, a synthetic model) -> GGUF with llama.cpp's LLaMA tensor names (``token_embd``,
  ``blk.N.attn_q``, ...), the query and key rows permuted to llama.cpp's RoPE layout (the inverse of
  what the transformers GGUF loader undoes), the hyperparameters and the tokenizer's vocabulary.
* :func:`gguf_from_gguf`: a GGUF file (SmolLM2's Q4_1 file) -> the same file with every tensor
  dequantised by the ``gguf`` package, which is what the transformers GGUF loader gives eedecode
  too, and its metadata (tokenizer, chat template) copied as it is.

F16 files keep 1-D tensors (the norms) in F32, as llama.cpp's converter does. The benchmark feeds
llama.cpp token ids, so tokenisation does not enter its timing; the vocabulary is there because
llama.cpp will not load a model without one. A SentencePiece-style BPE vocabulary (``▁`` for
spaces, byte fallback) is written as llama.cpp's ``llama`` tokenizer with scores ``-id`` (its BPE
merges are not kept, so llama.cpp's own tokenisation of text is approximate); a byte-level BPE as
``gpt2`` with its merges; a model without a tokenizer gets a placeholder vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

GGUF_DTYPES = ("F32", "F16")
#: llama.cpp's token types (gguf.TokenType), by name.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_FILE_TYPES = {"F32": 0, "F16": 1}  # gguf.LlamaFileType.ALL_F32, MOSTLY_F16


def _gguf():
    try:
        import gguf
    except ImportError as e:  # pragma: no cover - gguf is in the [gguf] and [llamacpp] extras
        raise ImportError("writing a GGUF file needs the gguf package: pip install gguf") from e
    return gguf


def _check_dtype(dtype: str) -> None:
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"dtype: must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}")


def _cast(array: np.ndarray, dtype: str) -> np.ndarray:
    """A tensor as llama.cpp stores it at ``dtype``: matrices in it, 1-D tensors in F32 (a float32
    array as it is, without a copy)."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    return array.astype(np.float16) if dtype == "F16" and array.ndim >= 2 else array


# -- the checkpoint's tensors under llama.cpp's names -------------------------------------------
def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a query or key projection ``[n_head * D, H]`` from Hugging Face's RoPE layout (the
    two halves of each head rotated together) to llama.cpp's (pairs of adjacent rows), as
    llama.cpp's ``convert_hf_to_gguf.py`` permutes them."""
    d = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, d, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of :func:`permute_qk` (what the transformers GGUF loader applies)."""
    d = w.shape[0] // n_head // 2
    return w.reshape(n_head, d, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_exportable(model) -> None:
    """A ValueError naming what llama.cpp's ``llama`` architecture would compute differently."""
    config = model.config
    if getattr(config, "model_type", None) not in ("llama", "mistral"):
        raise ValueError(f"GGUF export: LLaMA models only, got model_type {config.model_type!r}")
    if getattr(config, "sliding_window", None) is not None:
        raise ValueError("GGUF export: a sliding window is not written (llama.cpp's llama has none)")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ValueError("GGUF export: projections with biases are not written")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"GGUF export: only the default RoPE is written, got {rope.get('rope_type')!r}")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"GGUF export: a SiLU MLP only, got {config.hidden_act!r}")


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def model_tensors(model):
    """``(gguf name, fp32 array [out, in])`` for every tensor llama.cpp's LLaMA reads, from the
    model's parameters (whatever their layout in memory)."""
    config, inner = model.config, model.model
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head

    def arr(t: torch.Tensor) -> np.ndarray:
        view = t.detach().to("cpu", torch.float32).contiguous().numpy().view()
        view.flags.writeable = False  # it may share the parameter's memory: read, never written
        return view

    yield "token_embd.weight", arr(inner.embed_tokens.weight)
    for i, layer in enumerate(inner.layers):
        a, m = layer.self_attn, layer.mlp
        yield f"blk.{i}.attn_norm.weight", arr(layer.input_layernorm.weight)
        yield f"blk.{i}.attn_q.weight", permute_qk(arr(a.q_proj.weight), n_head)
        yield f"blk.{i}.attn_k.weight", permute_qk(arr(a.k_proj.weight), n_kv)
        yield f"blk.{i}.attn_v.weight", arr(a.v_proj.weight)
        yield f"blk.{i}.attn_output.weight", arr(a.o_proj.weight)
        yield f"blk.{i}.ffn_norm.weight", arr(layer.post_attention_layernorm.weight)
        yield f"blk.{i}.ffn_gate.weight", arr(m.gate_proj.weight)
        yield f"blk.{i}.ffn_up.weight", arr(m.up_proj.weight)
        yield f"blk.{i}.ffn_down.weight", arr(m.down_proj.weight)
    yield "output_norm.weight", arr(inner.norm.weight)
    if model.lm_head.weight is not inner.embed_tokens.weight:  # tied: llama.cpp reuses token_embd
        yield "output.weight", arr(model.lm_head.weight)


# -- the vocabulary -----------------------------------------------------------------------------
def vocabulary(tokenizer, vocab_size: int) -> dict:
    """The GGUF tokenizer fields for ``vocab_size`` ids: ``model`` (``llama`` or ``gpt2``),
    ``tokens``, ``types``, ``scores`` (llama) or ``merges`` (gpt2) and the special ids."""
    if tokenizer is None:
        return _placeholder_vocabulary(vocab_size)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError("GGUF export: the tokenizer has no tokenizers backend (tokenizer.json) to read")
    spec = json.loads(backend.to_str())
    model = spec["model"]
    if model["type"] == "BPE":
        ids = model["vocab"]
    elif model["type"] == "Unigram":
        ids = {piece: i for i, (piece, _) in enumerate(model["vocab"])}
    else:
        raise ValueError(f"GGUF export: a {model['type']} tokenizer is not written (BPE or Unigram only)")
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    for i, a in added.items():
        ids.setdefault(a["content"], i)
    if max(ids.values()) >= vocab_size:
        raise ValueError(f"GGUF export: the tokenizer has ids >= the model's vocab_size {vocab_size}")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [UNUSED] * vocab_size
    for piece, i in ids.items():
        tokens[i] = piece
        if i in added:
            types[i] = CONTROL if added[i].get("special") else USER_DEFINED
        elif piece == model.get("unk_token"):
            types[i] = UNKNOWN
        elif _is_byte_token(piece):
            types[i] = BYTE
        else:
            types[i] = NORMAL
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))
    out = {"tokens": tokens, "types": types, **_special_ids(tokenizer)}
    if model["type"] == "BPE" and byte_level:
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        return {"model": "gpt2", "merges": merges, **out}
    if model["type"] == "Unigram":
        scores = [0.0] * vocab_size
        for i, (_, score) in enumerate(model["vocab"]):
            scores[i] = float(score)
    else:
        scores = [-float(i) for i in range(vocab_size)]
    return {"model": "llama", "scores": scores, **out}


def _is_byte_token(piece: str) -> bool:
    return len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")


def _special_ids(tokenizer) -> dict:
    names = ("bos", "eos", "unk", "pad")
    found = {f"{n}_id": getattr(tokenizer, f"{n}_token_id", None) for n in names}
    return {k: v for k, v in found.items() if isinstance(v, int)}


def _placeholder_vocabulary(vocab_size: int) -> dict:
    """``<unk> <s> </s>``, the 256 byte tokens llama.cpp looks newline up among, then ``▁tN``."""
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))][:vocab_size]
    types = [UNKNOWN, CONTROL, CONTROL, *[BYTE] * 256][:vocab_size]
    tokens += [f"▁t{i}" for i in range(len(tokens), vocab_size)]
    types += [NORMAL] * (vocab_size - len(types))
    scores = [-float(i) for i in range(vocab_size)]
    return {"model": "llama", "tokens": tokens, "types": types, "scores": scores, "unk_id": 0, "bos_id": 1}


# -- writers ------------------------------------------------------------------------------------
def gguf_from_model(model, path: str | Path, tokenizer=None, dtype: str = "F32") -> Path:
    """Write ``model`` (a Hugging Face LLaMA) to ``path`` as a GGUF file llama.cpp loads (see the
    module docstring); returns the path."""
    gguf = _gguf()
    _check_dtype(dtype)
    check_exportable(model)
    config = model.config
    path = Path(path)
    n_head = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(Path(str(getattr(config, "_name_or_path", "") or "model")).name or "model")
    w.add_context_length(int(getattr(config, "max_position_embeddings", 2048)))
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(getattr(config, "num_key_value_heads", None) or n_head)
    w.add_rope_freq_base(_rope_theta(config))
    w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    w.add_rope_dimension_count(head_dim)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_vocab_size(config.vocab_size)
    w.add_file_type(_FILE_TYPES[dtype])
    vocab = vocabulary(tokenizer, config.vocab_size)
    w.add_tokenizer_model(vocab["model"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    if "scores" in vocab:
        w.add_token_scores(vocab["scores"])
    if "merges" in vocab:
        w.add_token_merges(vocab["merges"])
    for key in ("bos", "eos", "unk", "pad"):
        if f"{key}_id" in vocab:
            getattr(w, f"add_{key}_token_id")(vocab[f"{key}_id"])
    w.add_add_bos_token(False)  # the benchmark passes the prompt's ids as they are
    for name, array in model_tensors(model):
        w.add_tensor(name, _cast(array, dtype))
    _finish(w)
    return path


def gguf_from_gguf(source: str | Path, path: str | Path, dtype: str = "F32") -> Path:
    """Write ``source``'s tensors dequantised to ``dtype`` (F32: exactly the values the transformers
    GGUF loader gives eedecode) and its metadata to ``path``; returns the path."""
    gguf = _gguf()
    _check_dtype(dtype)
    reader = gguf.GGUFReader(str(source))
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    w = gguf.GGUFWriter(str(path), arch)
    written_here = (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in written_here:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    w.add_file_type(_FILE_TYPES[dtype])
    for t in reader.tensors:
        w.add_tensor(t.name, _cast(gguf.dequantize(t.data, t.tensor_type), dtype))
    _finish(w)
    return Path(path)


def _finish(w) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_gguf(model, path: str | Path, tokenizer=None, dtype: str = "F32", source=None) -> Path:
    """The GGUF file of ``model``'s weights at ``dtype``: from ``source`` when the model was loaded
    from a ``.gguf`` file (its tensors dequantised, its metadata kept), else from the model."""
    if source is not None and Path(source).suffix == ".gguf" and Path(source).is_file():
        return gguf_from_gguf(source, path, dtype)
    return gguf_from_model(model, path, tokenizer, dtype)


def gguf_weight_bytes(path: str | Path) -> int:
    """Bytes of weights a decode step reads from a GGUF file: every tensor, and ``token_embd`` once as
    the LM head when there is no ``output.weight`` (else the embedding's one row is left out)."""
    reader = _gguf().GGUFReader(str(path))
    names = {t.name for t in reader.tensors}
    tied = "output.weight" not in names
    return sum(int(t.n_bytes) for t in reader.tensors if t.name != "token_embd.weight" or tied)
