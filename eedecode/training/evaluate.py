"""Held-out evaluation during and after training: per exit depth, the next-token loss, top-1
accuracy and top-1 agreement with the last layer (what self-speculative decoding's acceptance
rests on), through :func:`eedecode.study.layer_stats`."""

from __future__ import annotations

import torch

from ..model.layer_stats import layer_stats
from ..model.runner import ModelRunner

Tensor = torch.Tensor


def evaluate_layers(
    runner: ModelRunner, blocks: Tensor, batch_size: int = 16
) -> dict[str, list[float] | int]:
    """Per exit depth ``d = 1..L`` on the token blocks ``[N, T]``: mean next-token loss, top-1
    accuracy, and top-1 agreement with the last layer's argmax, over the ``N * (T - 1)`` predicted
    positions (index ``d - 1`` of each list), rounded to 4 decimals. The model is evaluated in eval
    mode (no layer dropout) and left in the mode it was in."""
    model = runner.model
    was_training = model.training
    model.eval()
    try:
        stats = layer_stats(runner, blocks, range(1, runner.num_layers + 1), batch_size=batch_size)
    finally:
        model.train(was_training)
    return {
        "tokens": stats["tokens"],
        **{key: [round(x, 4) for x in stats[key]] for key in ("loss", "accuracy", "agreement")},
    }


def format_layer_table(stats: dict) -> str:
    rows = ["depth  loss    acc     agree"]
    for d, (loss, acc, agree) in enumerate(
        zip(stats["loss"], stats["accuracy"], stats["agreement"], strict=True), 1
    ):
        rows.append(f"{d:>5}  {loss:6.3f}  {acc:6.3f}  {agree:6.3f}")
    return "\n".join(rows)
