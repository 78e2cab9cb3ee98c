"""``eedecode generate``: load a model, stream a continuation of the prompt (or of a chat turn),
and print what the call did in words."""

from __future__ import annotations

import argparse
import sys

from ..model.loading import add_model_arguments, describe_model, load_model, set_threads
from .arguments import add_decoding_arguments, decoding_kwargs

HELP = "generate text, streaming it, and print the decoding statistics"
DEFAULT_PROMPT = (
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
)


def add_subcommand(subparsers) -> None:
    g = subparsers.add_parser("generate", help=HELP)
    add_model_arguments(g)
    add_decoding_arguments(g)
    g.add_argument(
        "--no-stream", action="store_true", help="print the text at the end instead of streaming it"
    )
    g.add_argument(
        "--chat",
        action="store_true",
        help="send the prompt as a user message through the tokenizer's chat template",
    )
    g.add_argument("--system", default=None, help="with --chat: a system message before it")
    g.add_argument(
        "prompt", nargs="?", default=DEFAULT_PROMPT, help="the prompt text (\\n, \\t: newline, tab)"
    )
    g.set_defaults(func=run)


def encode(tokenizer, args: argparse.Namespace, device):
    """The prompt as model inputs: raw text, or a chat turn through the tokenizer's template."""
    prompt = args.prompt.replace("\\n", "\n").replace("\\t", "\t")  # typed escapes
    if args.system is not None and not args.chat:
        raise ValueError("--system: only with --chat")
    if not args.chat:
        return tokenizer(prompt, return_tensors="pt").to(device)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("--chat: this model's tokenizer has no chat template; send plain text instead")
    messages = ([{"role": "system", "content": args.system}] if args.system is not None else []) + [
        {"role": "user", "content": prompt}
    ]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    return {"input_ids": ids.to(device)}


def run(args: argparse.Namespace) -> int:
    from transformers import TextStreamer

    from ..api.generation import generate

    set_threads(args)
    print(f"[eedecode] loading {describe_model(args.model)} ...", file=sys.stderr, flush=True)
    loaded = load_model(args.model, args.device, args.dtype)
    if loaded.tokenizer is None:
        raise ValueError(f"model: {loaded.path} has no tokenizer; `eedecode generate` needs one")
    model, tokenizer = loaded.model, loaded.tokenizer
    inputs = encode(tokenizer, args, model.device)
    kwargs = decoding_kwargs(args, loaded.settings)
    if kwargs.get("mode") == "self_speculative":  # its estimate over plain decoding needs the table
        from ..model.costs import linear_block_costs
        from ..model.runner import ModelRunner

        k = kwargs.get("num_speculations") or 4
        linear_block_costs(ModelRunner(model), inputs["input_ids"].shape[0], k + 1)
    streamer = (
        None if args.no_stream else TextStreamer(tokenizer, skip_prompt=args.chat, skip_special_tokens=True)
    )
    out = generate(
        model,
        **inputs,
        **kwargs,
        streamer=streamer,
        return_dict_in_generate=True,
    )
    if args.no_stream:
        start = inputs["input_ids"].shape[1] if args.chat else 0
        print(tokenizer.decode(out.sequences[0, start:], skip_special_tokens=True))
    summary = out.stats.summary().replace("\n", "\n[eedecode] ")
    print(f"\n[eedecode] {loaded.path}\n[eedecode] {summary}", file=sys.stderr)
    return 0
