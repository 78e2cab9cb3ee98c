"""Early-exit decoding measured against the full model: every criterion at a few thresholds, with
copied or recomputed KV for the skipped layers (:mod:`eedecode.modes.early_exit`).

``run``: the methods take turns on every prompt at batch size 1 (:func:`~.measure.time_methods`),
and each gets its mean exit layer, tokens/s, paired speed-up over eedecode autoregressive, its
agreement with HF generate's greedy output (the full model) and where it first diverges.
``propagation``: whether copied KV makes errors grow along a sequence (the claim of the seed study,
arXiv 2412.01455). Every configuration is teacher-forced on the full model's greedy output. At
each position the early-exit prediction is compared with the full model's token, and so are the
logits of the tokens that went to full depth. Recomputed KV leaves those exactly the full model's,
so any drift of copied KV with position shows as a drift here. ``plot``: quality against speed-up.

    python -m eedecode.bench.early_exit run --model demo --threads 1 --output runs/early_exit/demo
    python -m eedecode.bench.early_exit propagation --model demo --output runs/early_exit/demo
    python -m eedecode.bench.early_exit plot runs/early_exit/*/early_exit.json --output docs/early_exit.png
    python -m eedecode.bench.early_exit table runs/early_exit/demo/early_exit.json

Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..api.generation import generate
from ..model.loading import add_model_arguments, load_model, set_threads
from .measure import encode_prompts, load_prompts, time_methods
from .methods import AR, HF, Speculation
from .report import machine_record

#: Thresholds from loose to strict, for models whose exit distributions are as flat as the demo
#: models' (median max-probability ~0.1 at the last layer).
DEMO_CRITERIA = (
    "max-prob:0.2,max-prob:0.4,max-prob:0.6,entropy:4,entropy:2.5,entropy:1.5,margin:0.1,margin:0.25,"
    "margin:0.5,patience:1,patience:2,patience:3,cosine:0.97,cosine:0.98,cosine:0.99"
)
KV = ("copy", "recompute")
CRITERIA = ("max-prob", "entropy", "margin", "patience", "cosine")


def ee_method(criterion: str, kv: str, exits: str) -> str:
    """The benchmark method of one early-exit configuration (``exits``: ``min_exit_layer=N`` or
    ``exit_layers=a,b,c``)."""
    return f"eedecode_ee@criterion={criterion}@kv_strategy={kv}@{exits}"


def configurations(criteria: str, kv_strategies: str) -> list[tuple[str, str]]:
    return [(c, kv) for c in criteria.split(",") for kv in kv_strategies.split(",")]


# -- speed and quality -----------------------------------------------------------------------------
def run_grid(model, tokenizer, prompts, *, configs, exits, max_new_tokens, warmup, repeats, ss=None):
    """Every configuration beside HF generate, eedecode autoregressive and (``ss``: a Speculation)
    eedecode self-speculative; returns the record's ``rows``."""
    methods = {ee_method(c, kv, exits): (c, kv) for c, kv in configs}
    names = [HF, AR, *(["eedecode_ss"] if ss else []), *methods]
    ids = encode_prompts(tokenizer, prompts, model.config.vocab_size, next(model.parameters()).device)
    kw = dict(max_new_tokens=max_new_tokens, warmup=warmup, repeats=repeats, spec=ss or Speculation())
    results = time_methods(model, names, ids, **kw)
    rows = []
    for name, r in results.items():
        criterion, kv = methods.get(name, (None, None))
        rows.append(
            dict(
                method=name,
                criterion=criterion,
                kv_strategy=kv,
                mean_exit_layer=r.mean_exit_layer,
                tokens_per_s=r.tokens_per_s,
                speedup_vs_ar=r.speedup_vs_ar,
                token_agreement=r.token_agreement_with_hf,
                first_divergence=r.first_divergence_from_hf,
                identical=r.identical_to_hf,
                new_tokens=r.new_tokens,
            )
        )
    return rows


