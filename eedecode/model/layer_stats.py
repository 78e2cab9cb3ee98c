"""Teacher-forced per-layer statistics of the exit head: how well each layer's state, put
through the model's own final norm and LM head (the *logit lens*), predicts the next token and
agrees with the last layer.

The pass streams: layers run one at a time through the model runner (no cache, one causal block
per row), and per layer only ``O(tokens)`` numbers are kept — never ``[layers, tokens, vocab]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .runner import ModelRunner

Tensor = torch.Tensor


@torch.no_grad()
def layer_stats(
    runner: ModelRunner,
    blocks: Tensor,
    exit_layers: Sequence[int] | None = None,
    *,
    batch_size: int = 16,
    progress=None,
) -> dict:
    """Per exit depth ``d`` (the state after ``d`` layers; default ``1..L``) over token blocks
    ``[N, T]``, at the ``N * (T - 1)`` positions that have a next token: mean next-token loss,
    top-1 accuracy and top-1 agreement with the last layer. Returns
    ``{"tokens": n, "exit_layers": [d...], "loss": [...], "accuracy": [...], "agreement": [...]}``.
    ``progress``: an object with ``update(n)`` (a tqdm bar), advanced once per block batch."""
    L = runner.num_layers
    depths = sorted(set(exit_layers or range(1, L + 1)))
    if not depths or depths[0] < 1 or depths[-1] > L:
        raise ValueError(f"exit_layers: must lie in 1..{L}, got {list(exit_layers or [])}")
    loss = torch.zeros(len(depths), dtype=torch.float64)
    hits = torch.zeros(len(depths), dtype=torch.long)
    agree = torch.zeros(len(depths), dtype=torch.long)
    count = 0
    for start in range(0, blocks.shape[0], batch_size):
        chunk = blocks[start : start + batch_size].to(runner.device)
        labels = chunk[:, 1:]  # [b, T-1]
        h = runner.embed(chunk[:, :-1])
        top1 = {}
        for i in range(L):
            h = runner.run_layers(h, i, i + 1)
            if i + 1 in depths:
                stats = runner.exit_head(h, stats={"argmax"}, token_ids=labels)
                j = depths.index(i + 1)
                loss[j] -= stats.token_logprob.double().sum().cpu()
                hits[j] += (stats.argmax == labels).sum().cpu()
                top1[j] = stats.argmax
        final = top1[len(depths) - 1] if depths[-1] == L else runner.exit_head(h, stats={"argmax"}).argmax
        for j, a in top1.items():
            agree[j] += (a == final).sum().cpu()
        count += labels.numel()
        if progress is not None:
            progress.update(1)
    n = max(count, 1)
    return {
        "tokens": count,
        "exit_layers": depths,
        "loss": (loss / n).tolist(),
        "accuracy": (hits.double() / n).tolist(),
        "agreement": (agree.double() / n).tolist(),
    }
