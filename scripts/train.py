"""Train a gauge transformer from a YAML run file; rerunning on the same workdir resumes.

    python scripts/train.py --config configs/tiny.yaml --workdir runs/tiny
    python scripts/train.py --config configs/publication_D.yaml --workdir runs/D \\
        --set train.steps=2000 --set model.kappa_beta=0.5

Multi-host (every host runs the same command; see README): add ``--set train.distributed=true``.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gaugeformer.train.config import ConfigError, load_run_config  # noqa: E402
from gaugeformer.train.loop import enable_compilation_cache, train_and_evaluate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="YAML run file (configs/*.yaml)")
    parser.add_argument("--workdir", required=True, help="run directory (resumed if it exists)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)")
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="do not use the persistent XLA cache (~/.cache/gaugeformer/jax)")
    args = parser.parse_args(argv)
    try:
        run_cfg = load_run_config(args.config, args.overrides)
    except ConfigError as err:
        parser.error(str(err))
    if not args.no_compile_cache:
        enable_compilation_cache()
    try:
        summary = train_and_evaluate(run_cfg, args.workdir)
    except FloatingPointError as err:
        print(f"\n[train] stopped: {err}", file=sys.stderr)
        return 3
    print(json.dumps(summary, indent=2, default=str))
    if summary["status"] != "interrupted":
        return 0
    return 143 if summary["stop_signal"] in ("SIGTERM", "preemption") else 130


if __name__ == "__main__":
    sys.exit(main())
