"""``eedecode agreement``: the agreement study from the command line, with progress bars and timings.

eedecode agreement --model demo-plain --data code --max-tokens 20000 --out runs/agreement/plain
eedecode agreement --model smollm2 --data prose --lens tuned --layers 3:30:3 --out runs/smollm2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..study.agreement import StudyConfig
from ..study.bootstrap import BootstrapConfig
from ..study.tuned_lens import TunedLensConfig


def parse_layers(spec: str | None) -> tuple[int, ...] | None:
    """``all`` (or nothing), ``3,6,9``, inclusive ranges ``3:30:3`` / ``1:8``, or a mix of them."""
    if spec is None or spec.strip() in ("", "all"):
        return None
    depths: list[int] = []
    try:
        for item in spec.split(","):
            parts = [int(x) for x in item.split(":")]
            if len(parts) == 1:
                depths.append(parts[0])
            elif len(parts) in (2, 3) and (len(parts) == 2 or parts[2] >= 1):
                depths += range(parts[0], parts[1] + 1, parts[2] if len(parts) == 3 else 1)
            else:
                raise ValueError
    except ValueError:
        raise ValueError(f"layers: expected 'all', '3,6,9' or 'start:stop[:step]', got {spec!r}") from None
    return tuple(depths)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def add_subcommand(subparsers) -> None:
    from ..model.loading import add_model_arguments

    p = subparsers.add_parser(
        "agreement", help="how often each layer already predicts the final token; gates, lenses, speed"
    )
    add_model_arguments(p)
    add_arguments(p)
    p.set_defaults(func=run_cli)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", nargs="+", default=None, help="text / .py files or folders, or code, prose (default: code)"
    )
    p.add_argument(
        "--max-tokens", type=int, default=StudyConfig.max_tokens, help="predicted positions to study"
    )
    p.add_argument("--lens", choices=("logit", "tuned"), default="logit")
    p.add_argument(
        "--layers", default=None, help="exit depths: all (default), 3,6,9 or 3:30:3 (the last is added)"
    )
    p.add_argument("--out", required=True, help="output folder (JSON, CSV, PNG, summary.md)")
    p.add_argument("--translators", default=None, help="a saved tuned lens to use instead of training one")
    p.add_argument(
        "--train-tokens", type=int, default=None, help="tuned lens training positions (default: --max-tokens)"
    )
    p.add_argument("--tuned-steps", type=int, default=TunedLensConfig.steps)
    p.add_argument("--tuned-batch-tokens", type=int, default=TunedLensConfig.batch_tokens)
    p.add_argument("--tuned-lr", type=float, default=TunedLensConfig.lr)
    p.add_argument(
        "--tuned-time-budget", type=float, default=None, help="seconds; stop tuned lens training then"
    )
    p.add_argument("--block-len", type=int, default=StudyConfig.block_len)
    p.add_argument("--batch-tokens", type=int, default=StudyConfig.batch_tokens)
    p.add_argument(
        "--sublayer-tokens",
        type=int,
        default=StudyConfig.sublayer_tokens,
        help="positions for the sub-layer points (0: none)",
    )
    p.add_argument("--draft-lengths", type=_ints, default=StudyConfig.draft_lengths)
    p.add_argument(
        "--speed-exits",
        type=int,
        default=StudyConfig.speed_exits,
        help="at most this many exit layers in the speed table",
    )
    p.add_argument(
        "--cost-reps",
        type=int,
        default=StudyConfig.cost_reps,
        help="timing repetitions per (E, k); 0: no timing",
    )
    p.add_argument(
        "--cost-calls",
        type=int,
        default=StudyConfig.cost_calls,
        help="timings per (E, k); each step keeps its fastest median (helps on a busy CPU)",
    )
    p.add_argument(
        "--bootstrap-resamples",
        type=int,
        default=BootstrapConfig.resamples,
        help="resamples of the blocks for the 95%% intervals (0: no intervals)",
    )
    p.add_argument("--bootstrap-seed", type=int, default=BootstrapConfig.seed)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def config_from_args(args) -> StudyConfig:
    tuned = TunedLensConfig(
        steps=args.tuned_steps,
        batch_tokens=args.tuned_batch_tokens,
        lr=args.tuned_lr,
        time_budget_s=args.tuned_time_budget,
    )
    return StudyConfig(
        max_tokens=args.max_tokens,
        block_len=args.block_len,
        batch_tokens=args.batch_tokens,
        layers=parse_layers(args.layers),
        lens=args.lens,
        translators=args.translators,
        train_tokens=args.train_tokens,
        tuned=tuned,
        sublayer_tokens=args.sublayer_tokens,
        draft_lengths=args.draft_lengths,
        speed_exits=args.speed_exits,
        cost_reps=args.cost_reps,
        cost_calls=args.cost_calls,
        bootstrap=BootstrapConfig(resamples=args.bootstrap_resamples, seed=args.bootstrap_seed),
    )


def run_cli(args) -> int:
    from tqdm.auto import tqdm

    from ..model.loading import load_model, set_threads
    from ..study.agreement import agreement_study
    from ..study.report import write_report

    config = config_from_args(args)
    config.validate()
    set_threads(args)
    t0 = time.perf_counter()
    loaded = load_model(args.model, args.device, args.dtype)
    if loaded.tokenizer is None:
        raise ValueError(f"model: {loaded.path} has no tokenizer; the study reads text")
    load_s = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bars = None if args.no_progress else (lambda stage, total: tqdm(total=total, desc=stage, leave=False))
    result = agreement_study(
        loaded.model,
        loaded.tokenizer,
        args.data,
        config,
        model_name=args.model or "demo",
        save_translators=out / "tuned_lens.safetensors"
        if args.lens == "tuned" and not args.translators
        else None,
        progress=bars,
    )
    result["timings"] = {"load_s": load_s, **result["timings"], "total_s": time.perf_counter() - t0}
    result["model"]["path"] = loaded.path
    files = write_report(result, out, plots=not args.no_plots)
    _print_summary(result, files)
    return 0


def _print_summary(result: dict, files) -> None:
    data, timings = result["data"], result["timings"]
    print(f"{result['model']['path']}: {data['tokens']} positions from {', '.join(data['sources'])}")
    print("times: " + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in timings.items()))
    from ..study.summary import ci_text

    for lens, res in result["lenses"].items():
        o = res["oracle"]
        ten = ci_text(o["share_10_layers_early"], o.get("share_10_layers_early_ci"), 1, 100)
        quarter = ci_text(o["share_quarter_early"], o.get("share_quarter_early_ci"), 1, 100)
        print(
            f"{lens} lens: mean oracle exit {ci_text(o['mean_depth'], o.get('mean_depth_ci'), 2)} of "
            f"{result['model']['num_layers']} layers; {ten}% of tokens >= 10 layers early, "
            f"{quarter}% >= a quarter of the depth early"
        )
    for c in result.get("claims") or []:
        print(f"claim: {c['statement']}: {ci_text(c['value'], c['ci'])} -> {c['verdict']}")
    print(f"wrote {len(files)} files to {files[0].parent} (summary.md)")
