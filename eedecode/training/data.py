"""The corpus of eedecode's demo models: the Python standard library that every machine has.

The ``.py`` sources of the running interpreter's standard library, split by module name into a
training set and a fixed held-out set (:data:`HELD_OUT_MODULES`); a SentencePiece BPE tokenizer
trained on the training set; token streams cut into blocks; and the benchmark prompts, drawn from
the held-out modules (``eedecode/data/prompts.jsonl``).
"""

from __future__ import annotations

import ast
import io
import json
import math
import tempfile
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from ..model.corpus import (  # noqa: F401 (re-exported)
    EXCLUDED_DIRS,
    HELD_OUT_MODULES,
    PROMPTS_PATH,
    list_stdlib_files,
    read_texts,
    split_stdlib_files,
    stdlib_root,
)
from .config import TrainConfig

Tensor = torch.Tensor

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"


# ---------------------------------------------------------------------------------------------
# Tokenizer: SentencePiece BPE, wrapped as a Hugging Face LlamaTokenizer


def _tokenizer_sentences(texts: Sequence[str], sample_chars: int) -> Iterator[str]:
    """Chunks of about 2 kB, cut at blank lines so that pieces may span newlines (``"):\\n"``);
    every k-th chunk when the texts are longer than ``sample_chars``."""
    chunks = []
    for text in texts:
        buf = ""
        for para in text.split("\n\n"):
            buf += para + "\n\n"
            if len(buf) > 2000:
                chunks.append(buf)
                buf = ""
        if buf:
            chunks.append(buf)
    stride = max(1, math.ceil(sum(map(len, chunks)) / sample_chars))
    yield from chunks[::stride]


def train_tokenizer(
    texts: Sequence[str], vocab_size: int = 4096, sample_chars: int = 6_000_000, max_length: int = 1024
):
    """A SentencePiece BPE tokenizer with byte fallback (so every string encodes and decodes back
    exactly), spaces and newlines kept as they are, digits split, and runs of indentation as pieces.
    Returns a ``transformers.LlamaTokenizer`` (ids: unk 0, bos 1, eos 2, pad 3) that adds BOS."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_sentencepiece import SentencePieceExtractor

    if vocab_size < 256 + 4 + 8:
        raise ValueError("vocab_size: byte fallback needs 256 byte pieces plus specials and merges")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_tokenizer_sentences(texts, sample_chars),
        model_writer=proto,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=0.9995,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        max_sentence_length=1 << 16,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        unk_piece=UNK,
        bos_piece=BOS,
        eos_piece=EOS,
        pad_piece=PAD,
        num_threads=1,  # deterministic
        minloglevel=2,
    )
    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / "spm.model"
        model_file.write_bytes(proto.getvalue())
        vocab, _, merges = SentencePieceExtractor(str(model_file)).extract()
    return LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        add_prefix_space=False,
        add_bos_token=True,
        add_eos_token=False,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=max_length,
    )


def encode_corpus(tokenizer, texts: Sequence[str]) -> Tensor:
    """One stream of token ids ``[N]``: each text as ``<s> ... </s>``."""
    ids = []
    for enc in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]:
        ids += [tokenizer.bos_token_id, *enc, tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def to_blocks(stream: Tensor, block_len: int) -> Tensor:
    """Non-overlapping blocks ``[N // block_len, block_len]`` of a token stream."""
    n = stream.numel() // block_len
    return stream[: n * block_len].view(n, block_len)


def spread_blocks(blocks: Tensor, n: int) -> Tensor:
    """``n`` blocks evenly spread over ``blocks`` (all of them if there are fewer)."""
    if n >= blocks.shape[0]:
        return blocks
    return blocks[torch.linspace(0, blocks.shape[0] - 1, n).round().long()]


def prepare_data(cfg: TrainConfig) -> tuple[object, Tensor, Tensor, dict]:
    """``(tokenizer, train_ids [N], eval_blocks [M, seq_len + 1], data summary)`` for a run: the
    tokenizer reused from ``cfg.tokenizer`` or trained on the training files."""
    root = Path(cfg.stdlib_dir) if cfg.stdlib_dir else stdlib_root()
    train_files, held_files = split_stdlib_files(root)
    train_texts = read_texts(root, train_files, cfg.max_train_chars)
    held_texts = read_texts(root, held_files, cfg.max_eval_chars)
    if cfg.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    else:
        tokenizer = train_tokenizer(
            train_texts, cfg.vocab_size, cfg.tokenizer_sample_chars, cfg.max_position_embeddings
        )
    train_ids = encode_corpus(tokenizer, train_texts)
    eval_blocks = to_blocks(encode_corpus(tokenizer, held_texts), cfg.seq_len + 1)
    data = {
        "stdlib_dir": str(root),
        "train_files": len(train_texts),
        "train_chars": sum(map(len, train_texts)),
        "train_tokens": train_ids.numel(),
        "held_out_files": held_files[: len(held_texts)],
        "held_out_tokens": int(eval_blocks.numel()),
    }
    return tokenizer, train_ids, eval_blocks, data


# ---------------------------------------------------------------------------------------------
# Benchmark prompts from the held-out modules


def stdlib_prompts(
    n: int = 24, root: str | Path | None = None, min_chars: int = 100, max_chars: int = 400
) -> list[dict]:
    """``n`` prompts, each the start of a function from a held-out module: its ``def`` line(s) and
    docstring, dedented, ending with a newline (the model is to write the body). Functions are
    taken round-robin over :data:`HELD_OUT_MODULES` in source order, so the set is deterministic
    for a given Python version. Each is ``{"id", "source": "module.py:lineno", "prompt"}``."""
    root = Path(root) if root else stdlib_root()
    per_module = [_function_heads(root, m, min_chars, max_chars) for m in HELD_OUT_MODULES]
    prompts: list[dict] = []
    for rank in range(max(map(len, per_module), default=0)):
        for heads in per_module:
            if rank < len(heads) and len(prompts) < n:
                prompts.append({"id": len(prompts), **heads[rank]})
    return prompts


def _function_heads(root: Path, module: str, min_chars: int, max_chars: int) -> list[dict]:
    path = root / module
    if not path.is_file():
        return []
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    heads = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or ast.get_docstring(node) is None:
            continue
        text = textwrap.dedent("".join(lines[node.lineno - 1 : node.body[0].end_lineno]))
        if min_chars <= len(text) <= max_chars:
            heads.append((node.lineno, text if text.endswith("\n") else text + "\n"))
    return [{"source": f"{module}:{lineno}", "prompt": text} for lineno, text in sorted(heads)]


def write_prompts(path: str | Path = PROMPTS_PATH, n: int = 24, root: str | Path | None = None) -> list[dict]:
    prompts = stdlib_prompts(n, root)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return prompts
