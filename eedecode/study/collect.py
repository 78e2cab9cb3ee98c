"""The agreement study's teacher-forced pass: the exit head on every studied layer, per token.

Blocks of text run through the model runner one layer at a time (no cache, one causal block per
row). At each studied exit depth ``d`` the exit head (final norm + LM head, through
:meth:`ModelRunner.exit_head`) reads the layer-``d`` state directly (the *logit lens*,
nostalgebraist 2020) or through a trained translator (the *tuned lens*, Belrose et al. 2023,
arXiv 2303.08112), and per token only a few numbers are kept: ``O(tokens)`` per layer, never
``[layers, tokens, vocab]``. The gates' scores come from the exit criteria themselves
(:mod:`eedecode.model.exit_criteria`), so the study measures the objects that decoding uses.

KL divergence to the final distribution needs no ``[tokens, vocab]`` tensor per layer: with
``p`` the final distribution, ``W`` the LM head and ``n_d`` the normed layer-``d`` state,
``KL(p || q_d) = logsumexp_d - H(p) - <E_p[W_v], n_d>``; ``E_p[W_v]`` (one ``[tokens, H]`` matrix
per batch) is computed once from the final layer's logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..model.exit_criteria import CRITERIA, ExitPoint, update_unchanged
from ..model.runner import ModelRunner
from .sublayers import POINTS, capture_sublayers, overlap

Tensor = torch.Tensor

HEAD_STATS = frozenset({"argmax", "max_prob", "entropy", "margin", "logsumexp", "token_logprob"})
TOP_K = 10  # the top-10 of sub-layer stability; the first 5 give the top-5 overlap
Lens = Callable[[int, Tensor], Tensor]  # (exit depth, [n, H] state) -> translated state


def gate_criteria() -> dict:
    """One instance of every registered exit criterion; only ``score`` is used (thresholds are
    swept over the stored scores afterwards)."""
    return {name: cls(int(cls.low) if cls.integer else max(cls.low, 0.0)) for name, cls in CRITERIA.items()}


def gate_scores(gates: dict, point: ExitPoint) -> dict[str, Tensor]:
    """Each criterion's score at one exit point (float32 per row)."""
    return {name: crit.score(point).float() for name, crit in gates.items()}


@dataclass
class LensRecords:
    """Per studied exit depth (row, in the order of ``Records.depths``) and predicted position."""

    top1: Tensor  # [D, N] int64: the exit head's argmax
    correct: Tensor  # [D, N] bool: top-1 == the true next token
    top5: Tensor  # [D, N] float32: share of the top-5 that is in the final layer's top-5
    kl: Tensor  # [D, N] float32: KL(final distribution || this layer's), nats
    entropy: Tensor  # [D, N] float32, nats
    max_prob: Tensor  # [D, N] float32
    p_final: Tensor  # [D, N] float32: probability of the final layer's top-1
    scores: dict[str, Tensor]  # criterion name -> [D, N] its score

    def agree(self, final_top1: Tensor) -> Tensor:
        return self.top1 == final_top1[None]


@dataclass
class Records:
    depths: list[int]  # studied exit depths, increasing, ending with num_layers
    num_layers: int
    positions: int  # predicted positions per block (block length - 1): runs never cross blocks
    labels: Tensor  # [N] the true next tokens
    inputs: Tensor  # [N] the tokens the predictions follow
    final_top1: Tensor  # [N]
    lenses: dict[str, LensRecords]
    #: point -> measure -> [D, blocks] sums over each of the first blocks' positions
    sublayers: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    sublayer_tokens: int = 0
    final_logprob: Tensor | None = None  # [N] the last layer's log-probability of the true next token


def parse_depths(layers, num_layers: int) -> list[int]:
    """Studied exit depths, sorted, always with the last layer; ``None`` means all."""
    depths = sorted(set(range(1, num_layers + 1) if layers is None else layers) | {num_layers})
    if depths[0] < 1 or depths[-1] > num_layers:
        raise ValueError(f"layers: exit depths must lie in 1..{num_layers}, got {list(layers)}")
    return depths


