"""Benchmarks: compile time, forward / train-step throughput, peak memory, N-sweeps with growth exponents.

Each measurement point runs in a fresh subprocess so peak RSS (``ru_maxrss``) belongs to that point alone
(a sweep measures the forward and the train step in separate points, so each has its own peak); times are
medians of repeated runs after warm-up, with ``block_until_ready``.  Results are JSON rows and a markdown
table (``scripts/bench.py``).  The library's benchmark measures the library only (no diagnostics).
"""

import argparse
import dataclasses
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


@dataclasses.dataclass
class Point:
    config: str
    batch: int
    seq_len: int
    vocab: int | None = None
    repeats: int = 5
    forward: bool = True
    train: bool = True
    tile: int | None = -1  # attention_tile; -1 keeps the config's
    malloc: str = "hugetlb"  # glibc malloc: "hugetlb" (transparent huge pages for large blocks) or "default"


MIN_SECONDS = 4.0  # time more than ``repeats`` runs while they add up to less than this


def _median_time(fn, repeats: int, min_seconds: float = MIN_SECONDS) -> float:
    """Median wall time of ``fn()`` over at least ``repeats`` runs after a warm-up, and over more (up to 100)
    while they add up to less than ``min_seconds``.  A shared VM has bursts of slow steps lasting about a
    second (config A's train step: 210-230 ms, bursts of 300-340 ms); five runs can land in one."""
    import jax

    jax.block_until_ready(fn())  # warm-up
    times = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < 100):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(point: Point) -> dict:
    """Run every measurement for one (config, batch, seq_len) in this process."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from gaugeformer.loss import free_energy_loss
    from gaugeformer.model.lm import GaugeTransformerLM
    from gaugeformer.train.config import load_run_config
    from gaugeformer.train.optim import OptimConfig, make_optimizer

    overrides = [f"model.max_seq_len={max(point.seq_len, 8)}", f"data.seq_len={point.seq_len}"]
    if point.vocab:
        overrides.append(f"data.vocab_size={point.vocab}")
    cfg = load_run_config(point.config, overrides).model
    if point.tile != -1:
        cfg = cfg.replace(attention_tile=point.tile)
    b, n, v, k = point.batch, point.seq_len, cfg.vocab_size, cfg.embed_dim
    tokens = jax.random.randint(jax.random.key(0), (b, n), 0, v)
    targets = jnp.roll(tokens, -1, axis=1)
    model = GaugeTransformerLM(cfg, rngs=nnx.Rngs(0))
    row = dict(config=point.config, batch=b, seq_len=n, vocab=v, embed_dim=k, heads=cfg.n_heads,
               layers=cfg.n_layers, tile=cfg.attention_tile, mode=_mode(point), malloc=point.malloc,
               device=jax.devices()[0].device_kind, backend=jax.default_backend())

    if point.forward:
        fwd = nnx.jit(lambda m, t: m(t))
        t0 = time.perf_counter()
        jax.block_until_ready(fwd(model, tokens))
        row["compile_forward_s"] = time.perf_counter() - t0
        row["forward_s"] = _median_time(lambda: fwd(model, tokens), point.repeats)
        row["forward_tok_s"] = b * n / row["forward_s"]

        mu = jax.random.normal(jax.random.key(1), (b * n, k))
        w = model.output_weight
        gemm = jax.jit(lambda a, w: a @ w.T)
        row["output_gemm_s"] = _median_time(lambda: gemm(mu, w), point.repeats)
        row["forward_over_gemm"] = row["forward_s"] / row["output_gemm_s"]

    if point.train:
        optimizer = nnx.Optimizer(model, make_optimizer(OptimConfig()), wrt=nnx.Param)

        @nnx.jit(donate_argnames=("model", "optimizer"))
        def step(model, optimizer, x, y):
            (loss, _), grads = nnx.value_and_grad(lambda m: free_energy_loss(m, x, y), has_aux=True)(model)
            optimizer.update(model, grads)
            return loss

        t0 = time.perf_counter()
        jax.block_until_ready(step(model, optimizer, tokens, targets))
        row["compile_train_s"] = time.perf_counter() - t0
        row["train_step_s"] = _median_time(lambda: step(model, optimizer, tokens, targets), point.repeats)
        row["train_tok_s"] = b * n / row["train_step_s"]

    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if jax.default_backend() != "cpu":
        stats = jax.devices()[0].memory_stats() or {}
        row["peak_device_mb"] = stats.get("peak_bytes_in_use", 0) / 2**20
    return row


def _mode(point: Point) -> str:
    return "+".join(m for m, on in (("forward", point.forward), ("train", point.train)) if on)


def run_point(point: Point, timeout: float = 1800) -> dict:
    """Measure ``point`` in a subprocess; a crash or OOM becomes ``{"error": ...}``."""
    cmd = [sys.executable, "-m", "gaugeformer.bench", json.dumps(dataclasses.asdict(point))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=malloc_env(point.malloc))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT"):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return dict(dataclasses.asdict(point), mode=_mode(point), error=" | ".join(tail) or f"exit {proc.returncode}")


HUGETLB = "glibc.malloc.hugetlb=1"


def malloc_env(malloc: str, environ=None) -> dict:
    """The environment of a measurement process.  ``"hugetlb"`` adds glibc's ``malloc.hugetlb=1`` tunable:
    large blocks get transparent huge pages, so a fresh buffer costs one page fault per 2 MB instead of per
    4 KB.  On the development VM writing a new 206 MB buffer (the ``[8, 128, 50257]`` logits) takes 91 ms
    without and 21 ms with it; glibc reads tunables only at process start, hence a subprocess setting."""
    env = dict(os.environ if environ is None else environ)
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":")
                if t and not t.startswith("glibc.malloc.hugetlb")]
    if malloc == "hugetlb":
        tunables.append(HUGETLB)
    elif malloc != "default":
        raise ValueError(f"malloc={malloc!r}; expected 'hugetlb' or 'default'")
    env["GLIBC_TUNABLES"] = ":".join(tunables)
    return env


def growth_table(rows: list[dict]) -> str:
    """Markdown: per mode, the exponent p of ``time ∝ N^p`` and ``peak RSS ∝ N^p`` (least squares over the
    sweep, and between consecutive lengths)."""
    out = ["| mode | quantity | N range | exponent |", "|---|---|---|---|"]
    for mode, key in (("forward", "forward_s"), ("train", "train_step_s")):
        ok = sorted((r for r in rows if r.get("mode") == mode and "error" not in r), key=lambda r: r["seq_len"])
        if len(ok) < 2:
            continue
        n = [r["seq_len"] for r in ok]
        for qty in (key, "peak_rss_mb"):
            y = [r[qty] for r in ok]
            out.append(f"| {mode} | {qty} | {n[0]}–{n[-1]} | {growth_exponent(n, y):.2f} |")
            for a in range(len(n) - 1 if len(n) > 2 else 0):
                out.append(f"| {mode} | {qty} | {n[a]}–{n[a + 1]} | {growth_exponent(n[a:a + 2], y[a:a + 2]):.2f} |")
    return "\n".join(out) + "\n"


def growth_exponent(xs, ys) -> float:
    """Least-squares slope of log y against log x."""
    x, y = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    return float(np.polyfit(x, y, 1)[0]) if len(x) > 1 else math.nan


def markdown(rows: list[dict]) -> str:
    cols = [("config", "{}"), ("mode", "{}"), ("malloc", "{}"), ("batch", "{}"), ("seq_len", "{}"),
            ("vocab", "{}"), ("tile", "{}"), ("compile_forward_s", "{:.1f}"), ("compile_train_s", "{:.1f}"),
            ("forward_tok_s", "{:,.0f}"), ("train_tok_s", "{:,.0f}"), ("forward_over_gemm", "{:.1f}"),
            ("peak_rss_mb", "{:,.0f}")]
    head = "| " + " | ".join(c for c, _ in cols) + " |\n|" + "---|" * len(cols) + "\n"
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['mode']} | {r['batch']} | {r['seq_len']} | — | failed: "
                         f"{r['error'][:80]} |")
            continue
        lines.append("| " + " | ".join(fmt.format(r[c]) if c in r else "—" for c, fmt in cols) + " |")
    return head + "\n".join(lines) + "\n"


if __name__ == "__main__":
    print("RESULT" + json.dumps(measure(Point(**json.loads(sys.argv[1])))))


BENCH_DOC = """Benchmark gaugeformer: throughput, compile time, peak memory, and growth with sequence length.

    python scripts/bench.py --batch 8 --seq-len 128                      # config A, V=50257: forward + train
    python scripts/bench.py --batch 8 --vocab 256 --sweep 128 512 2048 8192 --train-max 2048

