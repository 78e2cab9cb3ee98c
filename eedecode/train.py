"""Training recipe for eedecode's demo models: a small LLaMA trained on the Python standard library.

Every machine that runs eedecode has the same free corpus: the ``.py`` sources of the running
interpreter's standard library. This module trains a SentencePiece BPE tokenizer and a
``LlamaForCausalLM`` of a few million parameters on them, and saves a Hugging Face checkpoint that
``AutoModelForCausalLM`` / ``AutoTokenizer`` load offline. Two variants:

- ``plain``: next-token loss on the last layer only (the "no joint training" case, arXiv 2412.01455).
- ``early_exit``: LayerSkip's recipe (Elhoushi et al. 2024, arXiv 2404.16710, section 4): the
  shared final norm + LM head applied to intermediate layers gives an early-exit loss, scaled by a
  weight that grows with depth and enabled on a rotating subset of layers at each step; layer
  dropout whose rate rises with depth (0 at the first layer, ``p_max`` at the last) in training only.
  An optional self-distillation term pulls each exit towards the last layer's distribution.

:func:`evaluate_layers` measures, per exit depth, the held-out loss and how often the exit's argmax
agrees with the last layer's, on any LLaMA-family model. :func:`stdlib_prompts` draws the default
benchmark prompts from the held-out modules. ``python -m eedecode.train --help`` lists the flags.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import json
import math
import os
import platform
import sys
import sysconfig
import tempfile
import textwrap
import time
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .demo import VARIANTS

Tensor = torch.Tensor

PROMPTS_PATH = Path(__file__).resolve().parent / "data" / "prompts.jsonl"

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


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. The defaults train one variant in about 30 minutes
    on a 2-core CPU; on a GPU pass ``device="cuda"`` and larger shapes and step counts.

    The run stops after ``max_steps`` or ``time_budget_min``, whichever comes first, and the
    learning-rate schedule follows the larger of the two fractions used, so that a run cut short
    by its time budget still ends with a decayed learning rate."""

    variant: str = "early_exit"  # "plain" | "early_exit"
    output_dir: str = "runs/train/early_exit"
    seed: int = 0
    # data: the stdlib directory (None: the running interpreter's) and optional size caps
    stdlib_dir: str | None = None
    max_train_chars: int | None = None
    max_eval_chars: int | None = None
    # tokenizer: reuse a saved one (a checkpoint directory), or train one with this many pieces
    tokenizer: str | None = None
    vocab_size: int = 4096
    tokenizer_sample_chars: int = 6_000_000
    # model shape
    hidden_size: int = 256
    num_layers: int = 8
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 640
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    # optimisation
    seq_len: int = 256
    batch_size: int = 8
    max_steps: int = 900
    time_budget_min: float | None = 30.0  # stop cleanly after this; the lr schedule ends with it
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 40
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # early exit (variant "early_exit" only)
    exit_loss_scale: float = 1.0  # weight of the exit after d of L layers: exit_loss_scale * d / L
    exit_rotation: int = 2  # each step enables the exits with (d - 1) % rotation == step % rotation
    exit_distill: float = 0.5  # share of each exit's loss that is KL(last layer || exit) instead of CE
    exit_fraction: float = 0.25  # share of the positions on which intermediate exits are scored
    layer_dropout_max: float = 0.1  # layer dropout rate of the last layer; 0 at the first
    # evaluation, logging, saving
    eval_every: int = 150
    eval_blocks_quick: int = 16
    eval_blocks: int = 200
    eval_batch_size: int = 16
    log_every: int = 20
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    num_threads: int | None = None  # torch CPU threads (None: torch's default)
    save_dtype: str = "bfloat16"  # "bfloat16" | "float32"
    progress: bool = True

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {self.variant!r}")
        if self.num_layers < 2:
            raise ValueError("num_layers: need at least 2 layers")
        if self.exit_rotation < 1:
            raise ValueError("exit_rotation: must be >= 1")
        if not 0.0 <= self.exit_distill <= 1.0:
            raise ValueError("exit_distill: must be in [0, 1]")
        if not 0.0 <= self.layer_dropout_max < 1.0:
            raise ValueError("layer_dropout_max: must be in [0, 1)")
        if self.save_dtype not in ("bfloat16", "float32"):
            raise ValueError(f"save_dtype: expected bfloat16 or float32, got {self.save_dtype!r}")


