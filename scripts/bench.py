"""Benchmark gaugeformer: throughput, compile time, peak memory, and growth with sequence length.

    python scripts/bench.py --batch 8 --seq-len 128                      # config A, V=50257: forward + train
    python scripts/bench.py --batch 8 --vocab 256 --sweep 128 512 2048 8192 --train-max 2048

A sweep measures the forward and the train step of each length in separate processes (each its own peak
RSS) and prints the growth exponents of time and peak memory.  ``--markdown`` writes the tables for README.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gaugeformer.bench import Point, growth_table, markdown, run_point  # noqa: E402


def points(a) -> list[Point]:
    tile = {"config": -1, "none": None}[a.tile] if a.tile in ("config", "none") else int(a.tile)
    out = []
    for config in a.config:
        if a.sweep:
            for n in a.sweep:
                out.append(Point(config, a.batch, n, a.vocab, a.repeats, forward=True, train=False, tile=tile))
                if not a.no_train and n <= a.train_max:
                    out.append(Point(config, a.batch, n, a.vocab, a.repeats, forward=False, train=True, tile=tile))
        else:
            out += [Point(config, a.batch, n, a.vocab, a.repeats, train=not a.no_train, tile=tile)
                    for n in a.seq_len]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", default=["configs/reference_A.yaml"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, nargs="+", default=[128])
    p.add_argument("--sweep", type=int, nargs="*", help="sequence lengths (forward and train as separate rows)")
    p.add_argument("--train-max", type=int, default=2048, help="longest sequence of the sweep's train rows")
    p.add_argument("--vocab", type=int, help="override the data vocabulary (e.g. 256)")
    p.add_argument("--tile", default="config", help="attention_tile: an int, 'none' (one tile) or 'config'")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per measurement point")
    p.add_argument("--json", help="write all rows as JSON")
    p.add_argument("--markdown", help="write the tables as markdown")
    a = p.parse_args(argv)
    rows = []
    for point in points(a):
        print(f"[bench] {point.config} B={point.batch} N={point.seq_len} "
              f"{'forward' if point.forward else ''}{'+' if point.forward and point.train else ''}"
              f"{'train' if point.train else ''} ...", flush=True)
        row = run_point(point, timeout=a.timeout)
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = markdown(rows)
    if a.sweep:
        table += "\n" + growth_table(rows)
    print(table)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    if a.markdown:
        Path(a.markdown).write_text(table)


if __name__ == "__main__":
    main()
