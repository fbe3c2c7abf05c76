#!/usr/bin/env python
"""Per-layer attention analyzer: head heatmaps, all-heads grids, top-k, flow
(``gaugeformer-analyze``).

    python scripts/analyze_attention.py --text "The cat sat on the mat. It was fluffy." --top-k 5
    python scripts/analyze_attention.py --text "The cat sat" --embedding-dimension 25 \
        --number-of-heads 3 --number-of-layers 2          # random model; irreps printed

The logic is :func:`diagnostics.cli.analyze`; ``--help`` lists every flag.
"""

import sys

from diagnostics.cli import analyze as main

if __name__ == "__main__":
    main(sys.argv[1:])
