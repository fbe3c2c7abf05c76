"""Benchmark gaugeformer: throughput, compile time, peak memory, and growth with sequence length.

    python scripts/bench.py --batch 8 --seq-len 128                      # config A, V=50257: forward + train
    python scripts/bench.py --batch 8 --vocab 256 --sweep 128 512 2048 8192 --train-max 2048

A sweep measures the forward and the train step of each length in separate processes (each its own peak
RSS) and prints the growth exponents of time and peak memory.  ``--markdown`` writes the tables for README.
"""

import sys

from gaugeformer.bench import main

if __name__ == "__main__":
    sys.exit(main())
