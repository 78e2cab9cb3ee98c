"""The training run: a small ``LlamaForCausalLM`` built for the tokenizer, AdamW with linear
warm-up and cosine decay, and the optimisation loop, bounded by a step count and a time budget.

Each step draws random windows of the training stream and minimises the loss of
:mod:`eedecode.training.losses` (next-token loss on the last layer for ``plain``, LayerSkip's
early-exit loss and layer dropout for ``early_exit``; Elhoushi et al. 2024, arXiv 2404.16710),
with the layers run by one :class:`~eedecode.model.runner.ModelRunner` built for the model. The final
held-out evaluation is taken on the weights rounded as they are saved.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from ..model.loading import resolve_device
from ..model.runner import ModelRunner
from .checkpoint import machine_info, recommend_decoding, save_checkpoint
from .config import TrainConfig
from .data import prepare_data, spread_blocks
from .evaluate import evaluate_layers, format_layer_table
from .losses import early_exit_loss, exit_loss_weights, layer_dropout_rates

Tensor = torch.Tensor


def build_model(cfg: TrainConfig, tokenizer):
    """A randomly initialised ``LlamaForCausalLM`` of ``cfg``'s shape for ``tokenizer``'s vocabulary
    and special tokens."""
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


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr`` as
    ``progress`` (the larger of the step and time-budget fractions used) goes from 0 to 1."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    ratio = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * ratio


def make_optimizer(model, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, with weight decay on the matrices only (not on norms and biases)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")


@dataclass(frozen=True)
class TrainResult:
    model: torch.nn.Module  # in eval mode, weights rounded to ``save_dtype`` (held in fp32)
    tokenizer: object
    log: dict


def train(cfg: TrainConfig) -> TrainResult:
    """Trains one variant and saves the checkpoint, tokenizer, ``training_log.json`` and the
    recommended decoding settings (``eedecode.json``) to ``cfg.output_dir``."""
    t_start = time.time()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    tokenizer, train_ids, eval_blocks, data = prepare_data(cfg)
    model = build_model(cfg, tokenizer).to(device).train()
    runner = ModelRunner(model, pack="none")  # the weights change as it trains: no packed copy
    run = _train_loop(cfg, runner, train_ids, spread_blocks(eval_blocks, cfg.eval_blocks_quick), device)
    # evaluate the weights as they will be saved
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(getattr(torch, cfg.save_dtype)))
    final = evaluate_layers(runner, spread_blocks(eval_blocks, cfg.eval_blocks), cfg.eval_batch_size)
    log = {
        "config": dataclasses.asdict(cfg),
        "data": data,
        "parameters": sum(p.numel() for p in model.parameters()),
        **run,
        "wall_seconds": round(time.time() - t_start, 1),
        "final_eval": final,
        "machine": machine_info(device),
    }
    settings = recommend_decoding(final["agreement"])
    save_checkpoint(model, tokenizer, cfg.output_dir, cfg.save_dtype, log, settings)
    model.float().eval()
    if cfg.progress:
        print(f"saved {cfg.output_dir}: {run['steps']} steps in {run['train_seconds']:.0f} s")
        print(format_layer_table(final))
        E, k = settings["exit_layer"], settings["num_speculations"]
        print(f"recommended (eedecode.json): exit_layer={E} num_speculations={k}, {settings['source']}")
    return TrainResult(model, tokenizer, log)


def _train_loop(
    cfg: TrainConfig, runner: ModelRunner, train_ids: Tensor, quick_eval: Tensor, device: torch.device
) -> dict:
    """The optimisation loop: ``max_steps`` steps or ``time_budget_min``, whichever ends first."""
    from tqdm.auto import tqdm

    model = runner.model
    optimizer = make_optimizer(model, cfg, device)
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
                runner, batch, weights, dropout, gen, cfg.exit_distill, cfg.exit_fraction
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
            evals.append({"step": step, **evaluate_layers(runner, quick_eval, cfg.eval_batch_size)})
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