# ---------------------------------------------------------------------------------------------
# Data: the standard library's sources


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


# ---------------------------------------------------------------------------------------------
# Model


def build_model(cfg: TrainConfig, tokenizer):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def run_layers(
    model,
    input_ids: Tensor,
    exit_depths: Sequence[int],
    layer_dropout: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
) -> dict[int, Tensor]:
    """Runs the decoder stack causally over ``input_ids`` ``[B, T]`` with the model's own modules
    and returns ``{d: hidden state after d layers [B, T, H]}`` (before the final norm) for each
    ``d`` in ``exit_depths``; stops after the deepest. In training mode, layer ``i`` is skipped for
    each row of the batch with probability ``layer_dropout[i]`` (only the kept rows are computed)."""
    from transformers.masking_utils import create_causal_mask

    inner = model.model
    batch, seq = input_ids.shape
    h = inner.embed_tokens(input_ids)
    position_ids = torch.arange(seq, device=input_ids.device).unsqueeze(0)
    mask = create_causal_mask(
        config=model.config,
        inputs_embeds=h,
        attention_mask=None,
        past_key_values=None,
        position_ids=position_ids,
    )
    rope = inner.rotary_emb(h, position_ids=position_ids)
    drop = layer_dropout if (layer_dropout is not None and model.training) else None
    wanted, out = set(exit_depths), {}
    for i, layer in enumerate(inner.layers[: max(wanted)]):
        p = drop[i] if drop is not None else 0.0
        if p <= 0.0:
            h = _layer(layer, h, mask, position_ids, rope)
        else:
            keep = (torch.rand(batch, generator=generator) >= p).nonzero().squeeze(1).to(h.device)
            if keep.numel() == batch:
                h = _layer(layer, h, mask, position_ids, rope)
            elif keep.numel() > 0:
                rows_mask = mask if mask is None or mask.shape[0] == 1 else mask[keep]
                h = h.index_copy(0, keep, _layer(layer, h[keep], rows_mask, position_ids, rope))
        if i + 1 in wanted:
            out[i + 1] = h
    return out


def _layer(layer, h: Tensor, mask, position_ids: Tensor, rope) -> Tensor:
    out = layer(h, attention_mask=mask, position_ids=position_ids, position_embeddings=rope)
    return out[0] if isinstance(out, tuple) else out


def exit_logits(model, hidden: Tensor) -> Tensor:
    """The shared exit head: final norm then LM head, in fp32. ``[..., H] -> [..., V]``."""
    return model.lm_head(model.model.norm(hidden)).float()


# ---------------------------------------------------------------------------------------------
# LayerSkip losses


def exit_loss_weights(cfg: TrainConfig, step: int) -> dict[int, float]:
    """Normalised loss weights ``{depth: weight}`` at ``step``. The last layer always has scale 1;
    for ``early_exit`` the exit after ``d`` layers has scale ``exit_loss_scale * d / L`` (growing
    with depth, as LayerSkip's) and is enabled when ``(d - 1) % exit_rotation == step %
    exit_rotation`` (LayerSkip's rotational curriculum)."""
    L = cfg.num_layers
    scales = {L: 1.0}
    if cfg.variant == "early_exit" and cfg.exit_loss_scale > 0:
        r = cfg.exit_rotation
        scales.update({d: cfg.exit_loss_scale * d / L for d in range(1, L) if (d - 1) % r == step % r})
    total = sum(scales.values())
    return {d: s / total for d, s in sorted(scales.items())}


