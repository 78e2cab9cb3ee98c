"""Measuring: tokens/s of every method on a prompt set, paired speed-ups and decoding statistics
(the cost of one draft step and one verification pass: :mod:`eedecode.bench.steps`).

Methods take turns on every batch, in an order that rotates, so that a drift of the machine's
speed touches them alike; a speed-up is the median of *paired* ratios (two methods on the same
batch in the same turn). Warm-up is excluded and clocks are read after a device synchronisation.
Nothing here formats, derives or asserts a time (:mod:`eedecode.bench.report` does the first two).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..model.packing import pack_head, pack_layer, packed_layer
from . import steps
from .methods import AR, HF, Speculation, pad_token_id, resolve_methods
from .steps import measure_step_costs, median, sync

DEFAULT_PROMPTS = Path(__file__).resolve().parent.parent / "data" / "prompts.jsonl"


def check_count(name: str, value, minimum: int = 1) -> None:
    """``value`` must be an int >= ``minimum``; else a ValueError whose message starts with ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: must be an int >= {minimum}, got {value!r}")


# -- prompts ---------------------------------------------------------------------------------------
def load_prompts(path: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """Prompts from a JSONL file (one ``{"prompt": ...}`` per line); default: the shipped set.
    ``limit``: the first that many (more than the file holds is an error)."""
    path = Path(path) if path else DEFAULT_PROMPTS
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):
        if "prompt" not in row:
            raise ValueError(f"prompts: line {i + 1} of {path} has no 'prompt' field")
    if limit is not None:
        check_count("num_prompts", limit)
        if limit > len(rows):
            raise ValueError(f"num_prompts: {limit} asked for, {path} has {len(rows)}")
        rows = rows[:limit]
    return rows


def encode_prompts(
    tokenizer, prompts: list[dict], vocab_size: int, device, seed: int = 0
) -> list[torch.Tensor]:
    """Token ids ``[1, P]`` per prompt; without a tokenizer (synthetic models) random ids of similar
    lengths."""
    if tokenizer is not None:
        return [tokenizer(p["prompt"], return_tensors="pt").input_ids.to(device) for p in prompts]
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(3, vocab_size, (1, 32 + 8 * (i % 8)), generator=g).to(device)
        for i in range(len(prompts))
    ]


def _batches(prompt_ids: list[torch.Tensor], batch_size: int, pad_id: int):
    """Left-padded batches of ``batch_size`` prompts (the last one may be smaller)."""
    for i in range(0, len(prompt_ids), batch_size):
        group = prompt_ids[i : i + batch_size]
        P = max(p.shape[1] for p in group)
        ids = torch.full((len(group), P), pad_id, dtype=torch.long, device=group[0].device)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(group):
            ids[r, P - p.shape[1] :] = p[0]
            mask[r, P - p.shape[1] :] = 1
        yield ids, (mask if batch_size > 1 else None)


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


# -- tokens/s --------------------------------------------------------------------------------------
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
    acceptance_rate: float | None = None  # eedecode modes that draft
    mean_tokens_per_round: float | None = None
    mean_drafts_per_round: float | None = None
    extra: dict = field(default_factory=dict)  # the method's other settings


def packed_in_place(model):
    """A copy of the model with its weights packed in place (:mod:`eedecode.model.packing`), for
    the baseline that shows what that layout alone gives HF's own forward; the model itself off a
    CPU (nothing is packed there)."""
    if next(model.parameters()).device.type != "cpu":
        return model
    packed = copy.deepcopy(model)
    for layer in packed.model.layers:
        pack_layer(layer)
    pack_head(packed.lm_head, packed.model.embed_tokens)
    return packed


def weights_layout(model) -> str:
    """ "packed" if the model's layers were packed in place (pack="in_place"), else "as loaded"."""
    return "packed" if any(packed_layer(layer) for layer in model.model.layers) else "as loaded"


