#!/usr/bin/env python
"""Per-layer attention figures with the full context (``gaugeformer-visualize``).

    python scripts/visualize_attention.py --checkpoint tests/fixtures/T_A_v256/best_model.pt \
        --text "def __init__(self, value):"

The logic is :func:`diagnostics.cli.visualize`; ``--help`` lists every flag.
"""

import sys

from diagnostics.cli import visualize as main

if __name__ == "__main__":
    main(sys.argv[1:])
