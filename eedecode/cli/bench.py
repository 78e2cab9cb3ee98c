"""``eedecode bench``: its flags, their checks, and the run that measures, reports and writes the
JSON record, the markdown table and its legend and the speed-up bar chart, or (``--sweep``) the
heatmap, or (``--profile``) the cost of one step of each kind against the memory-bandwidth floor.

Every flag is checked before the model loads, as far as it can be without the model; a bad value
is a ValueError whose message starts with the flag's name (the command line prints it as one line
and exits with status 2). A flag given as 0 is an error, never a request for the default.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..bench import chart
from ..bench.measure import check_count, encode_prompts, load_prompts, run_measurements
from ..bench.methods import Speculation, method_names, resolve_methods, skipped_methods, with_baselines
from ..bench.profile import profile_steps, profile_table
from ..bench.report import (
    LEGEND,
    best_cells_line,
    complete,
    machine_line,
    markdown_table,
    plot_batches,
    plot_sweep,
)
from ..bench.sweep import run_sweep
from ..model.loading import add_model_arguments, load_model, set_threads


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="tokens/s of HF generate, HF assisted decoding and every eedecode mode"
    )
    add_model_arguments(p)  # --model, --device, --dtype, --threads
    add_arguments(p)
    p.set_defaults(func=run_cli)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", default=None, help="JSONL prompt file (default: the shipped held-out set)")
    p.add_argument("--num-prompts", type=int, default=None, help="the first N prompts (default: all)")
    p.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated subset of {','.join(method_names(everything=True))}, or variants "
        "eedecode_<short>@NAME=VALUE (default: all but eedecode_oracle, the oracle bound)",
    )
    p.add_argument("--exit-layer", type=int, default=None)
    p.add_argument("--num-speculations", type=int, default=None)
    p.add_argument(
        "--draft-confidence-threshold",
        type=float,
        default=None,
        help="stop drafting below this draft probability (HF: assistant_confidence_threshold)",
    )
    p.add_argument("--prompt-lookup-num-tokens", type=int, default=10, help="hf_prompt_lookup's draft length")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument(
        "--batch-sizes",
        default="1",
        help="comma-separated, e.g. 1,4,16 (batch size 1 always runs; HF's assisted methods run only it)",
    )
    p.add_argument("--warmup", type=int, default=1, help="batches decoded untimed first (0: none)")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs: decode every prompt this many times per method (speed-ups get a range over runs)",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="sweep exit layers x draft lengths (HF generate, HF assistant_early_exit and every "
        "eedecode mode) and draw a heatmap",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="per step kind (autoregressive, draft, verification, HF forward): aten ops, ms and the "
        "share of the memory-bandwidth floor reached",
    )
    p.add_argument(
        "--no-floor",
        action="store_true",
        help="do not sample the memory bandwidth between turns (then no floor share column)",
    )
    p.add_argument("--no-plot", action="store_true", help="do not draw the speed-up bar chart")
    p.add_argument("--sweep-exit-layers", default=None, help="comma-separated (default: 1..L-1)")
    p.add_argument("--sweep-draft-lengths", default="1,2,3,4,6,8")
    p.add_argument(
        "--synthetic-agreement",
        type=float,
        default=None,
        help="for --model synthetic:<shape>: the exit layer's target agreement with the last layer",
    )
    p.add_argument("--output", default="runs/bench", help="directory for the JSON record, table and heatmap")
    p.add_argument("--no-progress", action="store_true")


def int_list(flag: str, text: str) -> list[int]:
    """``"1,4,16"`` -> ``[1, 4, 16]``; anything else (empty, not ints, < 1, repeats) names ``flag``."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise ValueError(f"{flag}: expected distinct comma-separated ints >= 1, got {text!r}")
    return values


def check_flags(args) -> None:
    """Every check that needs no model."""
    for name in ("num_prompts", "exit_layer", "num_speculations"):
        if getattr(args, name) is not None:
            check_count("--" + name.replace("_", "-"), getattr(args, name))
    check_count("--max-new-tokens", args.max_new_tokens)
    check_count("--repeats", args.repeats)
    check_count("--warmup", args.warmup, minimum=0)
    check_count("--prompt-lookup-num-tokens", args.prompt_lookup_num_tokens)
    t = args.draft_confidence_threshold
    if t is not None and not 0 <= t <= 1:
        raise ValueError(f"--draft-confidence-threshold: must be in [0, 1], got {t!r}")
    int_list("--batch-sizes", args.batch_sizes)
    int_list("--sweep-draft-lengths", args.sweep_draft_lengths)
    if args.sweep_exit_layers is not None:
        int_list("--sweep-exit-layers", args.sweep_exit_layers)
    if args.profile and args.sweep:
        raise ValueError("--profile: not with --sweep (one or the other)")
    if args.methods is not None:
        if args.sweep:
            raise ValueError(
                "--methods: not for --sweep, which runs HF generate, HF assistant_early_exit and eedecode"
            )
        resolve_methods(args.methods.split(","), "--methods")


def _prompts(args) -> list[dict]:
    prompts = load_prompts(args.prompts)
    n = args.num_prompts
    if n is not None and n > len(prompts):
        raise ValueError(f"--num-prompts: {n} asked for, the prompt file has {len(prompts)}")
    return prompts[:n] if n is not None else prompts


def _check_exit_layers(flag: str, layers: list[int], num_layers: int, path: str) -> None:
    if max(layers) > num_layers - 1:
        raise ValueError(
            f"{flag}: must be in 1..{num_layers - 1} for {path} ({num_layers} layers), got {max(layers)}"
        )


