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
import os
import sysconfig
import tempfile
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from .config import TrainConfig

Tensor = torch.Tensor

PROMPTS_PATH = Path(__file__).resolve().parent.parent / "data" / "prompts.jsonl"

#: Held-out modules (paths relative to the stdlib directory), chosen by name so that the split is
#: the same on every machine and Python version where they exist. Pure-Python, mid-sized, varied
#: (text processing, maths, data formats, networking, containers); all exist in CPython 3.10-3.13
#: except ``tomllib`` (3.11+). They are never used to train the tokenizer or the model.
HELD_OUT_MODULES = (
    "argparse.py",
    "bisect.py",
    "calendar.py",
    "colorsys.py",
    "csv.py",
    "difflib.py",
    "email/quoprimime.py",
    "fnmatch.py",
    "fractions.py",
    "ftplib.py",
    "glob.py",
    "graphlib.py",
    "gzip.py",
    "heapq.py",
    "ipaddress.py",
    "json/decoder.py",
    "json/encoder.py",
    "pprint.py",
    "queue.py",
    "sched.py",
    "secrets.py",
    "shlex.py",
    "statistics.py",
    "string.py",
    "textwrap.py",
    "tomllib/_parser.py",
    "urllib/parse.py",
    "zipapp.py",
)

#: Directories of the stdlib that are not the library itself (tests, third-party packages, the
#: IDE, the 2to3 tool) or are generated data rather than code (codec tables, pydoc topics).
EXCLUDED_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "lib2to3",
        "turtledemo",
        "ensurepip",
        "encodings",
        "pydoc_data",
        "lib-dynload",
        "__pycache__",
        "__phello__",
    }
)

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"


# ---------------------------------------------------------------------------------------------
# The standard library's sources


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def list_stdlib_files(root: str | Path) -> list[str]:
    """The ``.py`` files under ``root`` (relative POSIX paths, sorted), minus :data:`EXCLUDED_DIRS`."""
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in EXCLUDED_DIRS and not d.startswith(("config-", "."))
        )
        rel = Path(dirpath).relative_to(root)
        found += [(rel / f).as_posix() for f in filenames if f.endswith(".py")]
    return sorted(f for f in found if not f.startswith("_sysconfigdata"))


def split_stdlib_files(root: str | Path) -> tuple[list[str], list[str]]:
    """``(train, held_out)`` relative paths: held out are the :data:`HELD_OUT_MODULES` present."""
    files = list_stdlib_files(root)
    held = set(HELD_OUT_MODULES)
    return [f for f in files if f not in held], [f for f in HELD_OUT_MODULES if f in set(files)]


def read_texts(root: str | Path, files: Sequence[str], max_chars: int | None = None) -> list[str]:
    """The files' text in order, stopping before ``max_chars`` characters in total."""
    texts, total = [], 0
    for f in files:
        text = (Path(root) / f).read_text(encoding="utf-8", errors="replace")
        if max_chars is not None and total + len(text) > max_chars:
            if not texts:
                texts.append(text[:max_chars])
            break
        texts.append(text)
        total += len(text)
    return texts


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
