"""The agreement study: how much the middle layers of a model already know, without joint training,
and what that means for self-speculative decoding.

Questions from "Early Exit Is a Natural Capability in Transformer-based Models: An Empirical Study
on Early Exit without Joint Optimization" (arXiv 2412.01455): do intermediate layers produce the
final layer's token before the end, how early, can confidence / entropy / patience gates find that
layer, how do word-initial and continuation pieces differ, what do the sub-layers show. Confidence
categories after the early-exit survey arXiv 2501.07670 (Figure 2); tuned lens after arXiv
2303.08112; speed after LayerSkip (arXiv 2404.16710) and Leviathan et al. 2023.

:func:`agreement_study` takes a model, its tokenizer and texts; :func:`study_blocks` takes token
blocks. Both return plain data (dicts and lists of numbers), which :mod:`eedecode.study.report`
writes as JSON, CSV, plots and a markdown summary. Every measure carries a bootstrap interval over
the blocks (:mod:`eedecode.study.bootstrap`, ``*_ci`` keys), and the paper's claims are settled
only by their intervals (:mod:`eedecode.study.claims`).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field

import torch

from ..model.runner import ModelRunner
from .analysis import analyse, final_layer, held_out_gain, sublayer_table
from .bootstrap import BootstrapConfig, Intervals, blocks_hash
from .claims import paper_claims
from .collect import collect, parse_depths
from .data import encode_stream, load_texts, split_blocks, to_blocks
from .measures import piece_table
from .speed import DRAFT_LENGTHS, measure_costs, speed_exits, speed_table
from .tuned_lens import TunedLens, TunedLensConfig, fit_tuned_lens

Tensor = torch.Tensor
COST_PROMPT_TOKENS = 128  # context length at which draft and verification steps are timed


@dataclass(frozen=True)
class StudyConfig:
    max_tokens: int = 8192  # predicted positions studied (the evaluation split)
    block_len: int = 256  # tokens per teacher-forced block
    batch_tokens: int = 1024  # tokens per forward batch
    layers: tuple[int, ...] | None = None  # studied exit depths (None: all; the last is always in)
    lens: str = "logit"  # "logit" | "tuned"
    translators: str | None = None  # a saved tuned lens, used instead of training one
    train_tokens: int | None = None  # tuned lens training positions (None: max_tokens)
    tuned: TunedLensConfig = field(default_factory=TunedLensConfig)
    sublayer_tokens: int = 1024  # positions on which the sub-layer points are measured
    draft_lengths: tuple[int, ...] = DRAFT_LENGTHS
    speed_exits: int = 10  # at most this many exit layers in the speed table
    cost_reps: int = 10  # timing repetitions per (E, k) cell; 0: no timing, no ideal speed-up
    cost_calls: int = 1  # timings per cell; each step keeps its fastest median (see speed.measure_costs)
    confident_prob: float = 0.5  # the confidence categories' probability threshold
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)  # intervals over blocks

    def validate(self) -> None:
        self.bootstrap.validate()
        if self.lens not in ("logit", "tuned"):
            raise ValueError(f"lens: must be 'logit' or 'tuned', got {self.lens!r}")
        for name in ("max_tokens", "block_len", "batch_tokens"):
            if getattr(self, name) < (2 if name == "block_len" else 1):
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if any(k < 1 for k in self.draft_lengths):
            raise ValueError(f"draft_lengths: must be >= 1, got {self.draft_lengths}")


class _Bars:
    """``progress(stage, total)`` -> an object with ``update(n)`` and ``close()``, or nothing."""

    def __init__(self, progress):
        self.progress = progress

    def __call__(self, stage: str, total: int):
        return self.progress(stage, total) if self.progress is not None else None

    @staticmethod
    def close(bar) -> None:
        if bar is not None and hasattr(bar, "close"):
            bar.close()


def agreement_study(model, tokenizer, sources=None, config: StudyConfig = StudyConfig(), **kw) -> dict:
    """The study of ``model`` on texts (files or the built-in ``code`` / ``prose``; default
    ``code``). Keywords as :func:`study_blocks`."""
    config.validate()
    texts = load_texts(sources)
    blocks = to_blocks(encode_stream(tokenizer, texts), config.block_len)
    # the training split is set aside whenever the tuned lens is studied, so that translators
    # loaded from an earlier run are evaluated on the same held-out blocks
    train_tokens = (config.train_tokens or config.max_tokens) if config.lens == "tuned" else 0
    train_blocks, eval_blocks = split_blocks(blocks, config.max_tokens, train_tokens)
    result = study_blocks(model, eval_blocks, train_blocks, config, tokenizer=tokenizer, **kw)
    result["data"].update(
        sources=list(sources or ["code"]), texts=len(texts), text_names=[t.name for t in texts][:200]
    )
    return result


def study_blocks(
    model,
    eval_blocks: Tensor,
    train_blocks: Tensor | None = None,
    config: StudyConfig = StudyConfig(),
    *,
    tokenizer=None,
    model_name: str = "",
    save_translators=None,
    progress=None,
) -> dict:
    """The study on token blocks ``[N, T]``. ``train_blocks`` train the tuned lens (``lens="tuned"``
    without ``translators``), saved to ``save_translators`` when given. ``progress(stage, total)``
    may return a bar with ``update(n)``. Without a tokenizer there is no sub-word analysis."""
    config.validate()
    runner, bars, timings = ModelRunner(model), _Bars(progress), {}
    machine = machine_record()
    depths = parse_depths(config.layers, runner.num_layers)
    lenses, tuned_record = {"logit": None}, None
    if config.lens == "tuned":
        t0 = time.perf_counter()
        lens, tuned_record = _tuned_lens(
            runner, train_blocks, depths, config, bars, model_name, save_translators
        )
        lenses["tuned"] = lens
        timings["tuned_lens_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    bar = bars(
        "layers", -(-eval_blocks.shape[0] // max(1, config.batch_tokens // (eval_blocks.shape[1] - 1)))
    )
    records = collect(
        runner,
        eval_blocks,
        depths,
        lenses=lenses,
        sublayer_tokens=config.sublayer_tokens,
        batch_tokens=config.batch_tokens,
        progress=bar,
    )
    bars.close(bar)
    timings["pass_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    iv = Intervals(config.bootstrap, eval_blocks.shape[0], blocks_hash(eval_blocks))
    pieces = piece_table(tokenizer, runner.vocab_size) if tokenizer is not None else None
    result = {
        "model": _model_record(model, model_name),
        "data": {
            "tokens": records.labels.numel(),
            "blocks": eval_blocks.shape[0],
            "block_len": eval_blocks.shape[1],
        },
        "config": asdict(config),
        "depths": depths,
        "lenses": {name: analyse(records, name, pieces, config.confident_prob, iv) for name in lenses},
        "final_layer": final_layer(records, iv),
        "sublayers": sublayer_table(records, iv),
        "tuned_lens": tuned_record,
    }
    result["data"]["train_tokens"] = (
        0 if train_blocks is None else train_blocks.shape[0] * (train_blocks.shape[1] - 1)
    )
    if "tuned" in lenses:
        result["tuned_lens"]["held_out"] = held_out_gain(records, result["lenses"], iv)
    result["claims"] = paper_claims(result, iv)
    timings["measures_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result["speed"] = _speed(model, records, eval_blocks, config, bars, iv)
    timings["costs_s"] = time.perf_counter() - t0
    result["bootstrap"] = iv.record()
    result["timings"] = timings
    result["machine"] = machine | {"load_after": list(os.getloadavg())}
    return result


def machine_record() -> dict:
    """Where the study ran: platform, cores, torch's threads and versions, and the load average
    (1, 5, 15 minutes) when it started; ``load_after`` is added at the end."""
    import transformers

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_before": list(os.getloadavg()),
    }


def _tuned_lens(runner, train_blocks, depths, config, bars, model_name, save_to):
    if config.translators is not None:
        lens = TunedLens.load(config.translators, device=runner.device)
        return lens, {"loaded_from": str(config.translators), "depths": lens.depths}
    if train_blocks is None or train_blocks.numel() == 0:
        raise ValueError("lens: a tuned lens needs training blocks (or translators to load)")
    bar = bars("tuned lens", config.tuned.steps)
    lens, record = fit_tuned_lens(runner, train_blocks, depths, config.tuned, progress=bar)
    bars.close(bar)
    if save_to is not None:
        record["file"] = str(lens.save(save_to, model=model_name, training=record))
    return lens, record


def _speed(model, records, eval_blocks: Tensor, config: StudyConfig, bars, iv: Intervals) -> dict:
    exits = speed_exits(records.depths, records.num_layers, config.speed_exits)
    costs = None
    if config.cost_reps > 0 and exits:
        bar = bars("step costs", len(exits) * len(config.draft_lengths))
        prompt = eval_blocks[:1, : min(COST_PROMPT_TOKENS, eval_blocks.shape[1])].to(model.device)
        costs = measure_costs(
            model, prompt, exits, config.draft_lengths, config.cost_reps, config.cost_calls, progress=bar
        )
        bars.close(bar)
    tables = {}
    for name, rec in records.lenses.items():
        agree = rec.agree(records.final_top1)
        tables[name] = speed_table(
            agree, records.depths, records.positions, exits, config.draft_lengths, costs, iv, name
        )
    cells = [{"exit_layer": e, "draft_length": k, **c} for (e, k), c in (costs or {}).items()]
    return {
        "exit_layers": exits,
        "draft_lengths": list(config.draft_lengths),
        "tables": tables,
        "costs": cells,
    }


def _model_record(model, name: str) -> dict:
    cfg = model.config
    return {
        "name": name,
        "architecture": type(model).__name__,
        "num_layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }
