"""Benchmark of the fused exit head (RMSNorm -> LM head -> softmax statistics) on a CUDA GPU.

Providers: `triton` (eedecode.kernels.exit_head, the shipped per-T config), `torch` (eager:
norm -> matmul -> [T, V] logits -> softmax -> statistics) and `compile` (torch.compile of that same
function, dynamic shapes). For each (V, H, T), bf16: the median time (triton.testing.do_bench: CUDA
events, L2 flushed, warm-up excluded), the achieved bandwidth of the bytes that must be read
(W + hidden + norm weight) against the device-to-device copy bandwidth measured here, and the peak
memory each provider allocates beyond its inputs. `--sweep` first times candidate Triton configs on
the Llama-3 head (V = 128256, H = 4096). Prints a markdown table and a JSON record; asserts nothing
about time.

    python benchmarks/bench_exit_head.py [--quick] [--sweep] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from eedecode.kernels import exit_head
from eedecode.kernels import exit_head_triton as kt

EPS = 1e-5
VOCABS, HIDDENS, TOKENS = (32000, 128256, 151936), (2048, 4096), (1, 4, 8, 16, 128, 2048)
QUICK = [(32000, 2048, t) for t in (1, 16, 128)] + [(128256, 4096, t) for t in (1, 16, 128)]
C = kt.ExitHeadConfig  # (tile_t, block_v, block_h, num_warps, num_stages, programs_per_sm, prenorm)
SWEEP = {  # tier -> (token counts timed, candidate configs); none of them spills registers on sm_90
    "T<=16": (
        (1, 16),
        [
            C(16, 64, 128, 4, 4, 2),
            C(16, 64, 128, 8, 4, 2),
            C(16, 128, 64, 4, 4, 2),
            C(16, 64, 256, 4, 3, 2),
            C(16, 128, 128, 4, 4, 1),
            C(16, 64, 128, 4, 4, 3),
            C(16, 32, 128, 4, 5, 2),
            C(16, 64, 128, 4, 4, 2, True),
        ],
    ),
    "16<T<=64": (
        (64,),
        [
            C(64, 128, 64, 8, 3, 2, True),
            C(64, 64, 64, 4, 4, 2, True),
            C(32, 64, 128, 4, 4, 2, True),
        ],
    ),
    "T>64": (
        (128, 2048),
        [
            C(128, 64, 64, 8, 3, 2, True),
            C(128, 64, 128, 8, 3, 1, True),
            C(64, 128, 64, 8, 3, 2, True),
            C(64, 64, 128, 4, 3, 2, True),
            C(128, 64, 64, 8, 4, 2, True),
        ],
    ),
}


def torch_exit_head(hidden, norm_weight, eps, weight):
    """Eager baseline: what a model does today, materialising [T, V] logits."""
    x32 = hidden.float()
    h = norm_weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(hidden.dtype)
    logits = F.linear(h, weight).float()  # [T, V]
    lse = torch.logsumexp(logits, -1)
    logp = logits - lse[:, None]
    entropy = -(logp.exp() * logp).sum(-1)
    top = logits.topk(2, -1)
    max_prob = (top.values[:, 0] - lse).exp()
    return top.indices[:, 0], max_prob, entropy, lse, max_prob - (top.values[:, 1] - lse).exp()


def triton_provider(config=None):
    if config is None:
        return lambda x, nw, eps, w: exit_head(x, nw, eps, w, backend="triton")
    return lambda x, nw, eps, w: kt.exit_head_triton(x, nw, eps, w, config=config)


def time_ms(fn, args, warmup_ms, rep_ms):
    fn(*args)  # compiles
    torch.cuda.synchronize()
    return do_bench(lambda: fn(*args), warmup=warmup_ms, rep=rep_ms, return_mode="median")


def peak_mib(fn, args):
    """Memory allocated by one call beyond what is live before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn(*args)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def copy_bandwidth_gbs(nbytes=2**30):
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * nbytes / ms / 1e6  # bytes read + written