def time_methods(
    model,
    methods,
    prompt_ids,
    *,
    batch_size=1,
    max_new_tokens=64,
    spec: Speculation | None = None,
    warmup=1,
    repeats=1,
    progress=None,
    packed_model=None,
) -> dict[str, MethodResult]:
    """Decode every prompt (in batches of ``batch_size``) with every method (names), ``repeats``
    times, the methods taking turns on each batch. ``identical_to_hf`` counts the rows whose
    output equals HF generate's, when ``"hf"`` is among the methods. Methods that run on the
    weights packed in place get ``packed_model`` (:func:`packed_in_place`, made when needed)."""
    spec = spec or Speculation()
    chosen = resolve_methods(methods)
    if packed_model is None and any(m.packed_in_place for m in chosen):
        packed_model = packed_in_place(model)
    if batch_size > 1 and any(m.batch_one_only for m in chosen):
        one = [m.name for m in chosen if m.batch_one_only]
        raise ValueError(f"methods: {', '.join(one)} run at batch size 1 only, asked for {batch_size}")
    eos = model.generation_config.eos_token_id
    pad = pad_token_id(model)
    batches = list(_batches(prompt_ids, batch_size, 0 if pad is None else pad))
    for ids, mask in batches[:warmup]:
        for m in chosen:
            m.prepare(packed_model if m.packed_in_place else model, ids, mask, max_new_tokens, spec)
            m.run(packed_model if m.packed_in_place else model, ids, mask, max_new_tokens, spec)
    names = [m.name for m in chosen]
    rates = {n: [] for n in names}  # one entry per (repeat, batch), aligned across methods
    stats = {n: [] for n in names}
    outputs = {n: [] for n in names}  # of the first repeat, with the prompt length
    new_tokens = dict.fromkeys(names, 0)
    for turn, (rep, (ids, mask)) in enumerate((r, b) for r in range(repeats) for b in batches):
        for m in chosen[turn % len(chosen) :] + chosen[: turn % len(chosen)]:
            m.prepare(packed_model if m.packed_in_place else model, ids, mask, max_new_tokens, spec)
            sync(ids.device)
            t0 = steps.clock()
            seq, st = m.run(packed_model if m.packed_in_place else model, ids, mask, max_new_tokens, spec)
            sync(ids.device)
            dt = steps.clock() - t0
            new = _count_new(seq, ids.shape[1], eos, pad)
            rates[m.name].append(new / dt)
            new_tokens[m.name] += new
            if rep == 0:
                outputs[m.name].append((seq, ids.shape[1]))
                if st is not None:
                    stats[m.name].append(st)
            if progress is not None:
                progress.update(1)
    return {
        m.name: _result(m, batch_size, spec, rates, new_tokens[m.name] // repeats, stats[m.name], outputs)
        for m in chosen
    }


def _result(method, batch_size, spec, rates, new_tokens, stats, outputs) -> MethodResult:
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
            setattr(r, key, median([a / b for a, b in zip(rates[name], rates[base], strict=True)]))
    drafted = sum(st.drafted_tokens for st in stats)
    if drafted:  # statistics of a mode that drafts
        accepted = sum(st.accepted_tokens for st in stats)
        row_rounds = sum(st.row_rounds for st in stats)
        r.acceptance_rate = accepted / drafted
        r.mean_tokens_per_round = (accepted + row_rounds) / row_rounds
        r.mean_drafts_per_round = drafted / row_rounds
    r.lossless = method.lossless
    r.mean_exit_layer = _mean_exit_layer(stats, r.exit_layer)
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


def _mean_exit_layer(stats, exit_layer: int | None) -> float | None:
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


# -- a whole run -----------------------------------------------------------------------------------
def run_measurements(
    model,
    tokenizer,
    prompts: list[dict],
    *,
    methods,
    spec: Speculation,
    max_new_tokens: int = 64,
    batch_sizes=(1,),
    warmup: int = 1,
    repeats: int = 1,
    show_progress: bool = True,
) -> dict:
    """Every method (names) at batch size 1, and those that batch at the other batch sizes, each
    batch size interleaved (:func:`time_methods`); then the step costs. Returns the measured part
    of the record: ``settings``, ``step_costs`` and ``results``."""
    from tqdm.auto import tqdm

    num_layers = model.config.num_hidden_layers
    chosen = resolve_methods(methods)
    _check_run(prompts, spec, num_layers, chosen, max_new_tokens, batch_sizes, warmup, repeats)
    device = next(model.parameters()).device
    prompt_ids = encode_prompts(tokenizer, prompts, model.config.vocab_size, device)
    plan = {1: [m.name for m in chosen]}  # batch size 1 always runs: the ideal is for it
    for b in batch_sizes:
        if b != 1:
            plan[b] = [m.name for m in chosen if not m.batch_one_only]
    total = repeats * sum(len(ms) * -(-len(prompt_ids) // b) for b, ms in plan.items())
    results = []
    hf_weights = weights_layout(model)
    packed_model = packed_in_place(model) if any(m.packed_in_place for m in chosen) else None
    with tqdm(total=total, desc="bench", disable=not show_progress, leave=False) as bar:
        for b, ms in plan.items():
            bar.set_postfix_str(f"batch {b}")
            kw = dict(batch_size=b, max_new_tokens=max_new_tokens, warmup=warmup, repeats=repeats)
            timed = time_methods(
                model, ms, prompt_ids, spec=spec, progress=bar, packed_model=packed_model, **kw
            )
            results += timed.values()
    del packed_model
    settings = {
        "exit_layer": spec.exit_layer,
        "num_speculations": spec.num_speculations,
        "draft_confidence_threshold": spec.confidence_threshold,
        "prompt_lookup_num_tokens": spec.prompt_lookup_num_tokens,
        "max_new_tokens": max_new_tokens,
        "num_prompts": len(prompt_ids),
        "batch_sizes": list(batch_sizes),
        "warmup": warmup,
        "repeats": repeats,
        "num_layers": num_layers,
        "hf_weights": hf_weights,  # what HF generate ran on: "as loaded" (a copy) or "packed"
    }
    costs = measure_step_costs(model, prompt_ids[0], spec.exit_layer, spec.num_speculations)
    return {"settings": settings, "step_costs": costs, "results": [asdict(r) for r in results]}


def _check_run(prompts, spec, num_layers, chosen, max_new_tokens, batch_sizes, warmup, repeats) -> None:
    if not prompts:
        raise ValueError("prompts: need at least one prompt")
    spec.validate(num_layers)  # the step costs need an exit layer and a draft length
    for m in chosen:
        m.validate(spec, num_layers)
    check_count("max_new_tokens", max_new_tokens)
    check_count("warmup", warmup, minimum=0)
    check_count("repeats", repeats)
    if not batch_sizes:
        raise ValueError("batch_sizes: need at least one batch size")
    for b in batch_sizes:
        check_count("batch_sizes", b)
