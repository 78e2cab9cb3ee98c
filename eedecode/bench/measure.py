"""Measuring: tokens/s of every method on a prompt set, paired speed-ups, latency (time to first
token, per-token percentiles: :mod:`.latency`), each method's share of the memory-bandwidth floor
and decoding statistics (the cost of one draft step and one verification pass:
:mod:`eedecode.bench.steps`; a result from its runs: :mod:`.results`).

Methods take turns on every batch, in an order that rotates, so that a drift of the machine's
speed touches them alike; a speed-up is the median of *paired* ratios (two methods on the same
batch in the same turn). Warm-up is excluded and clocks are read after a device synchronisation.
Nothing here formats, derives or asserts a time (:mod:`eedecode.bench.report` does the first two).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..drafting.lookup import forget_calls
from ..kernels.cpu_matmul import onednn_from_text
from ..model.memory import memory_of
from ..model.packing import pack_head, pack_layer, packed_layer
from . import steps
from .latency import TokenClock, summarize
from .methods import Eedecode, Speculation, pad_token_id, resolve_methods
from .profile import ReadBandwidth
from .results import MethodResult, _count_new, method_result
from .steps import measure_step_costs, median, sync

__all__ = ["ReadBandwidth", "MethodResult", "_count_new", "run_measurements", "time_methods"]

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


# -- tokens/s --------------------------------------------------------------------------------------
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
    between_turns=None,
) -> dict[str, MethodResult]:
    """Decode every prompt (in batches of ``batch_size``) with every method (names or
    :class:`~eedecode.bench.method.Method` objects), ``repeats`` times, the methods taking turns on
    each batch. ``identical_to_hf`` counts the rows whose output equals HF generate's, when
    ``"hf"`` is among the methods. Methods that run on the weights packed in place get
    ``packed_model`` (:func:`packed_in_place`, made when needed). At batch size 1 every timed run
    hands its tokens to a :class:`~.latency.TokenClock` (the latency columns).
    ``between_turns()`` is called after every batch's turn (untimed)."""
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
    _forget(model, packed_model)  # earlier batch sizes' calls of these prompts (lookup_memory)
    for ids, mask in batches[:warmup]:  # the timed path, streamer included
        for m in chosen:
            on = packed_model if m.packed_in_place else model
            m.prepare(on, ids, mask, max_new_tokens, spec)
            m.run(on, ids, mask, max_new_tokens, spec, streamer=TokenClock() if batch_size == 1 else None)
    names = [m.name for m in chosen]
    rates = {n: [] for n in names}  # one entry per (repeat, batch), aligned across methods
    stats = {n: [] for n in names}
    clocks = {n: [] for n in names}
    outputs = {n: [] for n in names}  # of the first repeat, with the prompt length
    new_tokens = dict.fromkeys(names, 0)
    for turn, (rep, (ids, mask)) in enumerate((r, b) for r in range(repeats) for b in batches):
        if turn % len(batches) == 0:  # a repeat (and the warm-up) must not lend its calls' text
            _forget(model, packed_model)  # to later ones: lookup_memory would draft it back
        for m in chosen[turn % len(chosen) :] + chosen[: turn % len(chosen)]:
            on = packed_model if m.packed_in_place else model
            m.prepare(on, ids, mask, max_new_tokens, spec)
            clock = TokenClock() if batch_size == 1 else None
            sync(ids.device)
            t0 = steps.clock()
            if clock is not None:
                clock.start = clock.clock()
            seq, st = m.run(on, ids, mask, max_new_tokens, spec, streamer=clock)
            sync(ids.device)
            dt = steps.clock() - t0
            new = _count_new(seq, ids.shape[1], eos, pad)
            rates[m.name].append(new / dt)
            new_tokens[m.name] += new
            if clock is not None:
                clocks[m.name].append(clock)
            if rep == 0:
                outputs[m.name].append((seq, ids.shape[1]))
                if st is not None:
                    stats[m.name].append(st)
            if progress is not None:
                progress.update(1)
        if between_turns is not None:
            between_turns()
    results = {}
    for m in chosen:
        r = method_result(
            m, batch_size, spec, rates, new_tokens[m.name] // repeats, stats[m.name], outputs, repeats
        )
        r.latency = summarize(clocks[m.name])
        results[m.name] = r
    return results


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
    floor: bool = False,
    source=None,
) -> dict:
    """Every method (names) at batch size 1, and those that batch at the other batch sizes, each
    batch size interleaved (:func:`time_methods`); then the step costs. Returns the measured part
    of the record: ``settings``, ``step_costs``, ``results`` and ``skipped`` (methods that cannot
    run here, with the reason). ``floor``: sample the memory bandwidth between turns (on a CPU)
    and give every result its share of the bandwidth floor. ``source``: what the model was loaded
    from (methods that rebuild it elsewhere read it: llama.cpp)."""
    from tqdm.auto import tqdm

    num_layers = model.config.num_hidden_layers
    chosen = resolve_methods(methods)
    skipped = {m.name: why for m in chosen if (why := m.unavailable()) is not None}
    chosen = [m for m in chosen if m.name not in skipped]
    if not chosen:
        raise ValueError(f"methods: none can run here ({'; '.join(f'{n}: {w}' for n, w in skipped.items())})")
    device = next(model.parameters()).device
    _check_run(prompts, spec, num_layers, chosen, max_new_tokens, batch_sizes, warmup, repeats, device)
    prompt_ids = encode_prompts(tokenizer, prompts, model.config.vocab_size, device)
    plan = {1: list(chosen)}  # batch size 1 always runs: the ideal is for it
    for b in batch_sizes:
        if b != 1:
            plan[b] = [m for m in chosen if not m.batch_one_only]
    total = repeats * sum(len(ms) * -(-len(prompt_ids) // b) for b, ms in plan.items())
    results = []
    hf_weights = weights_layout(model)
    packed_model = packed_in_place(model) if any(m.packed_in_place for m in chosen) else None
    copier = ReadBandwidth() if floor and device.type == "cpu" else None  # >= 256 MiB
    bandwidths: list[float] = []

    def sample():
        bandwidths.append(copier.sample())

    try:
        for m in chosen:
            m.setup(model, tokenizer, source)
        with tqdm(total=total, desc="bench", disable=not show_progress, leave=False) as bar:
            for b, ms in plan.items():
                bar.set_postfix_str(f"batch {b}")
                kw = dict(batch_size=b, max_new_tokens=max_new_tokens, warmup=warmup, repeats=repeats)
                kw.update(progress=bar, packed_model=packed_model, between_turns=sample if copier else None)
                results += time_methods(model, ms, prompt_ids, spec=spec, **kw).values()
        if bandwidths:
            nbytes = {m.name: m.weight_bytes(model) for m in chosen}
            for r in results:
                r.weight_bytes = nbytes[r.method]
                r.floor_share = r.tokens_per_s * r.weight_bytes / (r.batch_size * median(bandwidths))
    finally:
        for m in chosen:
            m.close()
    del packed_model
    copier = None  # its matrix goes before the step costs
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
    if bandwidths:
        settings["bandwidth_bytes_per_s"] = median(bandwidths)  # read rate, sampled between turns
        settings["bandwidth_samples"] = len(bandwidths)
    costs = measure_step_costs(model, prompt_ids[0], spec.exit_layer, spec.num_speculations)
    # from how many rows oneDNN served products, per thread count (empty: nothing was measured, as
    # off a CPU or when no block of 2 to 16 rows ran; "never": MKL throughout)
    settings["onednn_from_rows"] = {
        t: onednn_from_text(n) for t, n in memory_of(model).onednn_from_rows.items()
    }
    results = [asdict(r) for r in results]
    return {"settings": settings, "step_costs": costs, "results": results, "skipped": skipped}


def _forget(*models) -> None:
    """Drop the models' memories of earlier calls (``lookup_memory``)."""
    for on in models:
        if on is not None:
            forget_calls(on)


def _check_run(
    prompts, spec, num_layers, chosen, max_new_tokens, batch_sizes, warmup, repeats, device=None
) -> None:
    if not prompts:
        raise ValueError("prompts: need at least one prompt")
    spec.validate(num_layers)  # the step costs need an exit layer and a draft length
    for m in chosen:
        if isinstance(m, Eedecode):
            m.validate(spec, num_layers, device)
        else:
            m.validate(spec, num_layers)
    remembering = [m.name for m in chosen if getattr(m, "fixed", {}).get("lookup_memory")]
    if len(remembering) > 1:
        raise ValueError(
            "methods: at most one method with lookup_memory=True per run (they would share the "
            f"model's memory of earlier calls and draft each other's outputs), got {', '.join(remembering)}"
        )
    check_count("max_new_tokens", max_new_tokens)
    check_count("warmup", warmup, minimum=0)
    check_count("repeats", repeats)
    if not batch_sizes:
        raise ValueError("batch_sizes: need at least one batch size")
    for b in batch_sizes:
        check_count("batch_sizes", b)
