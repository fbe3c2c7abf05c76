"""Benchmark gaugeformer: throughput, compile time, memory, and growth with sequence length.

    python scripts/bench.py --config configs/reference_A.yaml --batch 8 --seq-len 128 [--json OUT]
    python scripts/bench.py --config configs/reference_A.yaml --batch 8 --sweep 128 512 2048 8192
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gaugeformer.bench import Point, growth_exponent, markdown, run_point  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", default=["configs/reference_A.yaml"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, nargs="+", default=[128])
    p.add_argument("--sweep", type=int, nargs="*", help="sequence lengths; stops at the first failure")
    p.add_argument("--vocab", type=int, help="override the data vocabulary (e.g. 256)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--json", help="write all rows as JSON")
    p.add_argument("--markdown", help="write the table as markdown")
    a = p.parse_args(argv)
    rows = []
    for config in a.config:
        lengths = a.sweep or a.seq_len
        for n in lengths:
            print(f"[bench] {config} B={a.batch} N={n} ...", flush=True)
            row = run_point(Point(config, a.batch, n, a.vocab, a.repeats, train=not a.no_train))
            rows.append(row)
            print(json.dumps(row), flush=True)
            if "error" in row and a.sweep:
                break
        ok = [r for r in rows if r["config"] == config and "error" not in r]
        if a.sweep and len(ok) > 1:
            n = [r["seq_len"] for r in ok]
            for key in ("forward_s", "train_step_s", "peak_rss_mb"):
                if all(key in r for r in ok):
                    print(f"[bench] {config}: {key} grows as N^{growth_exponent(n, [r[key] for r in ok]):.2f}")
    table = markdown(rows)
    print(table)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    if a.markdown:
        Path(a.markdown).write_text(table)


if __name__ == "__main__":
    main()