A sweep measures the forward and the train step of each length in separate processes (each its own peak
RSS) and prints the growth exponents of time and peak memory.  ``--markdown`` writes the tables for README.
"""


# ----------------------------------------------------------------------------------------------
# command line (gaugeformer-bench, scripts/bench.py)
# ----------------------------------------------------------------------------------------------


def points(a) -> list[Point]:
    tile = {"config": -1, "none": None}[a.tile] if a.tile in ("config", "none") else int(a.tile)
    out = []
    mallocs = ("hugetlb", "default") if a.malloc == "both" else (a.malloc,)
    for config in a.config:
        for malloc in mallocs:
            common = dict(tile=tile, malloc=malloc)
            if a.sweep:
                for n in a.sweep:
                    out.append(Point(config, a.batch, n, a.vocab, a.repeats, forward=True, train=False, **common))
                    if not a.no_train and n <= a.train_max:
                        out.append(Point(config, a.batch, n, a.vocab, a.repeats, forward=False, train=True,
                                         **common))
            else:
                out += [Point(config, a.batch, n, a.vocab, a.repeats, train=not a.no_train, **common)
                        for n in a.seq_len]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="gaugeformer-bench", description=BENCH_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", default=["configs/reference_A.yaml"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, nargs="+", default=[128])
    p.add_argument("--sweep", type=int, nargs="*", help="sequence lengths (forward and train as separate rows)")
    p.add_argument("--train-max", type=int, default=2048, help="longest sequence of the sweep's train rows")
    p.add_argument("--vocab", type=int, help="override the data vocabulary (e.g. 256)")
    p.add_argument("--tile", default="config", help="attention_tile: an int, 'none' (one tile) or 'config'")
    p.add_argument("--malloc", default="hugetlb", choices=("hugetlb", "default", "both"),
                   help="glibc malloc of the measurement processes: huge pages for large blocks (the default; "
                        "see README Performance), glibc's default, or both")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed runs per point at least (more while they add up to under 4 s; median)")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per measurement point")
    p.add_argument("--json", help="write all rows as JSON")
    p.add_argument("--markdown", help="write the tables as markdown")
    a = p.parse_args(argv)
    rows = []
    for point in points(a):
        print(f"[bench] {point.config} B={point.batch} N={point.seq_len} malloc={point.malloc} "
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
