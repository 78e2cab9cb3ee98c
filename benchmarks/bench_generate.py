"""Tokens/s of HF generate, HF assistant_early_exit, eedecode autoregressive and eedecode
self-speculative on a model (path, hub id, ``demo``, ``demo-plain`` or ``synthetic:<shape>``).

Same code as ``eedecode bench``; for example::

    python benchmarks/bench_generate.py --model demo --batch-sizes 1,4,16
    python benchmarks/bench_generate.py --model demo --sweep
    python benchmarks/bench_generate.py --model synthetic:llama-3.2-1b --synthetic-agreement 0.8 --device cuda
"""

import sys

from eedecode.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
