"""Peak resident memory of one greedy generate: HF ``model.generate`` and ``eedecode.generate``
with each way of packing the weights (``pack="copy"``, the default: a packed copy beside the
model; ``"in_place"``; ``"none"``), each in a fresh process, on the same model (default:
SmolLM2-135M, float32).

Each child loads the model, resets the kernel's high-water mark of its resident set
(``/proc/self/clear_refs``, Linux), runs one generate, and reports that peak (VmHWM) with the
resident set after loading and after the call (the packed copy stays in the model's memory while
the model lives)::

    python benchmarks/peak_rss.py --model smollm2 --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PROMPT = "def fibonacci(n):\n"


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(method: str, model_name: str, max_new_tokens: int, threads: int) -> dict:
    import resource

    import torch

    import eedecode
    from eedecode.model.loading import load_model

    torch.set_num_threads(threads)
    loaded = load_model(model_name, "cpu", "float32")
    ids = loaded.tokenizer(PROMPT, return_tensors="pt").input_ids
    after_load = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts from here
    kw = dict(max_new_tokens=max_new_tokens, do_sample=False)
    with torch.no_grad():
        if method == "hf":
            out = loaded.model.generate(ids, **kw, pad_token_id=loaded.tokenizer.eos_token_id)
        else:
            pack = method.split(":")[1]
            out = eedecode.generate(loaded.model, ids, mode="autoregressive", pack=pack, **kw)
    return {
        "method": method,
        "rss_after_load_mb": after_load / 1024,
        "peak_during_generate_mb": _status_kb("VmHWM") / 1024,
        "rss_after_generate_mb": _status_kb("VmRSS") / 1024,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tokens": out[0, ids.shape[1] :].tolist(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the record (JSON) here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.max_new_tokens, args.threads)))
        return 0
    rows = {}
    for method in ("hf", "eedecode:copy", "eedecode:in_place", "eedecode:none"):
        cmd = [sys.executable, __file__, "--child", method, "--model", args.model]
        cmd += ["--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows[method] = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        "| method | after load (MB) | peak during generate (MB) | after generate (MB) | same tokens as HF |"
    )
    print("|---|---:|---:|---:|---|")
    for r in rows.values():
        same = r["tokens"] == rows["hf"]["tokens"]
        print(
            f"| {r['method']} | {r['rss_after_load_mb']:.0f} | {r['peak_during_generate_mb']:.0f} | "
            f"{r['rss_after_generate_mb']:.0f} | {same} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
