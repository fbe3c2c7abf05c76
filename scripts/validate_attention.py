#!/usr/bin/env python
"""The 9-part attention validation report (seed 000) for every layer, plus seed 001's κ sweep
and per-irrep table, with real gradient flow and a real ablation.

    python scripts/validate_attention.py --checkpoint tests/fixtures/T_A_v256/best_model.pt \\
        --text "def f(x): return x" --json report.json --markdown report.md
    python scripts/validate_attention.py --checkpoint runs/tiny/checkpoints \\
        --dataset wikitext-2 --seq_len 128 --batch 4
    python scripts/validate_attention.py --config configs/tiny.yaml --random --seq_len 64

All logic lives in :mod:`diagnostics.run` (``run_report``); ``--help`` lists every flag.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diagnostics.run import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:])