def layer_dropout_rates(num_layers: int, p_max: float) -> list[float]:
    """LayerSkip's per-layer dropout rate: ``p_max * (2 ** (i / (L - 1)) - 1)`` for layer ``i``,
    0 for the first layer, ``p_max`` for the last."""
    return [p_max * (2.0 ** (i / (num_layers - 1)) - 1.0) for i in range(num_layers)]


def early_exit_loss(
    model,
    input_ids: Tensor,
    weights: dict[int, float],
    layer_dropout: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
    distill: float = 0.0,
    exit_fraction: float = 1.0,
) -> tuple[Tensor, dict[int, Tensor]]:
    """``sum_d weights[d] * loss_d`` over the exit depths ``d`` in ``weights`` for the blocks
    ``input_ids`` ``[B, T + 1]``. ``loss_d`` is the next-token cross-entropy of the exit head on
    the hidden state after ``d`` layers; for an intermediate exit, ``distill`` of it is replaced by
    ``KL(p_L || p_d)`` towards the (detached) last layer when the last layer is among the depths.
    Intermediate exits are scored on a random ``exit_fraction`` of the positions. Returns the
    loss and each depth's cross-entropy (detached)."""
    inputs, labels = input_ids[:, :-1], input_ids[:, 1:].reshape(-1)
    hidden = run_layers(model, inputs, list(weights), layer_dropout, generator)
    last = model.config.num_hidden_layers
    # intermediate exits see a random subset of positions: the exit head costs as much as a layer
    n = labels.numel()
    keep = torch.randperm(n, generator=generator)[: max(1, round(n * exit_fraction))].to(labels.device)
    total, ce_by_depth, target_logp = 0.0, {}, None
    for d in sorted(weights, reverse=True):  # the last layer first: it is the distillation target
        h = hidden[d].flatten(0, 1)  # [B*T, H]
        rows = slice(None) if d == last or exit_fraction >= 1.0 else keep
        logits = exit_logits(model, h[rows])  # [N, V]
        ce = F.cross_entropy(logits, labels[rows])
        term = ce
        if d == last:
            target_logp = logits.detach().log_softmax(-1)
        elif distill > 0 and target_logp is not None:
            target = target_logp[rows]
            kl = F.kl_div(logits.log_softmax(-1), target, log_target=True, reduction="batchmean")
            term = (1.0 - distill) * ce + distill * kl
        total = total + weights[d] * term
        ce_by_depth[d] = ce.detach()
    return total, ce_by_depth


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate_layers(model, blocks: Tensor, batch_size: int = 16) -> dict[str, list[float] | int]:
    """Per exit depth ``d = 1..L`` on the token blocks ``[N, T]``: mean next-token loss, top-1
    accuracy, and top-1 agreement with the last layer's argmax, over the ``N * (T - 1)`` predicted
    positions (index ``d - 1`` of each list). Works on any LLaMA-family ``*ForCausalLM``."""
    was_training = model.training
    model.eval()
    L = model.config.num_hidden_layers
    device = next(model.parameters()).device
    loss_sum, hit_sum, agree_sum = torch.zeros(L), torch.zeros(L), torch.zeros(L)
    count = 0
    for start in range(0, blocks.shape[0], batch_size):
        chunk = blocks[start : start + batch_size].to(device)
        labels = chunk[:, 1:].reshape(-1)
        hidden = run_layers(model, chunk[:, :-1], range(1, L + 1))
        final = exit_logits(model, hidden[L]).flatten(0, 1).argmax(-1)
        for d in range(1, L + 1):
            logits = exit_logits(model, hidden[d]).flatten(0, 1)
            loss_sum[d - 1] += F.cross_entropy(logits, labels, reduction="sum").item()
            top1 = logits.argmax(-1)
            hit_sum[d - 1] += (top1 == labels).sum().item()
            agree_sum[d - 1] += (top1 == final).sum().item()
        count += labels.numel()
    model.train(was_training)
    n = max(count, 1)
    return {
        "tokens": count,
        "loss": [round(x / n, 4) for x in loss_sum.tolist()],
        "accuracy": [round(x / n, 4) for x in hit_sum.tolist()],
        "agreement": [round(x / n, 4) for x in agree_sum.tolist()],
    }


