"""Export a checkpoint's first ``E`` layers, its embedding, final norm and LM head as a standalone
checkpoint, for vLLM's ``draft_model`` speculative method.

This is the alternative to :mod:`eedecode.serving.vllm` that needs no code inside vLLM: the
truncated model is an ordinary checkpoint, so it drafts exactly what the exit layer would. It is
a second copy of those weights, though (the embedding and LM head dominate small models), and
vLLM runs it as a separate model with its own KV cache and step machinery, which on the CPU
costs more per draft than the in-process drafter (docs/vllm.md has the measurements)::

    python -m eedecode.serving.export MODEL_DIR OUT_DIR --exit-layer 2
    vllm serve MODEL_DIR --speculative-config \
        '{"method": "draft_model", "model": "OUT_DIR", "num_speculative_tokens": 4}'
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

#: Files copied beside the weights when present.
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
)


def _layer(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[:2] == ["model", "layers"] else None


def export_truncated(source: str | Path, target: str | Path, exit_layer: int) -> dict:
    """Write layers ``[0, exit_layer)`` plus everything outside the layer stack to ``target``;
    returns the parameter counts of the copy and of the source."""
    source, target = Path(source), Path(target)
    config = json.loads((source / "config.json").read_text())
    if not 1 <= exit_layer < config["num_hidden_layers"]:
        raise ValueError(f"exit_layer: must be in [1, {config['num_hidden_layers'] - 1}], got {exit_layer}")
    files = sorted(source.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {source}")
    weights, total = {}, 0
    for f in files:
        for name, tensor in load_file(f).items():
            total += tensor.numel()
            layer = _layer(name)
            if layer is None or layer < exit_layer:
                weights[name] = tensor
    target.mkdir(parents=True, exist_ok=True)
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    (target / "config.json").write_text(json.dumps({**config, "num_hidden_layers": exit_layer}, indent=2))
    for name in SIDE_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, target / name)
    return {"copied_parameters": sum(t.numel() for t in weights.values()), "source_parameters": total}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Export a checkpoint's first layers for vLLM's draft_model.")
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument("--exit-layer", type=int, required=True)
    args = p.parse_args(argv)
    counts = export_truncated(args.source, args.target, args.exit_layer)
    share = counts["copied_parameters"] / counts["source_parameters"]
    print(f"wrote {args.target}: {counts['copied_parameters']:,} parameters, {share:.0%} of the source's")


if __name__ == "__main__":
    main()
