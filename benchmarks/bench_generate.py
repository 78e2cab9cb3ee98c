"""Tokens/s of HF generate, HF assisted decoding (assistant_early_exit, prompt lookup) and every
registered eedecode mode on a model (path, ``demo``, ``demo-plain``, ``smollm2`` or
``synthetic:<shape>``), with the ideal speed-up and efficiency of self-speculation.

Same code as ``eedecode bench`` (:mod:`eedecode.bench`); for example::

    python benchmarks/bench_generate.py --model demo --batch-sizes 1,4,16 --threads 1
    python benchmarks/bench_generate.py --model demo --sweep
    python benchmarks/bench_generate.py --model synthetic:llama-3.2-1b --synthetic-agreement 0.8 --device cuda
"""

import sys

from eedecode.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
