#!/usr/bin/env python
"""Recency and context-compression analysis of attention (``gaugeformer-recency``).

    python scripts/attention_recency.py --samples 5 --dataset wikitext-2 --seq-len 128

The logic is :func:`diagnostics.cli.recency`; ``--help`` lists every flag.
"""

import sys

from diagnostics.cli import recency as main

if __name__ == "__main__":
    main(sys.argv[1:])
