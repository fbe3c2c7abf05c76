#!/usr/bin/env python
"""Benchmark of the validation report's metric part (not a test).

    python scripts/bench_diagnostics.py --layers 2 --batch 2 --seq-len 128 --repeats 7

The logic is :mod:`diagnostics.metrics_bench`; ``--help`` lists every flag.
"""

from diagnostics.metrics_bench import main

if __name__ == "__main__":
    main()
