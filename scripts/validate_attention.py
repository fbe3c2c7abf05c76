#!/usr/bin/env python
"""The 9-part attention validation report for every layer (``gaugeformer-validate``).

    python scripts/validate_attention.py --checkpoint tests/fixtures/T_A_v256/best_model.pt \
        --text "def f(x): return x" --json report.json --markdown report.md

The logic is :func:`diagnostics.cli.validate`; ``--help`` lists every flag.
"""

import sys

from diagnostics.cli import validate as main

if __name__ == "__main__":
    main(sys.argv[1:])
