"""Train run configs × profiles (× κ) on the same data, steps and seed, and compare their attention.

    python scripts/sweep.py --configs configs/reference_A.yaml configs/ell2_only.yaml \\
        --profiles reference clean --set data.dataset=embedded --set train.steps=100 --out runs/sweep
    python scripts/sweep.py --configs configs/reference_A.yaml --profiles reference \\
        --kappas seed001 --set data.dataset=embedded --out runs/sweep_kappa     # seed 001's κ table

Writes OUT/sweep.json, sweep.csv, sweep.md and figures; every run is a resumable workdir under OUT/runs/.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gaugeformer.train.config import ConfigError  # noqa: E402
from gaugeformer.train.sweep import run_sweep  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", required=True, help="run YAML files")
    parser.add_argument("--profiles", nargs="+", default=["reference", "clean"], choices=["reference", "clean"])
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                        metavar="SECTION.KEY=VALUE", help="override applied to every run (repeatable)")
    parser.add_argument("--out", required=True, help="sweep directory (rerun to resume)")
    parser.add_argument("--kappas", nargs="+", default=None, metavar="K",
                        help="κ mode: numbers and/or 'seed001' (the seed's κ values scaled to each config)")
    parser.add_argument("--windows", type=int, default=4, help="validation windows measured per run")
    parser.add_argument("--in-process", action="store_true",
                        help="train every run in this process (faster start; peak RSS is then cumulative)")
    parser.add_argument("--no-figures", action="store_true")
    args = parser.parse_args(argv)
    try:
        run_sweep(args.configs, args.profiles, args.overrides, args.out, kappas=args.kappas,
                  windows=args.windows, isolate=not args.in_process, figures=not args.no_figures)
    except ConfigError as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
