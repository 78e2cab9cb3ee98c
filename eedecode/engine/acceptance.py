"""Token choice and acceptance rules: pure functions of tensors, batched, no host synchronisation.

* Greedy acceptance (LayerSkip, Elhoushi et al. 2024): the longest prefix on which the drafts equal
  the full model's argmax, plus one token from the full model (the correction, or a bonus token
  when every draft matched).
* Speculative sampling (Leviathan et al. 2023; Chen et al. 2023): accept draft ``x_i ~ q_i`` with
  probability ``min(1, p_i(x_i) / q_i(x_i))``; at the first rejection draw from
  ``normalize(max(0, p_i - q_i))``; when every draft is accepted draw the bonus token from
  ``p_k``. ``p`` and ``q`` are the target and draft distributions *after* the logits processors
  and warpers (temperature, top-k, top-p, ...: Hugging Face's own, see :mod:`eedecode.engine.processors`).
  The emitted tokens then follow ``p`` exactly.

Shapes: ``B`` rows, ``k`` drafts, ``V`` vocabulary. Drafts ``[B, k]``; draft distributions ``q``
``[B, k, V]``; target distributions ``p`` ``[B, k + 1, V]`` (one more: the bonus position).
Acceptance rules return ``tokens [B, k + 1]`` (row ``b`` emits ``tokens[b, :num_emitted[b]]``;
the rest is filler) and ``num_emitted [B]`` (between 1 and ``k + 1``).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor
_TINY = 1e-30  # guards a division whose result is discarded where the divisor is 0


def sample(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One draw per row from ``probs`` ``[..., V]`` -> ``[...]`` int64."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def _draft_mask(drafts: Tensor, num_drafts: Tensor | None) -> Tensor | None:
    """``[B, k]`` True where row b has a draft (``j < num_drafts[b]``); None when every row has k."""
    if num_drafts is None:
        return None
    return torch.arange(drafts.shape[1], device=drafts.device)[None, :] < num_drafts[:, None]


def greedy_accept(
    drafts: Tensor, target_logits: Tensor, num_drafts: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Greedy acceptance.

    drafts: ``[B, k]``; target_logits: ``[B, k + 1, V]``; ``num_drafts`` ``[B]``: row b proposed
    only its first ``num_drafts[b]`` drafts (the rest is filler, never accepted). The emitted
    tokens are the target's own argmax tokens (on the accepted prefix they equal the drafts), so
    ``tokens`` is simply the target argmax and only the count needs computing.
    """
    target = target_logits.argmax(-1)  # [B, k+1]
    k = drafts.shape[1]
    agree = drafts == target[:, :k]
    mask = _draft_mask(drafts, num_drafts)
    if mask is not None:
        agree &= mask
    matched = agree.long().cumprod(1)  # [B, k]: 1 while the prefix agrees
    return target, matched.sum(1) + 1


def speculative_accept(
    drafts: Tensor,
    q: Tensor,
    p: Tensor,
    generator: torch.Generator | None,
    num_drafts: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Speculative sampling acceptance (Leviathan et al. 2023, Algorithm 1), batched.

    drafts ``[B, k]`` drawn from ``q`` ``[B, k, V]``; target ``p`` ``[B, k + 1, V]``;
    ``num_drafts`` ``[B]``: row b proposed only its first ``num_drafts[b]`` drafts (after them,
    its next token is drawn from p, like a bonus token).
    Uniforms are drawn in float64: a float32 uniform can be exactly 0, which would accept a draft
    the target gives probability 0.
    """
    B, k = drafts.shape
    p_x = p[:, :k].gather(-1, drafts[..., None])[..., 0].double()  # [B, k]
    q_x = q.gather(-1, drafts[..., None])[..., 0].double()  # [B, k]
    u = torch.rand(B, k, dtype=torch.float64, device=p.device, generator=generator)
    ok = u * q_x < p_x  # u < p/q without dividing by q
    mask = _draft_mask(drafts, num_drafts)
    if mask is not None:
        ok &= mask
    n = ok.long().cumprod(1).sum(1)  # [B] accepted drafts
    # Distribution of the token after the accepted prefix: the residual max(0, p - q) at a
    # rejection, p itself at the bonus position (or past the row's last draft).
    residual = (p[:, :k] - q).clamp_min(0)
    if mask is not None:
        residual = torch.where(mask[..., None], residual, p[:, :k])
    residual = torch.cat([residual, p[:, k:]], dim=1)  # [B, k+1, V]
    last = residual.gather(1, n[:, None, None].expand(B, 1, p.shape[-1]))[:, 0]  # [B, V]
    total = last.sum(-1, keepdim=True)
    # p == q at the rejected position has probability zero of being rejected; guard the division.
    p_n = p.gather(1, n[:, None, None].expand(B, 1, p.shape[-1]))[:, 0]
    last = torch.where(total > 0, last / total.clamp_min(_TINY), p_n)
    extra = sample(last, generator)  # [B]
    tokens = torch.cat([drafts, extra[:, None]], dim=1)  # [B, k+1]; past the prefix: filler
    tokens = tokens.scatter(1, n[:, None], extra[:, None])
    return tokens, n + 1


def always_accept(drafts: Tensor, q: Tensor, p: Tensor, generator: torch.Generator | None):
    """A deliberately *wrong* rule (accept every draft, bonus from p) that tests use to show the
    statistical test can fail. Never use it for decoding."""
    B, k = drafts.shape
    bonus = sample(p[:, k], generator)
    return torch.cat([drafts, bonus[:, None]], dim=1), torch.full((B,), k + 1, device=drafts.device)
