"""Peak resident memory of one greedy generate: HF ``model.generate`` and ``eedecode.generate``, each
in a fresh process, on the same model (default: SmolLM2-135M, float32).

Each child loads the model, resets the kernel's high-water mark of its resident set
(``/proc/self/clear_refs``, Linux), runs one generate, and reports that peak (VmHWM) with the
resident set after loading and ``resource.getrusage``'s ``ru_maxrss`` (the peak of the whole
process, loading included). eedecode's first call packs the weights in place
(eedecode/model/packing.py), so its peak includes packing::

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
            out = eedecode.generate(loaded.model, ids, mode="autoregressive", **kw)
    return {
        "method": method,
        "rss_after_load_mb": after_load / 1024,
        "peak_during_generate_mb": _status_kb("VmHWM") / 1024,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tokens": out[0, ids.shape[1] :].tolist(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.max_new_tokens, args.threads)))
        return 0
    rows = {}
    for method in ("hf", "eedecode"):
        cmd = [sys.executable, __file__, "--child", method, "--model", args.model]
        cmd += ["--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows[method] = json.loads(done.stdout.strip().splitlines()[-1])
    for r in rows.values():
        print(
            f"{r['method']:>9}: after load {r['rss_after_load_mb']:.0f} MB, peak during generate "
            f"{r['peak_during_generate_mb']:.0f} MB, ru_maxrss {r['ru_maxrss_mb']:.0f} MB"
        )
    hf, ee = rows["hf"]["peak_during_generate_mb"], rows["eedecode"]["peak_during_generate_mb"]
    same = rows["hf"]["tokens"] == rows["eedecode"]["tokens"]
    print(f"eedecode / HF peak during generate: {ee / hf:.3f}; same tokens: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