def _speculation(args, num_layers: int, path: str, recommended: dict) -> Speculation:
    """The flags, else the checkpoint's recommendation, else E = L/4 and k = 4."""
    if args.exit_layer is not None:
        _check_exit_layers("--exit-layer", [args.exit_layer], num_layers, path)
        exit_layer = args.exit_layer
    else:
        exit_layer = recommended.get("exit_layer") or max(1, num_layers // 4)
    k = args.num_speculations
    if k is None:
        k = recommended.get("num_speculations") or 4
    threshold = args.draft_confidence_threshold
    if threshold is None:
        threshold = recommended.get("draft_confidence_threshold")
    return Speculation(exit_layer, k, threshold, args.prompt_lookup_num_tokens)


def _same_threads_for_every_method(args, model) -> None:
    """Without --threads, every method runs on the thread count ``generate()`` would choose by
    itself (one for a small model on a CPU), so HF and llama.cpp are not timed on more threads
    than eedecode."""
    if args.threads is not None:
        return
    import torch

    from ..model.threads import auto_threads

    count = auto_threads(model, next(model.parameters()).device)
    if count is not None and count != torch.get_num_threads():
        torch.set_num_threads(count)
        print(f"threads: {count} for every method (a small model on a CPU; --threads N to choose)")


def run_cli(args) -> int:
    check_flags(args)
    prompts = _prompts(args)
    set_threads(args)
    loaded = load_model(
        args.model,
        args.device,
        args.dtype,
        synthetic_agreement=args.synthetic_agreement,
        synthetic_exit_layer=args.exit_layer,
    )
    _same_threads_for_every_method(args, loaded.model)
    L = loaded.model.config.num_hidden_layers
    spec = _speculation(args, L, loaded.path, loaded.settings)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(
        max_new_tokens=args.max_new_tokens,
        warmup=args.warmup,
        repeats=args.repeats,
        show_progress=not args.no_progress,
    )
    if args.sweep:
        return _sweep(args, loaded, prompts, spec, out, common)
    if args.profile:
        return _profile(loaded, prompts, spec, out)
    methods = args.methods.split(",") if args.methods is not None else method_names()
    full = with_baselines(methods)
    if len(full) > len(methods):
        added = ", ".join(m for m in full if m not in methods)
        print(f"adding {added}: the baselines of the speed-ups")
    batch_sizes = tuple(int_list("--batch-sizes", args.batch_sizes))
    for name, why in skipped_methods(full).items():
        print(f"skipping {name}: {why}")
    measured = run_measurements(
        loaded.model,
        loaded.tokenizer,
        prompts,
        methods=full,
        spec=spec,
        batch_sizes=batch_sizes,
        floor=not args.no_floor,
        source=loaded.path,
        **common,
    )
    record = {**complete(measured, loaded.model), "model": loaded.path}
    table = f"{markdown_table(record)}\n\n{LEGEND}"
    (out / "bench.json").write_text(json.dumps(record, indent=1))
    (out / "bench.md").write_text(table + "\n")
    plots = ""
    if not args.no_plot and (why := chart.unavailable()) is not None:
        plots = f"; no bar chart: {why}"
    elif not args.no_plot:
        title = f"{Path(loaded.path).name}: speed-ups"
        plots = f"; bar chart: {chart.plot_speedups(record, out / 'speedups.png', title=title)}"
    if len(batch_sizes) > 1:
        title = f"{Path(loaded.path).name}: tokens/s by batch size (labels: speed-up over HF generate)"
        plots += f"; batch plot: {plot_batches(record, out / 'batch.png', title=title)}"
    print(f"{machine_line(record)}\n\n{table}\n\nrecord: {out / 'bench.json'}{plots}")
    return 0


def _profile(loaded, prompts, spec: Speculation, out: Path) -> int:
    device = next(loaded.model.parameters()).device
    prompt = encode_prompts(loaded.tokenizer, prompts[:1], loaded.model.config.vocab_size, device)[0]
    profile = profile_steps(loaded.model, prompt, spec.exit_layer, spec.num_speculations)
    record = {**complete({"profile": profile}, loaded.model), "model": loaded.path}
    (out / "profile.json").write_text(json.dumps(record, indent=1))
    table = profile_table(profile, spec.exit_layer, spec.num_speculations)
    print(f"{machine_line(record)}\n\n{table}\n\nrecord: {out / 'profile.json'}")
    return 0


def _sweep(args, loaded, prompts, spec: Speculation, out: Path, common: dict) -> int:
    L = loaded.model.config.num_hidden_layers
    if args.sweep_exit_layers is None:
        exits = list(range(1, L))
    else:
        exits = int_list("--sweep-exit-layers", args.sweep_exit_layers)
        _check_exit_layers("--sweep-exit-layers", exits, L, loaded.path)
    lengths = int_list("--sweep-draft-lengths", args.sweep_draft_lengths)
    measured = run_sweep(
        loaded.model,
        loaded.tokenizer,
        prompts,
        exit_layers=exits,
        draft_lengths=lengths,
        confidence_threshold=spec.confidence_threshold,
        **common,
    )
    sweep = {**complete(measured, loaded.model), "model": loaded.path}
    (out / "sweep.json").write_text(json.dumps(sweep, indent=1))
    title = f"{Path(loaded.path).name}: speed-up over HF generate (acceptance)"
    png = plot_sweep(sweep, out / "sweep.png", title=title)
    print(f"{best_cells_line(sweep)}; heatmap: {png}")
    return 0