def format_layer_table(stats: dict) -> str:
    rows = ["depth  loss    acc     agree"]
    for d, (loss, acc, agree) in enumerate(
        zip(stats["loss"], stats["accuracy"], stats["agreement"], strict=True), 1
    ):
        rows.append(f"{d:>5}  {loss:6.3f}  {acc:6.3f}  {agree:6.3f}")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# Training loop


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr`` as
    ``progress`` (the larger of the step and time-budget fractions used) goes from 0 to 1."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    ratio = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * ratio


def _optimizer(model, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")


def _prepare_data(cfg: TrainConfig):
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


@dataclass(frozen=True)
class TrainResult:
    model: torch.nn.Module  # in eval mode, weights rounded to ``save_dtype`` (held in fp32 on the CPU)
    tokenizer: object
    log: dict


def train(cfg: TrainConfig) -> TrainResult:
    """Trains one variant and saves the checkpoint, tokenizer and ``training_log.json`` to
    ``cfg.output_dir``."""
    t_start = time.time()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    device = _device(cfg.device)
    tokenizer, train_ids, eval_blocks, data = _prepare_data(cfg)
    model = build_model(cfg, tokenizer).to(device).train()
    run = _train_loop(cfg, model, train_ids, spread_blocks(eval_blocks, cfg.eval_blocks_quick), device)
    # evaluate the weights as they will be saved
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(getattr(torch, cfg.save_dtype)))
    final = evaluate_layers(model, spread_blocks(eval_blocks, cfg.eval_blocks), cfg.eval_batch_size)
    log = {
        "config": dataclasses.asdict(cfg),
        "data": data,
        "parameters": sum(p.numel() for p in model.parameters()),
        **run,
        "wall_seconds": round(time.time() - t_start, 1),
        "final_eval": final,
        "machine": _machine(device),
    }
    save_checkpoint(model, tokenizer, cfg.output_dir, cfg.save_dtype, log)
    model.float().eval()
    if cfg.progress:
        print(f"saved {cfg.output_dir}: {run['steps']} steps in {run['train_seconds']:.0f} s")
        print(format_layer_table(final))
    return TrainResult(model, tokenizer, log)


def spread_blocks(blocks: Tensor, n: int) -> Tensor:
    """``n`` blocks evenly spread over ``blocks`` (all of them if there are fewer)."""
    if n >= blocks.shape[0]:
        return blocks
    return blocks[torch.linspace(0, blocks.shape[0] - 1, n).round().long()]