def markdown(record: dict) -> str:
    """The baselines, then one line per criterion with copy and recompute side by side."""
    s, rows = record["settings"], record["rows"]
    lines = [
        f"{s['model']}: {s['num_layers']} layers, exit points {s['exits']}, {s['max_new_tokens']} new "
        f"tokens x {s['num_prompts']} prompts, {record['machine']['torch_threads']} thread(s). Cells: "
        "copy / recompute. Speed-up: over eedecode autoregressive (paired median). Agreement: share "
        "of the full model's greedy tokens matched position by position; first divergence: median "
        "new-token position of the first mismatch.",
        "",
        "| method | tokens/s | speed-up | agreement | identical |",
        "|---|---:|---:|---:|---:|",
    ]
    names = {HF: "HF generate", AR: "eedecode autoregressive", "eedecode_ss": "eedecode self-speculative"}
    for r in rows:
        if r["criterion"] is None:
            name, n = names.get(r["method"], r["method"]), s["num_prompts"]
            lines.append(
                f"| {name} | {r['tokens_per_s']:.1f} | {r['speedup_vs_ar']:.2f}× "
                f"| {r['token_agreement']:.1%} | {r['identical']}/{n} |"
            )
    lines += [
        "",
        "| criterion | mean exit layer | speed-up | agreement | first divergence | identical |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    by = {(r["criterion"], r["kv_strategy"]): r for r in rows if r["criterion"]}
    for c in dict.fromkeys(r["criterion"] for r in rows if r["criterion"]):
        pair = [by.get((c, kv)) for kv in KV]

        def cell(fmt, key, pair=pair):
            return " / ".join("–" if r is None else fmt.format(r[key]) for r in pair)

        lines.append(
            f"| {c} | {cell('{:.2f}', 'mean_exit_layer')} | {cell('{:.2f}×', 'speedup_vs_ar')} "
            f"| {cell('{:.1%}', 'token_agreement')} | {cell('{:g}', 'first_divergence')} "
            f"| {cell('{}', 'identical')} |"
        )
    return "\n".join(lines)


# -- error propagation, teacher-forced -------------------------------------------------------------
class ForceTokens:
    """A logits processor that leaves only the reference's next token possible: the decoding is
    teacher-forced, while the logits it records are the mode's own."""

    def __init__(self, reference: torch.Tensor, prompt_len: int):
        self.reference, self.prompt_len = reference, prompt_len  # [1, P + n]

    def __call__(self, input_ids, scores):
        t = input_ids.shape[1]
        forced = torch.full_like(scores, -float("inf"))
        forced[:, self.reference[0, t]] = 0.0
        return forced


def _traced(model, ids, n: int, **mode) -> tuple[torch.Tensor, list[int] | None]:
    """Logits ``[n, V]`` of each new token, and its exit layer (early exit)."""
    out = generate(
        model,
        ids,
        max_new_tokens=n,
        output_logits=True,
        return_dict_in_generate=True,
        do_sample=False,
        **mode,
    )
    depths = out.stats.details.get("exit_layers")
    return torch.cat(out.logits), (depths[0][:n] if depths else None)


def propagation(model, tokenizer, prompts, *, configs, exits, max_new_tokens, window):
    """Per configuration and window of positions: agreement of the early-exit prediction with the
    full model's token, exit rate, and over the tokens that went to full depth their agreement
    and their logits' KL divergence from the full model's. Returns the record's ``rows``."""
    device = next(model.parameters()).device
    L = model.config.num_hidden_layers
    ids_all = encode_prompts(tokenizer, prompts, model.config.vocab_size, device)
    acc = {cfg: [] for cfg in configs}  # per config: (position, agree, full depth, kl) per token
    for ids in ids_all:
        P = ids.shape[1]
        ref_logits, _ = _traced(model, ids, max_new_tokens, mode="autoregressive")
        n = ref_logits.shape[0]  # fewer than max_new_tokens when the model ends with EOS
        reference = torch.cat([ids, ref_logits.argmax(-1)[None]], 1)
        ref_logp = ref_logits.log_softmax(-1)
        for c, kv in configs:
            force = [ForceTokens(reference, P)]
            opts = dict(criterion=c, kv_strategy=kv, **_exit_option(exits))
            logits, depths = _traced(model, ids, n, mode="early_exit", logits_processor=force, **opts)
            kl = (ref_logp.exp() * (ref_logp - logits.log_softmax(-1))).sum(-1)
            agree = logits.argmax(-1) == reference[0, P:]
            for t in range(1, n):  # token 0 comes from the prefill, at full depth
                acc[(c, kv)].append((t, bool(agree[t]), depths[t] == L, float(kl[t])))
    return [_propagation_row(c, kv, acc[(c, kv)], window, max_new_tokens) for c, kv in configs]


def _propagation_row(criterion, kv, tokens, window, n) -> dict:
    windows = []
    for lo in range(0, n, window):
        part = [x for x in tokens if lo <= x[0] < lo + window]
        full = [x for x in part if x[2]]
        windows.append(
            dict(
                start=lo,
                tokens=len(part),
                agreement=sum(x[1] for x in part) / len(part) if part else None,
                exit_rate=1 - len(full) / len(part) if part else None,
                full_depth_agreement=sum(x[1] for x in full) / len(full) if full else None,
                full_depth_kl=sum(x[3] for x in full) / len(full) if full else None,
            )
        )
    exit_rate = 1 - sum(x[2] for x in tokens) / max(len(tokens), 1)
    return dict(criterion=criterion, kv_strategy=kv, exit_rate=exit_rate, windows=windows)


def _exit_option(exits: str) -> dict:
    key, _, value = exits.partition("=")
    return {key: int(value) if key == "min_exit_layer" else value}


def propagation_markdown(record: dict) -> str:
    s = record["settings"]
    starts = [w["start"] for w in record["rows"][0]["windows"]]
    spans = " | ".join(f"{a}–{a + s['window'] - 1}" for a in starts)
    lines = [
        f"{s['model']}, teacher-forced on the full model's greedy output, {s['max_new_tokens']} tokens x "
        f"{s['num_prompts']} prompts, exit points {s['exits']}. Per window of positions: agreement of "
        "every prediction with the full model's token · the same over the tokens that went to full depth "
        "· mean KL divergence (nats) of those tokens' logits from the full model's. Exit rate: all windows.",
        "",
        f"| criterion | KV | exit rate | {spans} |",
        "|---|---|---:|" + "---:|" * len(starts),
    ]
    for r in record["rows"]:
        cells = [_window_cell(w) for w in r["windows"]]
        rate = r["exit_rate"]
        lines.append(f"| {r['criterion']} | {r['kv_strategy']} | {rate:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _window_cell(w: dict) -> str:
    if w["agreement"] is None:
        return "–"
    if w["full_depth_kl"] is None:
        return f"{w['agreement']:.0%} · – · –"
    return f"{w['agreement']:.0%} · {w['full_depth_agreement']:.0%} · {max(w['full_depth_kl'], 0.0):.3f}"


# -- the plot --------------------------------------------------------------------------------------
def plot(records: list[dict], path: str | Path) -> Path:
    """Token agreement against speed-up over eedecode autoregressive, one panel per model: a line
    per criterion and KV strategy through its thresholds (strict ends label theirs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(records), figsize=(5.2 * len(records), 4.8), squeeze=False, sharey=True)
    colours = dict(zip(CRITERIA, plt.cm.tab10.colors, strict=False))
    handles = {}
    for ax, rec in zip(axes[0], records, strict=True):
        lines: dict = {}
        for r in rec["rows"]:
            if r["criterion"]:
                lines.setdefault((r["criterion"].split(":")[0], r["kv_strategy"]), []).append(r)
        for (name, kv), rows in lines.items():
            xs, ys = [r["speedup_vs_ar"] for r in rows], [r["token_agreement"] for r in rows]
            style = dict(color=colours.get(name), marker="o" if kv == "copy" else "s", ms=4)
            (handles[f"{name}, {kv}"],) = ax.plot(xs, ys, ls="--" if kv == "copy" else "-", **style)
            ax.annotate(rows[-1]["criterion"].split(":")[1], (xs[-1], ys[-1]), fontsize=6)
        for r in rec["rows"]:
            if r["method"] == "eedecode_ss":
                (handles["self-speculative (lossless)"],) = ax.plot(
                    [r["speedup_vs_ar"]], [r["token_agreement"]], "k*", ms=10
                )
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.set_ylim(-0.02, 1.04)
        ax.set_title(f"{rec['settings']['model']} (exit points {rec['settings']['exits']})", fontsize=9)
        ax.set_xlabel("speed-up over eedecode autoregressive (paired median)")
    axes[0][0].set_ylabel("token agreement with the full model (greedy)")
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=6, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- command line ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eedecode.bench.early_exit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "propagation"):
        p = sub.add_parser(name)
        add_model_arguments(p)
        p.add_argument("--criteria", default=DEMO_CRITERIA, help="comma-separated NAME:THRESHOLD")
        p.add_argument("--kv-strategies", default=",".join(KV))
        p.add_argument("--exits", default="min_exit_layer=1", help="min_exit_layer=N or exit_layers=a,b,c")
        p.add_argument("--num-prompts", type=int, default=4)
        p.add_argument("--max-new-tokens", type=int, default=256)
        p.add_argument("--output", default="runs/early_exit")
    sub.choices["run"].add_argument("--warmup", type=int, default=1)
    sub.choices["run"].add_argument("--repeats", type=int, default=1)
    sub.choices["propagation"].add_argument("--window", type=int, default=64)
    p = sub.add_parser("plot")
    p.add_argument("records", nargs="+")
    p.add_argument("--output", default="docs/early_exit.png")
    p = sub.add_parser("table", help="print the markdown table of a stored record (run or propagation)")
    p.add_argument("record")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "plot":
        print(plot([json.loads(Path(f).read_text()) for f in args.records], args.output))
        return 0
    if args.command == "table":
        record = json.loads(Path(args.record).read_text())
        print((propagation_markdown if "window" in record["settings"] else markdown)(record))
        return 0
    set_threads(args)
    loaded = load_model(args.model, args.device, args.dtype)
    model, prompts = loaded.model, load_prompts(limit=args.num_prompts)
    configs = configurations(args.criteria, args.kv_strategies)
    common = dict(configs=configs, exits=args.exits, max_new_tokens=args.max_new_tokens)
    settings = dict(vars(args), model=args.model or "demo", num_layers=model.config.num_hidden_layers)
    settings["num_prompts"] = len(prompts)
    if args.command == "run":
        rec = loaded.settings
        ss = Speculation(rec["exit_layer"], rec["num_speculations"]) if "exit_layer" in rec else None
        rows = run_grid(
            model, loaded.tokenizer, prompts, warmup=args.warmup, repeats=args.repeats, ss=ss, **common
        )
        name, render = "early_exit", markdown
    else:
        rows = propagation(model, loaded.tokenizer, prompts, window=args.window, **common)
        name, render = "propagation", propagation_markdown
    record = {
        "machine": machine_record(model, model.device),
        "model": loaded.path,
        "settings": settings,
        "rows": rows,
    }
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    (out / f"{name}.md").write_text(render(record) + "\n")
    print(render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
