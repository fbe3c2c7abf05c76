"""Benchmark of the validation report's metric part (not a test).

    python scripts/bench_diagnostics.py                      # L=4, B=8, H=9, N=512
    python scripts/bench_diagnostics.py --layers 2 --batch 2 --seq-len 128 --repeats 7

Times, after one compiling call, the median of ``--repeats`` runs (``block_until_ready``) of
:func:`diagnostics.metrics.all_metrics` on synthetic attention ``[L, B, H, N, N]`` with KL, token
ids and per-layer beliefs (μ, φ, diag Σ): the inputs ``diagnostics.run.run_report`` passes. Also
times the host side (``device_get`` + :func:`diagnostics.validate.validate` in ``both`` mode), so
"total" is the whole metric part of one report.
"""

import argparse
import statistics
import time

import jax
import numpy as np

from gaugeformer.ops.masks import valid_keys

from diagnostics import validate as V
from diagnostics.irreps import head_labels
from diagnostics.metrics import all_metrics

IRREPS = "5x0e+3x1e+1x2e"  # 9 heads, K = 19 (configs A/T_A)


def inputs(n_layers: int, batch: int, heads: int, n: int, k: int, seed: int = 0):
    """Causal softmax attention with the reference's 1e-8 floor, KL ≥ 0, ids, beliefs."""
    rng = np.random.default_rng(seed)
    kl = rng.gamma(2.0, 0.05, (n_layers, batch, heads, n, n)).astype(np.float32)
    causal = valid_keys(n)
    logits = np.where(causal, -kl / 0.5, -np.inf)
    logits -= logits.max(-1, keepdims=True)
    beta = np.exp(logits)
    beta = np.maximum(beta / beta.sum(-1, keepdims=True), 1e-8).astype(np.float32)
    tokens = rng.integers(0, 256, (batch, n)).astype(np.int32)
    mu = rng.normal(size=(n_layers, batch, n, k)).astype(np.float32)
    phi = rng.normal(scale=0.3, size=(n_layers, batch, n, 3)).astype(np.float32)
    sigma = rng.gamma(4.0, 0.25, (n_layers, batch, n, k)).astype(np.float32)
    return beta, kl, tokens, mu, phi, sigma


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    labels, dims = head_labels(IRREPS)
    h, k = len(labels), sum(dims)
    beta, kl, tokens, mu, phi, sigma = inputs(args.layers, args.batch, h, args.seq_len, k)
    dev = [jax.device_put(x) for x in (beta, kl, tokens, mu, phi, sigma)]
    mask = valid_keys(args.seq_len)

    def metrics():
        b, q, t, m, f, s = dev
        return all_metrics(b, q, mask, t, mu=m, phi=f, sigma_diag=s, query_var_batches=1)

    t0 = time.perf_counter()
    jax.block_until_ready(metrics())
    compile_s = time.perf_counter() - t0
    dev_times, host_times = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(metrics())
        t1 = time.perf_counter()
        V.validate(jax.device_get(out), head_labels=labels, head_dims=dims, mode="both")
        t2 = time.perf_counter()
        dev_times.append(t1 - t0)
        host_times.append(t2 - t1)
    res = {
        "shape": f"L={args.layers} B={args.batch} H={h} N={args.seq_len}",
        "backend": jax.default_backend(), "devices": len(jax.devices()),
        "compile_s": compile_s, "all_metrics_s": statistics.median(dev_times),
        "host_validate_s": statistics.median(host_times),
    }
    res["total_s"] = res["all_metrics_s"] + res["host_validate_s"]
    print(f"metric part of the validation report, {res['shape']} ({res['backend']}):")
    print(f"  first call (compile + run): {compile_s:.2f} s")
    print(f"  all_metrics, median of {args.repeats}: {res['all_metrics_s'] * 1e3:.0f} ms")
    print(f"  device_get + validate (both modes): {res['host_validate_s'] * 1e3:.0f} ms")
    print(f"  total: {res['total_s'] * 1e3:.0f} ms")
    return res
