"""Command line: ``eedecode generate``, ``eedecode bench``, ``eedecode train``.

All presentation (streaming text, colours, tables, progress bars) lives here and in the benchmark
module, never in the engine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .generation import MODES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def resolve_model_path(model: str | None) -> str:
    """``None`` or ``demo`` / ``demo-plain``: the shipped demo checkpoints; otherwise a path or hub id."""
    from . import demo

    if model is None or model in ("demo", "demo-early-exit"):
        return str(demo.demo_model_path("early_exit"))
    if model == "demo-plain":
        return str(demo.demo_model_path("plain"))
    return model


def load_model(model: str | None, device: str = "auto", dtype: str = "auto"):
    """Load ``(model, tokenizer, path)`` for the CLI and the benchmarks (offline for the demos)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(model)
    dev = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    net = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype, dev)).to(dev).eval()
    return net, tokenizer, path


def recommended_settings(path: str) -> dict:
    """Exit layer and draft length recommended for a checkpoint (``eedecode.json`` beside it)."""
    f = Path(path) / "eedecode.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=None, help="checkpoint path or hub id; default: the shipped early-exit demo model"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--dtype", default="auto", choices=["auto", *DTYPES], help="auto: float32 on CPU, bfloat16 on CUDA"
    )


def add_decoding_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", default="self_speculative", choices=MODES)
    p.add_argument(
        "--exit-layer",
        type=int,
        default=None,
        help="draft with layers [0, E); default: the checkpoint's recommendation or L/4",
    )
    p.add_argument(
        "--num-speculations",
        type=int,
        default=None,
        help="draft length k; default: the checkpoint's recommendation or 4",
    )
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--do-sample", action="store_true")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)


def decoding_kwargs(args, model, path: str) -> dict:
    rec = recommended_settings(path)
    L = model.config.num_hidden_layers
    kw = dict(
        mode=args.mode,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    if args.mode == "self_speculative":
        kw["exit_layer"] = args.exit_layer or rec.get("exit_layer") or max(1, L // 4)
        kw["num_speculations"] = args.num_speculations or rec.get("num_speculations") or 4
    return kw


def cmd_generate(args) -> int:
    from transformers import TextStreamer

    from .generation import generate

    model, tokenizer, path = load_model(args.model, args.device, args.dtype)
    prompt = args.prompt.replace("\\n", "\n").replace("\\t", "\t")  # typed escapes
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    streamer = (
        None if args.no_stream else TextStreamer(tokenizer, skip_prompt=False, skip_special_tokens=True)
    )
    out = generate(
        model, **inputs, **decoding_kwargs(args, model, path), streamer=streamer, return_dict_in_generate=True
    )
    if args.no_stream:
        print(tokenizer.decode(out.sequences[0], skip_special_tokens=True))
    print(f"\n[eedecode] {path}\n[eedecode] {out.stats.summary()}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eedecode", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text, streaming it, and print the decoding statistics")
    add_model_arguments(g)
    add_decoding_arguments(g)
    g.add_argument(
        "--no-stream", action="store_true", help="print the text at the end instead of streaming it"
    )
    g.add_argument(
        "prompt", nargs="?", default="def fibonacci(n):\n", help="the prompt text (\\n, \\t: newline, tab)"
    )
    g.set_defaults(func=cmd_generate)

    from . import bench, train

    b = sub.add_parser("bench", help="tokens/s of HF generate, HF assistant_early_exit and eedecode")
    add_model_arguments(b)
    bench.add_arguments(b)
    b.set_defaults(func=bench.run_cli)

    t = sub.add_parser(
        "train", help="train a small LLaMA (plain or early-exit) on the Python standard library"
    )
    train.add_train_arguments(t)
    t.set_defaults(func=train.run_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:  # bad input: one clear line, no traceback
        parser.exit(2, f"eedecode {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
