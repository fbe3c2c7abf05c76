#!/usr/bin/env python
"""Convert a PyTorch reference checkpoint into a gaugeformer orbax checkpoint
(``gaugeformer-convert``).

    python scripts/convert_checkpoint.py tests/fixtures/T_A_v256/best_model.pt --out /tmp/T_A \
        --validate tests/fixtures/T_A_v256/golden.npz

The logic is :func:`gaugeformer.cli.convert`; ``--help`` lists every flag.
"""

import sys

from gaugeformer.cli import convert as main

if __name__ == "__main__":
    sys.exit(main())