def machine_record():
    props = torch.cuda.get_device_properties(0)
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        driver = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        driver = None
    return dict(
        gpu=props.name,
        sms=props.multi_processor_count,
        memory_gib=round(props.total_memory / 2**30, 1),
        driver=driver,
        host=platform.node(),
        python=platform.python_version(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        triton=triton.__version__,
    )


def inputs(V, H, T, gen):
    w = (torch.randn(V, H, device="cuda", generator=gen) * 0.02).bfloat16()
    nw = (1 + 0.1 * torch.randn(H, device="cuda", generator=gen)).bfloat16()
    x = torch.randn(T, H, device="cuda", generator=gen).bfloat16()
    return x, nw, w


def sweep(args, gen):
    V, H, rows = 128256, 4096, []
    for tier, (tokens, configs) in SWEEP.items():
        for T in tokens:
            x, nw, w = inputs(V, H, T, gen)
            for cfg in configs:
                try:
                    ms = time_ms(triton_provider(cfg), (x, nw, EPS, w), args.warmup, args.rep)
                except Exception as err:  # e.g. out of shared memory: reported, not fatal
                    ms = None
                    print(f"sweep {tier} T={T} {cfg}: {err!r:.200}", flush=True)
                rows.append(dict(tier=tier, V=V, H=H, T=T, ms=ms, **asdict(cfg)))
                if ms is not None:
                    print(f"sweep {tier} T={T} {cfg}: {ms * 1e3:.1f} us", flush=True)
            del x, nw, w
    return rows


def check(x, nw, w):
    """Kernel vs eager on the same inputs: argmax agreement and the largest logsumexp gap."""
    ours = exit_head(x, nw, EPS, w, backend="triton")
    theirs = torch_exit_head(x, nw, EPS, w)
    agree = (ours.argmax == theirs[0]).float().mean().item()
    return agree, (ours.logsumexp - theirs[3]).abs().max().item()


def bench_shape(V, H, T, providers, copy_gbs, args, gen, deadline):
    x, nw, w = inputs(V, H, T, gen)
    nbytes = (V * H + T * H + H) * 2
    row = dict(V=V, H=H, T=T, bytes=nbytes, config=asdict(kt.default_config(T)))
    row["argmax_agree"], row["lse_max_abs_diff"] = check(x, nw, w)
    for name, fn in providers.items():
        if name == "compile" and time.monotonic() > deadline:
            row[f"{name}_ms"] = row[f"{name}_peak_mib"] = None  # out of time budget: compiles are slow
            continue
        try:
            row[f"{name}_ms"] = time_ms(fn, (x, nw, EPS, w), args.warmup, args.rep)
            row[f"{name}_peak_mib"] = peak_mib(fn, (x, nw, EPS, w))
        except Exception as err:  # a baseline that fails is reported, not fatal
            row[f"{name}_ms"] = row[f"{name}_peak_mib"] = None
            row[f"{name}_error"] = repr(err)[:200]
    ms = row["triton_ms"]
    row["triton_gbs"] = nbytes / ms / 1e6
    row["triton_frac_copy_bw"] = row["triton_gbs"] / copy_gbs
    del x, nw, w
    torch.cuda.empty_cache()
    return row


def markdown(rows, copy_gbs, machine):
    def fmt(v, spec):
        return "—" if v is None else format(v, spec)

    lines = [
        f"Device: {machine['gpu']} ({machine['sms']} SMs), driver {machine['driver']}; torch "
        f"{machine['torch']} (CUDA {machine['cuda']}), triton {machine['triton']}. Measured "
        f"device-to-device copy bandwidth: {copy_gbs:.0f} GB/s (read + write). bf16 inputs; "
        "times are medians in microseconds.",
        "",
        "| V | H | T | triton µs | GB/s | % of copy BW | eager µs | compile µs | × eager | × compile "
        "| peak MiB triton / eager / compile |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t, e, c = r["triton_ms"], r.get("torch_ms"), r.get("compile_ms")
        lines.append(
            f"| {r['V']} | {r['H']} | {r['T']} | {t * 1e3:.1f} | {r['triton_gbs']:.0f} | "
            f"{100 * r['triton_frac_copy_bw']:.1f} | {fmt(e and e * 1e3, '.1f')} | "
            f"{fmt(c and c * 1e3, '.1f')} | {fmt(e and e / t, '.2f')} | {fmt(c and c / t, '.2f')} | "
            f"{r['triton_peak_mib']:.2f} / {fmt(r.get('torch_peak_mib'), '.0f')} / "
            f"{fmt(r.get('compile_peak_mib'), '.0f')} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small subset of shapes")
    parser.add_argument("--sweep", action="store_true", help="time candidate Triton configs first")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument(
        "--compile-budget-s", type=float, default=240.0, help="stop timing torch.compile after"
    )
    parser.add_argument("--warmup", type=float, default=25.0, help="do_bench warm-up, ms")
    parser.add_argument("--rep", type=float, default=100.0, help="do_bench repetition time, ms")
    parser.add_argument("--out", default=None, help="directory for bench_exit_head.{md,json}")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_exit_head.py needs a CUDA device")

    torch._dynamo.config.cache_size_limit = 64
    gen = torch.Generator(device="cuda").manual_seed(0)
    machine = machine_record()
    copy_gbs = copy_bandwidth_gbs()
    print(json.dumps(machine), f"copy bandwidth {copy_gbs:.0f} GB/s", flush=True)
    record = dict(machine=machine, copy_gbs=copy_gbs, sweep=sweep(args, gen) if args.sweep else None, rows=[])

    providers = {"triton": triton_provider(), "torch": torch_exit_head}
    if not args.no_compile:
        providers["compile"] = torch.compile(torch_exit_head, dynamic=True)
    shapes = QUICK if args.quick else [(V, H, T) for V in VOCABS for H in HIDDENS for T in TOKENS]
    deadline = time.monotonic() + args.compile_budget_s
    for V, H, T in shapes:
        record["rows"].append(bench_shape(V, H, T, providers, copy_gbs, args, gen, deadline))
        print(json.dumps(record["rows"][-1]), flush=True)
        if args.out:  # keep partial results if the run is cut short
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "bench_exit_head.json"), "w") as f:
                json.dump(record, f, indent=1)
    table = markdown(record["rows"], copy_gbs, machine)
    print(table)
    if args.out:
        with open(os.path.join(args.out, "bench_exit_head.md"), "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