@torch.no_grad()
def collect(
    runner: ModelRunner,
    blocks: Tensor,
    depths: list[int],
    *,
    lenses: dict[str, Lens | None] | None = None,
    sublayer_tokens: int = 0,
    batch_tokens: int = 1024,
    progress=None,
) -> Records:
    """Teacher-forced pass over ``blocks [N, T]``. ``lenses``: name -> translator (None: the logit
    lens; default ``{"logit": None}``). Sub-layer points are measured on the first
    ``sublayer_tokens`` positions. ``progress``: ``update(n)`` once per batch of blocks."""
    lenses = lenses or {"logit": None}
    L, per = runner.num_layers, blocks.shape[1] - 1
    rows = max(1, batch_tokens // per)
    acc = _Accumulator(list(lenses))
    with capture_sublayers(runner.model, [d - 1 for d in depths]) as store:
        sub_runner = ModelRunner(runner.model)  # built after the hooks, so that it calls the modules
        for start in range(0, blocks.shape[0], rows):
            chunk = blocks[start : start + rows].to(runner.device)
            with_sub = acc.sub_tokens < sublayer_tokens
            run = sub_runner if with_sub else runner
            states, prev = _run(run, chunk[:, :-1], depths, store if with_sub else None)
            labels = chunk[:, 1:].reshape(-1)
            final = _final(runner, states[L], labels)
            acc.add_tokens(labels, chunk[:, :-1].reshape(-1), final["top1"], final["label_logprob"])
            rows_by_lens = {
                name: _lens_rows(runner, lens, states, prev, depths, final) for name, lens in lenses.items()
            }
            if with_sub:
                top10 = rows_by_lens[next(n for n, lens in lenses.items() if lens is None)]["top10"]
                acc.add_sub(_sublayer_rows(runner, states, prev, store, depths, final, top10, per))
            for name, lens_rows in rows_by_lens.items():
                lens_rows.pop("top10")
                acc.add_lens(name, lens_rows)
            if progress is not None:
                progress.update(1)
    return acc.records(depths, L, per)


def _run(runner, ids, depths, store):
    """States ``[n, H]`` after each studied depth and one layer before it (``prev``)."""
    wanted = set(depths)
    h = runner.embed(ids)
    states, prev = {}, {}
    for i in range(runner.num_layers):
        x = runner.run_layers(h, i, i + 1)
        if i + 1 in wanted:
            prev[i + 1], states[i + 1] = h.flatten(0, 1), x.flatten(0, 1)
            if store is not None:
                store[i] = {k: v.flatten(0, 1) for k, v in store[i].items()}  # keep this batch's
        h = x
    return states, prev


def _final(runner, h, labels: Tensor | None = None) -> dict:
    """The final layer's top-1, top-10, entropy, ``E_p[W_v]`` (see the module docstring) and, given
    the true next tokens, their log-probability (the language-modelling loss is its negative)."""
    stats = HEAD_STATS if labels is not None else HEAD_STATS - {"token_logprob"}
    st = runner.exit_head(h, stats=stats, token_ids=labels, top_k=TOP_K)
    out = {"top1": st.argmax, "top10": st.topk_ids, "entropy": st.entropy.double()}
    out["label_logprob"] = st.token_logprob if labels is not None else None
    if runner.fused_head:
        p = torch.softmax(runner.exit_head_logits(h), dim=-1)  # [n, V]: one batch, the last layer only
        out["expected_w"] = (p @ runner.lm_head.weight.float()).double()  # [n, H]
    else:  # a quantized or biased head: KL from the materialised logits, batch by batch
        out["logp"] = torch.log_softmax(runner.logits(h), dim=-1)
    return out


def kl_to_final(runner, x: Tensor, logsumexp: Tensor, final: dict) -> Tensor:
    """``KL(p_final || q)`` per row of the states ``x [n, H]`` whose exit-head log-sum-exp is given."""
    if "expected_w" in final:
        normed = runner.norm(x.to(runner.norm.weight.device)).double()
        kl = logsumexp.double() - final["entropy"] - (normed * final["expected_w"]).sum(-1)
    else:
        logq = torch.log_softmax(runner.logits(x), dim=-1)
        kl = (final["logp"].exp() * (final["logp"] - logq)).sum(-1)
    return kl.clamp_min(0).float()


def _lens_rows(runner, lens, states, prev, depths, final) -> dict[str, list[Tensor]]:
    """One lens at every studied depth: the per-token rows of :class:`LensRecords`."""
    gates, L = gate_criteria(), runner.num_layers
    out: dict[str, list] = {k: [] for k in ("top1", "top5", "kl", "entropy", "max_prob", "p_final", "top10")}
    out["scores"] = {name: [] for name in gates}
    unchanged = prev_top1 = None
    for d in depths:
        x = states[d] if lens is None or d == L else lens(d, states[d])
        st = runner.exit_head(x, stats=HEAD_STATS, token_ids=final["top1"], top_k=TOP_K)
        unchanged = update_unchanged(unchanged, prev_top1, st.argmax)
        prev_top1 = st.argmax
        point = ExitPoint(layer=d, stats=st, hidden=states[d], prev_hidden=prev[d], unchanged=unchanged)
        for name, score in gate_scores(gates, point).items():
            out["scores"][name].append(score)
        out["top1"].append(st.argmax)
        out["top5"].append(overlap(st.topk_ids[:, :5], final["top10"][:, :5]))
        out["kl"].append(kl_to_final(runner, x, st.logsumexp, final))
        out["entropy"].append(st.entropy)
        out["max_prob"].append(st.max_prob)
        out["p_final"].append(st.token_logprob.exp())
        out["top10"].append(st.topk_ids)  # for the sub-layer points; not kept
    return out


def _sublayer_rows(runner, states, prev, store, depths, final, top10, per) -> dict[str, dict[str, Tensor]]:
    """Sums per depth and block (``[D, blocks]``; ``per`` positions a block), for each sub-layer
    point: top-1 agreement with the final layer, top-10 overlap with the final top-10 and with the
    same point one studied layer earlier. ``top10``: the logit lens's top-10 per depth (the
    residual stream after the MLP is the layer's output)."""
    rows = final["top1"].numel() // per
    keys = ("agree", "top10_final", "top10_prev")
    out = {p: {k: torch.zeros(len(depths), rows) for k in keys} for p in POINTS}
    before = dict.fromkeys(POINTS)
    for j, d in enumerate(depths):
        attn, mlp = store[d - 1]["attn"], store[d - 1]["mlp"]
        points = {"after_attention": prev[d] + attn, "after_mlp": None, "attention": attn, "mlp": mlp}
        for name, x in points.items():
            ids = top10[j] if x is None else runner.exit_head(x, stats={"argmax"}, top_k=TOP_K).topk_ids
            rec = out[name]
            rec["agree"][j] = (ids[:, 0] == final["top1"]).float().view(rows, per).sum(1).cpu()
            rec["top10_final"][j] = overlap(ids, final["top10"]).view(rows, per).sum(1).cpu()
            if before[name] is None:
                rec["top10_prev"][j] = float("nan")
            else:
                rec["top10_prev"][j] = overlap(ids, before[name]).view(rows, per).sum(1).cpu()
            before[name] = ids
    return out


class _Accumulator:
    """Per-batch rows, concatenated once at the end."""

    def __init__(self, lens_names):
        self.rows = {name: [] for name in lens_names}
        self.tokens: dict[str, list] = {"labels": [], "inputs": [], "final_top1": [], "final_logprob": []}
        self.sub: dict | None = None
        self.sub_tokens = 0

    def add_tokens(self, labels, inputs, final_top1, final_logprob):
        for key, t in zip(self.tokens, (labels, inputs, final_top1, final_logprob), strict=True):
            self.tokens[key].append(t.float().cpu() if key == "final_logprob" else t.cpu())

    def add_lens(self, name, rows):
        self.rows[name].append(rows)

    def add_sub(self, sums):
        self.sub_tokens += self.tokens["labels"][-1].numel()
        if self.sub is None:
            self.sub = sums
            return
        for point, rec in sums.items():
            for key, value in rec.items():
                self.sub[point][key] = torch.cat([self.sub[point][key], value], 1)

    def records(self, depths, num_layers, positions) -> Records:
        final, labels = torch.cat(self.tokens["final_top1"]), torch.cat(self.tokens["labels"])
        lenses = {name: _stack(batches, labels) for name, batches in self.rows.items()}
        return Records(
            depths=depths,
            num_layers=num_layers,
            positions=positions,
            labels=labels,
            inputs=torch.cat(self.tokens["inputs"]),
            final_top1=final,
            lenses=lenses,
            sublayers=self.sub or {},
            sublayer_tokens=self.sub_tokens,
            final_logprob=torch.cat(self.tokens["final_logprob"]),
        )


def _stack(batches: list[dict], labels: Tensor) -> LensRecords:
    def cat(rows_of):
        return torch.cat([torch.stack(rows_of(b)).cpu() for b in batches], dim=1)

    top1 = cat(lambda b: b["top1"])
    return LensRecords(
        top1=top1,
        correct=top1 == labels[None],
        top5=cat(lambda b: b["top5"]),
        kl=cat(lambda b: b["kl"]),
        entropy=cat(lambda b: b["entropy"]),
        max_prob=cat(lambda b: b["max_prob"]),
        p_final=cat(lambda b: b["p_final"]),
        scores={name: cat(lambda b, n=name: b["scores"][n]) for name in batches[0]["scores"]},
    )
