"""A method's result (:class:`MethodResult`) from its timed runs: tokens/s, paired speed-ups over HF
``generate`` and eedecode autoregressive (the median over every batch of every run, and each run's
own median, for the range over runs), decoding statistics, agreement with HF's output.
Only arithmetic on what :mod:`.measure` gathered happens here."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .methods import AR, HF
from .steps import median


def _count_new(seq: torch.Tensor, prompt_len: int, eos, pad) -> int:
    """New tokens per row up to and including its first EOS (rows are padded after it)."""
    new = seq[:, prompt_len:]
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    total = 0
    for row in new.tolist():
        n = len(row)
        for i, t in enumerate(row):
            if t in eos_ids:
                n = i + 1
                break
        total += n
    return total


def _identical_rows(a: torch.Tensor, b: torch.Tensor) -> int:
    """Rows of two output batches that are equal (none when the batches differ in width)."""
    if a.shape != b.shape:
        return 0
    return int((a.cpu() == b.cpu()).all(1).sum())


def _agreement(ours: torch.Tensor, ref: torch.Tensor, prompt_len: int) -> tuple[list[float], list[int]]:
    """Per row of two output batches: the share of the reference's new tokens that ours matches
    position by position, and the first new position where they differ (the length if none)."""
    shares, firsts = [], []
    for a, b in zip(ours[:, prompt_len:].tolist(), ref[:, prompt_len:].tolist(), strict=True):
        same = [x == y for x, y in zip(a, b, strict=False)] + [False] * (len(b) - len(a))
        shares.append(sum(same) / max(len(b), 1))
        firsts.append(same.index(False) if False in same else len(b))
    return shares, firsts


@dataclass
class MethodResult:
    method: str
    batch_size: int
    exit_layer: int | None
    num_speculations: int | None
    tokens_per_s: float  # median over prompts (batches)
    tokens_per_s_all: list[float]
    new_tokens: int
    identical_to_hf: int | None = None  # prompts whose greedy output equals HF generate's
    lossless: bool = True  # the method means to reproduce HF's greedy output
    token_agreement_with_hf: float | None = None  # share of HF's new tokens matched, position by position
    first_divergence_from_hf: float | None = None  # median first differing new-token position
    mean_exit_layer: float | None = None  # early exit: mean depth a token left at (L: full depth)
    speedup_vs_hf: float | None = None  # median of paired per-batch ratios
    speedup_vs_ar: float | None = None
    speedup_vs_hf_runs: list[float] | None = None  # per run (repeat): its median paired ratio
    speedup_vs_ar_runs: list[float] | None = None
    latency: dict | None = None  # batch 1: time to first token, per-token p50/p95/p99 (ms; .latency)
    weight_bytes: int | None = None  # bytes of weights one step reads (the method's precision)
    floor_share: float | None = None  # tokens/s over the memory-bandwidth floor's tokens/s
    acceptance_rate: float | None = None  # eedecode modes that draft
    mean_tokens_per_round: float | None = None
    mean_drafts_per_round: float | None = None
    extra: dict = field(default_factory=dict)  # the method's other settings


def method_result(method, batch_size, spec, rates, new_tokens, stats, outputs, runs=1) -> MethodResult:
    """One method's result from what :func:`~.measure.time_methods` gathered: ``rates[name]`` holds one
    tokens/s per (run, batch), aligned across methods, ``runs`` runs of equally many batches."""
    settings = method.settings(spec)
    name = method.name
    r = MethodResult(
        method=name,
        batch_size=batch_size,
        exit_layer=settings.pop("exit_layer", None),
        num_speculations=settings.pop("num_speculations", None),
        tokens_per_s=median(rates[name]),
        tokens_per_s_all=rates[name],
        new_tokens=new_tokens,
        extra=settings,  # what is left: e.g. draft_confidence_threshold, prompt_lookup_num_tokens
    )
    for base, key in ((HF, "speedup_vs_hf"), (AR, "speedup_vs_ar")):
        if base in rates:
            ratios = [a / b for a, b in zip(rates[name], rates[base], strict=True)]
            per = len(ratios) // runs
            setattr(r, key, median(ratios))
            setattr(r, key + "_runs", [median(ratios[i * per : (i + 1) * per]) for i in range(runs)])
    drafted = sum(st.drafted_tokens for st in stats)
    if drafted:  # statistics of a mode that drafts
        accepted = sum(st.accepted_tokens for st in stats)
        row_rounds = sum(st.row_rounds for st in stats)
        r.acceptance_rate = accepted / drafted
        r.mean_tokens_per_round = (accepted + row_rounds) / row_rounds
        r.mean_drafts_per_round = drafted / row_rounds
    r.lossless = method.lossless
    r.mean_exit_layer = mean_exit_layer(stats, r.exit_layer)
    if HF in outputs:
        pairs = list(zip(outputs[name], outputs[HF], strict=True))
        r.identical_to_hf = sum(_identical_rows(a, b) for (a, _), (b, _) in pairs)
        shares, firsts = [], []
        for (a, P), (b, _) in pairs:
            share, first = _agreement(a, b, P)
            shares, firsts = shares + share, firsts + first
        r.token_agreement_with_hf = sum(shares) / len(shares)
        r.first_divergence_from_hf = median(firsts)
    return r


def mean_exit_layer(stats, exit_layer: int | None) -> float | None:
    """The mean depth tokens left at (early exit: its histogram), or drafts were made at (the
    adaptive mode: weighted by rounds; a static mode: its exit layer)."""
    hists = [st.details["exit_layer_histogram"] for st in stats if "exit_layer_histogram" in st.details]
    if hists:
        total = [sum(col) for col in zip(*hists, strict=True)]
        return sum(d * n for d, n in enumerate(total)) / max(sum(total), 1)
    pairs = [(st.details["mean_exit_layer"], st.rounds) for st in stats if st.details.get("mean_exit_layer")]
    if pairs:
        return sum(e * n for e, n in pairs) / max(sum(n for _, n in pairs), 1)
    drafted = any(st.drafted_tokens for st in stats)
    return float(exit_layer) if exit_layer is not None and drafted else None