def _train_loop(cfg: TrainConfig, model, train_ids: Tensor, quick_eval: Tensor, device) -> dict:
    """The optimisation loop: ``max_steps`` steps or ``time_budget_min``, whichever ends first."""
    from tqdm.auto import tqdm

    optimizer = _optimizer(model, cfg, device)
    early_exit = cfg.variant == "early_exit"
    dropout = layer_dropout_rates(cfg.num_layers, cfg.layer_dropout_max) if early_exit else None
    gen = torch.Generator().manual_seed(cfg.seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    offsets = torch.arange(cfg.seq_len + 1)
    budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min else math.inf
    tokens_per_step = cfg.batch_size * cfg.seq_len
    curve, evals, window, step, lr = [], [], [], 0, 0.0
    bar = tqdm(total=cfg.max_steps, disable=not cfg.progress, dynamic_ncols=True, desc=cfg.variant)
    t_loop = time.time()
    while step < cfg.max_steps and (elapsed := time.time() - t_loop) < budget_s:
        # 1) the learning rate, from the step or time-budget fraction used
        lr = lr_at(cfg, step, max(step / cfg.max_steps, elapsed / budget_s))
        for group in optimizer.param_groups:
            group["lr"] = lr
        # 2) a batch of random windows of the training stream
        starts = torch.randint(0, train_ids.numel() - cfg.seq_len - 1, (cfg.batch_size,), generator=gen)
        batch = train_ids[starts[:, None] + offsets].to(device)  # [B, T + 1]
        # 3) the (early-exit) loss and the update
        weights = exit_loss_weights(cfg, step)
        with autocast:
            loss, ce = early_exit_loss(
                model, batch, weights, dropout, gen, cfg.exit_distill, cfg.exit_fraction
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        # 4) progress, the loss curve and quick held-out evaluations
        window.append((loss.item(), ce[cfg.num_layers].item()))
        tok_s = step * tokens_per_step / (time.time() - t_loop)
        bar.update(1)
        bar.set_postfix(loss=f"{window[-1][0]:.3f}", ce=f"{window[-1][1]:.3f}", tok_s=f"{tok_s:.0f}")
        if step % cfg.log_every == 0 or step == 1:
            curve.append(_curve_point(step, step * tokens_per_step, time.time() - t_loop, lr, window))
            window = []
        if cfg.eval_every and step % cfg.eval_every == 0 and quick_eval.numel():
            evals.append({"step": step, **evaluate_layers(model, quick_eval, cfg.eval_batch_size)})
            bar.write(f"step {step}: loss {evals[-1]['loss']} agree {evals[-1]['agreement']}")
    bar.close()
    train_s = time.time() - t_loop
    if window:
        curve.append(_curve_point(step, step * tokens_per_step, train_s, lr, window))
    return {
        "steps": step,
        "tokens_seen": step * tokens_per_step,
        "train_seconds": round(train_s, 1),
        "tokens_per_second": round(step * tokens_per_step / max(train_s, 1e-9), 1),
        "loss_curve": curve,
        "evals": evals,
    }


def _curve_point(step: int, tokens: int, seconds: float, lr: float, window: list) -> dict:
    n = max(len(window), 1)
    return {
        "step": step,
        "tokens": tokens,
        "seconds": round(seconds, 1),
        "lr": round(lr, 6),
        "loss": round(sum(w[0] for w in window) / n, 4),
        "final_ce": round(sum(w[1] for w in window) / n, 4),
    }


def _machine(device: torch.device) -> dict:
    import sentencepiece
    import transformers

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentencepiece": sentencepiece.__version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def save_checkpoint(
    model, tokenizer, output_dir: str | Path, save_dtype: str, log: dict | None = None
) -> None:
    """Saves safetensors weights in ``save_dtype``, config, generation config, tokenizer and log."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, save_dtype)
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if log is not None:
        (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    for f in out.iterdir():  # safetensors writes 0600; package data must be readable by all
        f.chmod(0o644)


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


# ---------------------------------------------------------------------------------------------
# Command line: `eedecode train ...` mounts add_train_arguments / run_train


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a small LLaMA (plain or early-exit) on the Python standard library"
    )
    add_train_arguments(p)
    p.set_defaults(func=run_train)


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """One ``--flag`` per :class:`TrainConfig` field (``--hidden-size``, ``--no-progress``...),
    plus ``--write-prompts PATH``."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        help_text = f"default: {field.default}"
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        elif field.name == "variant":
            parser.add_argument(flag, choices=VARIANTS, default=field.default, help=help_text)
        else:
            parser.add_argument(flag, type=base, default=field.default, help=help_text)
    parser.add_argument(
        "--write-prompts",
        metavar="PATH",
        default=None,
        help="write the benchmark prompt set (JSON lines) to PATH and exit without training",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    return TrainConfig(**values)


def run_train(args: argparse.Namespace) -> int:
    if getattr(args, "write_prompts", None):
        prompts = write_prompts(args.write_prompts, root=args.stdlib_dir)
        print(f"wrote {len(prompts)} prompts to {args.write_prompts}")
        return 0
    train(config_from_args(args))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eedecode.train", description=__doc__.split("\n\n")[0])
    add_train_arguments(parser)
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
