"""The adaptive mode against every static choice, HF's baselines and the oracle bound, on one model.

1. A sweep of exit layer x draft length (HF generate, HF ``assistant_early_exit`` and eedecode's
   static self-speculation in every cell) picks the best static pair, the median static pair and
   HF early exit's best pair.
2. ``eedecode tune``'s pieces run on tuning text that is not in the prompt set (standard-library
   modules the demo models trained on): a layer set to draft through, a token ranking and a warm
   policy. A tuned lens (translators for a few exit layers) is fitted on the same text.
3. One interleaved run at 1 thread measures, on every prompt: HF generate, HF early exit at its
   best pair, HF prompt lookup, eedecode autoregressive, the best and the median static pair, the
   adaptive mode (as it comes; without lookup drafts; warm from the tuned policy; with a draft
   vocabulary; through the tuned lens) and the oracle bound at the best static exit layer.

    python benchmarks/adaptive_table.py --model demo --out runs/adaptive/demo
    python benchmarks/adaptive_table.py --model smollm2 --num-prompts 12 --out runs/adaptive/smollm2

It writes ``table.md`` and ``record.json`` under ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from eedecode.api.generation import generate
from eedecode.bench import load_prompts, markdown_table, measure_step_costs, time_methods
from eedecode.bench.measure import encode_prompts
from eedecode.bench.methods import Speculation
from eedecode.bench.report import LEGEND, complete, machine_line, speedup_cell
from eedecode.model.corpus import stdlib_root
from eedecode.model.loading import load_model
from eedecode.model.runner import ModelRunner
from eedecode.modes.adaptive import policy_file
from eedecode.modes.adaptive.bandit import Bandit
from eedecode.modes.adaptive.store import Policy, Tuned
from eedecode.modes.adaptive.tune import blocks_from, search_skip_layers, token_ranking
from eedecode.study.tuned_lens import TunedLensConfig, fit_tuned_lens

#: Tuning text: standard-library modules outside the benchmark's held-out prompt modules.
TUNING_MODULES = ("functools.py", "dataclasses.py", "enum.py", "contextlib.py")


def sweep(model, prompt_ids, exits, lengths, max_new_tokens):
    cells = []
    for e, k in tqdm([(e, k) for e in exits for k in lengths], desc="sweep", leave=False):
        res = time_methods(
            model,
            ["hf", "hf_early_exit", "eedecode_ss"],
            prompt_ids,
            spec=Speculation(e, k),
            max_new_tokens=max_new_tokens,
        )
        cells.append(
            {
                "exit_layer": e,
                "num_speculations": k,
                "ss": res["eedecode_ss"].speedup_vs_hf,
                "hf_early_exit": res["hf_early_exit"].speedup_vs_hf,
            }
        )
    ranked = sorted(cells, key=lambda c: c["ss"])
    best, median = ranked[-1], ranked[len(ranked) // 2]
    best_hf = max(cells, key=lambda c: c["hf_early_exit"])
    return cells, best, median, best_hf


def tune(model, tokenizer, out: Path, layers, steps: int, warm_tokens: int):
    texts = [(stdlib_root() / m).read_text() for m in TUNING_MODULES]
    runner = ModelRunner(model)
    blocks = blocks_from(tokenizer, texts, 128, runner.device)[:4]
    skip, agreement, predicted = search_skip_layers(runner, blocks)
    policy = out / "policy.json"
    tuned = Tuned(tuple(skip), tuple(token_ranking(tokenizer, texts)))
    policy_file.save(Policy([], Bandit([]), tuned=tuned), policy)
    for text in texts:  # warm the bandit on the tuning text's openings
        inputs = tokenizer(text[:600], return_tensors="pt")
        generate(model, **inputs, max_new_tokens=warm_tokens, policy_in=str(policy), policy_out=str(policy))
    lens, record = fit_tuned_lens(
        runner, blocks_from(tokenizer, texts, 128, runner.device), layers, TunedLensConfig(steps=steps)
    )
    translator = out / "tuned_lens.safetensors"
    lens.save(translator)
    return (
        policy,
        translator,
        {"skip_layers": skip, "skip_agreement": agreement, "predicted": predicted, "tuned_lens": record},
    )


def _pair(method: str) -> str:
    """``E = 2, k = 1`` from ``eedecode_ss@exit_layer=2@num_speculations=1``."""
    opts = dict(kv.split("=", 1) for kv in method.split("@")[1:])
    return f"E = {opts['exit_layer']}, k = {opts['num_speculations']}"


def doc_table(record: dict) -> str:
    """The table docs/adaptive.md gives: one row per method of the interleaved run, speed-ups as
    the median with the lowest and highest repeat in brackets."""
    hf_ee, best, median = (record["results"][i]["method"] for i in (1, 4, 5))
    oracle = record["results"][-1]["method"].split("=")[-1]
    names = [
        "HF generate",
        f"HF assistant_early_exit, best ({_pair(hf_ee)})",
        "HF prompt lookup",
        "eedecode autoregressive",
        f"eedecode static, best ({_pair(best)})",
        f"eedecode static, median ({_pair(median)})",
        "**adaptive** (no settings)",
        "adaptive, `lookup=False`",
        "adaptive, tuned policy (`policy_in`)",
        "adaptive, tuned, `draft_vocab=1024`",
        "adaptive, `translator` (tuned lens)",
        f"oracle bound (E = {oracle})",
    ]
    n = record["settings"]["num_prompts"]
    lines = [
        "| method | tokens/s | vs HF generate | vs eedecode AR | acceptance | drafts/round "
        "| tokens/round | exit layer | identical |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in zip(names, record["results"], strict=True):
        cells = [name, f"{r['tokens_per_s']:.1f}"]
        cells += [speedup_cell(r, "speedup_vs_hf"), speedup_cell(r, "speedup_vs_ar")]
        cells += ["" if r.get("acceptance_rate") is None else f"{r['acceptance_rate']:.1%}"]
        for key in ("mean_drafts_per_round", "mean_tokens_per_round"):
            cells += ["" if r.get(key) is None else f"{r[key]:.2f}"]
        cells += ["" if r.get("mean_exit_layer") is None else f"{r['mean_exit_layer']:.1f}"]
        cells += [f"{r['identical_to_hf']}/{n}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--num-prompts", type=int, default=24)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sweep-prompts", type=int, default=6)
    p.add_argument(
        "--sweep-exit-layers", default=None, help="comma-separated (default: every layer up to L/2)"
    )
    p.add_argument("--sweep-draft-lengths", default="1,2,4")
    p.add_argument("--lens-steps", type=int, default=150)
    p.add_argument("--draft-vocab", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--render", action="store_true", help="print the docs' table from --out's record.json and exit"
    )
    args = p.parse_args(argv)
    if args.render:
        print(doc_table(json.loads((Path(args.out) / "record.json").read_text())))
        return
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    L = model.config.num_hidden_layers
    prompts = load_prompts(None, args.num_prompts)
    prompt_ids = encode_prompts(tokenizer, prompts, model.config.vocab_size, "cpu")
    exits = (
        [int(x) for x in args.sweep_exit_layers.split(",")]
        if args.sweep_exit_layers
        else list(range(1, max(2, L // 2 + 1)))
    )
    lengths = [int(x) for x in args.sweep_draft_lengths.split(",")]
    cells, best, median, best_hf = sweep(
        model, prompt_ids[: args.sweep_prompts], exits, lengths, args.max_new_tokens // 2
    )
    print(f"sweep: best {best}, median {median}, HF early exit best {best_hf}", flush=True)
    policy, translator, tuned = tune(model, tokenizer, out, sorted(set(exits)), args.lens_steps, 32)
    print(
        f"tuned: skip layers {tuned['skip_layers']}, lens {tuned['tuned_lens']['seconds']:.0f} s", flush=True
    )

    def pair(c):
        return f"@exit_layer={c['exit_layer']}@num_speculations={c['num_speculations']}"

    methods = [
        "hf",
        f"hf_early_exit{pair(best_hf)}",
        "hf_prompt_lookup",
        "eedecode_ar",
        f"eedecode_ss{pair(best)}",
        f"eedecode_ss{pair(median)}",
        "eedecode_auto",
        "eedecode_auto@lookup=False",
        f"eedecode_auto@policy_in={policy}",
        f"eedecode_auto@policy_in={policy}@draft_vocab={args.draft_vocab}",
        f"eedecode_auto@translator={translator}",
        f"eedecode_oracle@exit_layer={best['exit_layer']}",
    ]
    spec = Speculation(best["exit_layer"], best["num_speculations"])
    with tqdm(total=len(methods) * len(prompt_ids) * args.repeats, desc="table", leave=False) as bar:
        res = time_methods(
            model,
            methods,
            prompt_ids,
            spec=spec,
            max_new_tokens=args.max_new_tokens,
            repeats=args.repeats,
            progress=bar,
        )
    settings = {
        "exit_layer": spec.exit_layer,
        "num_speculations": spec.num_speculations,
        "max_new_tokens": args.max_new_tokens,
        "num_prompts": len(prompt_ids),
        "num_layers": L,
        "repeats": args.repeats,
    }
    results = [{**vars(r)} for r in res.values()]
    costs = measure_step_costs(model, prompt_ids[0], spec.exit_layer, spec.num_speculations)
    record = complete({"settings": settings, "step_costs": costs, "results": results}, model)
    record.update(model=loaded.path, sweep=cells, tuned=tuned, seconds=time.perf_counter() - t0)
    table = markdown_table(record).replace(f"{out}/", "")  # the tuned files by their names
    (out / "record.json").write_text(json.dumps(record, indent=1, default=str))
    (out / "table.md").write_text(table + "\n")
    (out / "doc_table.md").write_text(doc_table(record) + "\n")
    print(f"{machine_line(record)}\n\n{table}\n\n{LEGEND}\n\n{time.perf_counter() - t0:.0f} s; record: {out}")


if __name__ == "__main__":
    main()
