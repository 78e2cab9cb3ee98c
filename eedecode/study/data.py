"""Texts for the agreement study, and their token blocks.

A source is a text file (``.py`` sources are read as they are) or one of two corpora that every
CPython installation carries, so that a study runs offline on any machine:

- ``code``: the Python standard-library modules that the demo models never saw in training
  (:data:`eedecode.training.data.HELD_OUT_MODULES`);
- ``prose``: English prose, the text of the Python Language Reference as the standard library
  ships it for ``help()`` (``pydoc_data/topics.py``; never used to train the demo models).

Texts become one token stream (each as ``<s> text </s>``, as the demo models were trained), cut
into blocks of equal length; a study is teacher-forced over the blocks.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

Tensor = torch.Tensor

BUILTIN_SOURCES = ("code", "prose")


@dataclass(frozen=True)
class Text:
    name: str  # where it came from, in words a user can pass back
    text: str


def builtin_texts(name: str) -> list[Text]:
    """The ``code`` or ``prose`` corpus (see the module docstring)."""
    if name == "code":
        from ..model.corpus import HELD_OUT_MODULES, stdlib_root

        root = stdlib_root()
        files = [root / f for f in HELD_OUT_MODULES if (root / f).is_file()]
        return [Text(f"stdlib:{f.relative_to(root).as_posix()}", _read(f)) for f in files]
    if name == "prose":
        spec = importlib.util.find_spec("pydoc_data.topics")
        if spec is None or spec.origin is None:
            raise FileNotFoundError("data: this Python has no pydoc_data.topics; pass --data FILE")
        from pydoc_data.topics import topics

        return [Text(f"pydoc_data.topics:{key}", topics[key]) for key in sorted(topics)]
    raise ValueError(f"data: unknown corpus {name!r}; choose from {', '.join(BUILTIN_SOURCES)}")


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def load_texts(sources: list[str] | tuple[str, ...] | None = None) -> list[Text]:
    """Files (a folder contributes its ``.py`` and ``.txt`` files, sorted) or built-in corpus names;
    an existing path wins over a corpus of the same name. Default: ``code``."""
    texts: list[Text] = []
    for source in sources or ["code"]:
        path = Path(source).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in (".py", ".txt") and p.is_file())
            texts += [Text(str(f), _read(f)) for f in files]
        elif path.is_file():
            texts.append(Text(str(path), _read(path)))
        elif source in BUILTIN_SOURCES:
            texts += builtin_texts(source)
        else:
            raise FileNotFoundError(f"data: {source!r} is not a file, a folder or one of {BUILTIN_SOURCES}")
    texts = [t for t in texts if t.text.strip()]
    if not texts:
        raise ValueError(f"data: no text in {list(sources or ['code'])}")
    return texts


def encode_stream(tokenizer, texts: list[Text]) -> Tensor:
    """One stream of token ids ``[N]``: each text as ``<s> ... </s>`` (markers the tokenizer lacks
    are left out)."""
    ids: list[int] = []
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    encoded = tokenizer([t.text for t in texts], add_special_tokens=False, verbose=False)["input_ids"]
    for enc in encoded:
        ids += ([bos] if bos is not None else []) + list(enc) + ([eos] if eos is not None else [])
    return torch.tensor(ids, dtype=torch.long)


def to_blocks(stream: Tensor, block_len: int) -> Tensor:
    """Non-overlapping blocks ``[N // block_len, block_len]``."""
    if block_len < 2:
        raise ValueError(f"block_len: must be >= 2, got {block_len}")
    n = stream.numel() // block_len
    return stream[: n * block_len].view(n, block_len)


def split_blocks(blocks: Tensor, eval_tokens: int, train_tokens: int = 0) -> tuple[Tensor, Tensor]:
    """``(train, evaluation)`` blocks with at least the asked-for numbers of predicted positions
    (``block_len - 1`` per block). Training blocks come from the start of the stream, evaluation
    blocks are spread evenly over the rest (texts are kept in order, so the two share few texts).
    Raises when the data are too short for the training split."""
    per = blocks.shape[1] - 1
    n_train = -(-train_tokens // per) if train_tokens > 0 else 0
    if n_train and n_train >= blocks.shape[0]:
        raise ValueError(
            f"data: {blocks.shape[0] * per} tokens are not enough for {train_tokens} training tokens "
            "and an evaluation split; pass more --data or fewer --train-tokens"
        )
    rest = blocks[n_train:]
    n_eval = min(rest.shape[0], max(1, -(-eval_tokens // per)))
    picks = torch.linspace(0, rest.shape[0] - 1, n_eval).round().long().unique()
    return blocks[:n_train], rest[picks]
