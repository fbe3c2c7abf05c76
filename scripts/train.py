#!/usr/bin/env python
"""Train from a YAML run file; rerunning on the same workdir resumes (``gaugeformer-train``).

    python scripts/train.py --config configs/tiny.yaml --workdir runs/tiny

The logic is :func:`gaugeformer.cli.train`; ``--help`` lists every flag.
"""

import sys

from gaugeformer.cli import train as main

if __name__ == "__main__":
    sys.exit(main())
