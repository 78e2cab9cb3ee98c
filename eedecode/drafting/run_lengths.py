"""How far a drafter's drafts run: the draft-length model.

:class:`RunLengths` keeps, per draft position, the probability that a draft is accepted given
that the drafts before it were, fitted online from every verification (and from drafts judged
without being played). With the costs of a draft step and of a verification it gives the draft
length with the most expected tokens per unit of cost: DEL's choice of draft length (Zarch et al.
2025), with no training.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

#: Pseudo-drafts per position of the draft-length model's prior: position 1 starts at 1/2, and a
#: later position at the estimate of the one before it (what little is known of position j + 1
#: is most like position j: a draft length the rounds never reached is not judged at 1/2).
RUN_PRIOR = 1.0
FLUSH_EVERY = 64  # rounds the draft-length model collects before it counts them
DISCOUNT = 0.995  # per-round forgetting of the counts


def _stacked(rows: list, device) -> Tensor:
    """``[n, B]`` from ``n`` rows, tensors ``[B]`` or host lists."""
    return torch.tensor(rows, device=device) if isinstance(rows[0], list) else torch.stack(rows)


class RunLengths:
    """How far a drafter's drafts run: per draft position ``j = 1 .. K``, the probability that
    draft ``j`` is accepted given that the drafts before it were (discounted counts, on the
    device; updated after every verification without a host read). With the costs of a draft
    step and of verifying ``T`` tokens it gives the draft length with the most expected tokens
    per unit of cost (:meth:`best_length`), DEL's choice of draft length (Zarch et al. 2025)."""

    def __init__(self, device, K: int, saved: dict | None = None):
        self.K = K
        judged = torch.zeros(K, dtype=torch.float64)  # the data alone (the prior: see rates)
        accepted = torch.zeros(K, dtype=torch.float64)
        saved = saved or {}
        n = min(K, len(saved.get("judged", [])))  # a state saved with another maximum: no data beyond
        if n:
            judged[:n] = torch.tensor(saved["judged"][:n], dtype=torch.float64)
            accepted[:n] = torch.tensor(saved["accepted"][:n], dtype=torch.float64)
        self.judged, self.accepted = judged.to(device), accepted.to(device)
        self.pending: list[tuple[Tensor, Tensor]] = []  # rounds not yet counted (see update)

    def update(self, num_drafts: Tensor | list[int], counts: Tensor | list[int]) -> None:
        """After verification: row ``b`` proposed ``num_drafts[b]`` drafts (none if it did not
        run) and the round gave it ``counts[b]`` tokens, its accepted drafts and one more
        (``[B]``, on the device or host lists). Kept as they are and counted in batches
        (:meth:`flush`), so that a round pays for no more than a list append."""
        first = self.pending[0][0] if self.pending else None
        if first is not None and (len(first) != len(num_drafts) or type(first) is not type(num_drafts)):
            # another batch size, or lists after tensors: count what was collected first
            self.flush()
        self.pending.append((num_drafts, counts))
        if len(self.pending) >= FLUSH_EVERY:
            self.flush()

    def judge(self, drafts: Tensor, num_drafts: Tensor, tokens: Tensor, counts: Tensor, device) -> None:
        """Judge drafts that were not necessarily played: row ``b`` had ``drafts[b, :num_drafts[b]]``
        ``[B, k]`` ready, and the round emitted ``tokens[b, :counts[b]]`` ``[B, m]``, which is what
        the model emits there whoever drafted. A draft would have been accepted exactly when it
        and the drafts before it equal those tokens (in distribution, when sampling: a
        point-mass draft is accepted with the probability that the model emits it). Past the
        round's tokens nothing is known, so drafts are judged up to there. For drafts that were
        played this is :meth:`update`. On the device, no host read. (Later positions are only
        reached in rounds that went far, on easier text, so their rates lean optimistic; the
        rounds that play these drafts correct them.)"""
        n = min(drafts.shape[1], tokens.shape[1])
        agree = (drafts[:, :n] == tokens[:, :n]).cumprod(1).sum(1)  # [B]
        known = torch.minimum(num_drafts, counts)  # drafts that can be judged
        agree = torch.minimum(agree, known)
        # as if `drafted` were played and `agree` accepted: the draft after the agreeing ones is
        # judged (rejected) when it can be, else the judged ones all agreed
        drafted = torch.minimum(agree + 1, known)
        self.update(drafted.to(device), (agree + 1).to(device))

    def judge_rows(
        self, drafts: list[list[int]], num_drafts: list[int], tokens: list[list[int]], counts: list[int]
    ):
        """:meth:`judge` on the host, with lists (row ``b``: ``drafts[b][:num_drafts[b]]``
        against ``tokens[b][:counts[b]]``; 0 drafts for a row that did not run)."""
        drafted, accepted = [], []
        for d, n, t, c in zip(drafts, num_drafts, tokens, counts, strict=True):
            known = min(n, c)
            agree = 0
            while agree < known and d[agree] == t[agree]:
                agree += 1
            drafted.append(min(agree + 1, known))
            accepted.append(agree + 1)
        self.update(drafted, accepted)

    def flush(self) -> None:
        """Count the rounds not yet counted, each discounted as if counted in its turn."""
        if not self.pending:
            return
        # [n, B] each
        drafted, counts = (_stacked([p[i] for p in self.pending], self.judged.device) for i in (0, 1))
        accepted = torch.minimum(counts - 1, drafted)
        n = drafted.shape[0]
        j = torch.arange(self.K, device=drafted.device)
        judged = (j <= accepted[..., None]) & (j < drafted[..., None])  # [n, B, K]
        hit = judged & (j < accepted[..., None])
        age = torch.arange(n - 1, -1, -1, device=drafted.device, dtype=torch.float64)
        weight = (DISCOUNT**age)[:, None, None]  # the latest round counts fully
        self.judged.mul_(DISCOUNT**n).add_((judged * weight).sum((0, 1)))
        self.accepted.mul_(DISCOUNT**n).add_((hit * weight).sum((0, 1)))
        self.pending.clear()

    def observe_runs(self, agreed: Tensor, real: Tensor, weight: float = 1.0) -> None:
        """Teacher-forced runs: ``agreed`` ``[B, W]`` says where a draft would have been accepted
        along a text (the drafter's top-1 is the model's), ``real`` which positions count. Draft
        ``j`` from position ``t`` is judged when drafts ``1 .. j - 1`` from ``t`` agreed. Each
        position counts ``weight`` drafts."""
        W = agreed.shape[1]
        alive = real
        for j in range(min(self.K, W)):
            n = W - j
            judged = alive[:, :n]
            hit = judged & agreed[:, j : j + n]
            self.judged[j] += weight * judged.sum()
            self.accepted[j] += weight * hit.sum()
            alive = hit[:, : n - 1]

    def rates(self) -> list[float]:
        """``s[j - 1]`` = P(draft ``j`` accepted | drafts before it accepted): each position's
        counts with ``RUN_PRIOR`` pseudo-drafts at the estimate of the position before it (1/2
        for the first). One host read."""
        return RunLengths.rates_of([self])[0]

    @staticmethod
    def rates_of(models: list[RunLengths]) -> list[list[float]]:
        """:meth:`rates` of several models, with one host read for them all."""
        if not models:
            return []
        for m in models:
            m.flush()
        counts = torch.stack([torch.stack([m.accepted, m.judged]) for m in models]).tolist()
        out = []
        for accepted, judged in counts:
            rates, before = [], 0.5
            for a, n in zip(accepted, judged, strict=True):
                before = (a + RUN_PRIOR * before) / (n + RUN_PRIOR)
                rates.append(before)
            out.append(rates)
        return out

    def best_length(self, draft_cost: float, block_costs: list[float], survival=None) -> tuple[int, float]:
        """The draft length ``k`` in ``1 .. min(K, len(block_costs) - 1)`` with the most expected
        tokens per unit of cost, ``(1 + S_1 + .. + S_k) / (k c + v(k + 1))`` (``S_j``: the chance
        that drafts ``1 .. j`` are all accepted; ``c``: a draft step and ``v(T) = block_costs[T -
        1]``: a verification of ``T`` tokens, in plain decoding steps), and that speed-up."""
        s = survival if survival is not None else self.rates()
        best, tokens, run = (1, 0.0), 1.0, 1.0
        for k in range(1, min(self.K, len(block_costs) - 1) + 1):
            run *= s[k - 1]
            tokens += run
            speedup = tokens / (k * draft_cost + block_costs[k])
            if speedup >= best[1]:  # a tie goes to the longer draft (it keeps learning further)
                best = (k, speedup)
        return best

    def state(self) -> dict:
        self.flush()
        return {"accepted": self.accepted.tolist(), "judged": self.judged.tolist()}
