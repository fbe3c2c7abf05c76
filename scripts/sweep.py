"""Train run configs × profiles (× κ) on the same data, steps and seed, and compare their attention.

    python scripts/sweep.py --configs configs/reference_A.yaml configs/ell2_only.yaml \\
        --profiles reference clean --set data.dataset=embedded --set train.steps=100 --out runs/sweep
    python scripts/sweep.py --configs configs/reference_A.yaml --profiles reference \\
        --kappas seed001 --set data.dataset=embedded --out runs/sweep_kappa     # seed 001's κ table

Writes OUT/sweep.json, sweep.csv, sweep.md and figures; every run is a resumable workdir under OUT/runs/.
"""

import sys

from gaugeformer.cli import sweep as main

if __name__ == "__main__":
    sys.exit(main())
