"""Sweeps: train a list of run configs × profiles (× κ values) with the same data, steps and seed, then
measure every run the same way (issue 14, seed 001's "test the configurations").

    rows = run_sweep(["configs/reference_A.yaml", "configs/tiny.yaml"], ["reference", "clean"],
                     ["data.dataset=embedded", "train.steps=100"], "runs/sweep")

Each run is a normal, resumable training workdir ``OUT/runs/<config>-<profile>[-k<κ>]`` trained by
:func:`gaugeformer.train.loop.train_and_evaluate`; rerunning the sweep resumes unfinished runs and reuses
finished ones (their row is cached in ``sweep_row.json`` beside the checkpoints).  By default every run
trains in a fresh process, so ``peak_rss_mb`` is that run's own peak resident memory and no compiled
program is shared between runs.

After training, the final checkpoint is measured on the first ``windows`` validation windows:
:func:`diagnostics.attribution.attribute` gives every head's valid row_std, KL statistics and uniformity
cause; the reference's legacy row_std comes from the same β.  One row per run (:data:`ROW_KEYS`) goes to
``OUT/sweep.json``, ``OUT/sweep.csv`` and ``OUT/sweep.md``, with figures (:mod:`gaugeformer.train.
sweep_report`).

κ mode (``kappas``): each config × profile is trained at several temperatures.  ``"seed001"`` stands for
the seed's three κ values relative to its original κ = 0.43 (0.43, 0.00043 = 1000× lower, 0.0086 = 50×
lower), i.e. the config's own κ times 1, 1/1000 and 1/50; numbers are used as given.  The κ table has the
seed's columns: κ, KL mean, KL std (the seed's diversity tracker: last layer, head-mean KL, off-diagonal
pairs, last training step), attention label, PPL, stability (max gradient norm, NaN).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import resource
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from gaugeformer.loading import load
from gaugeformer.stats import status as row_std_label
from gaugeformer.train.config import ConfigError, RunConfig, load_run_config
from gaugeformer.train.loop import load_data, train_and_evaluate
from gaugeformer.train.runtime import enable_compilation_cache

from diagnostics import attribution as attr_lib

SEED001_KAPPA = 0.43
SEED001_KAPPAS = ((0.43, "seed original"), (0.00043, "seed 1000x lower"), (0.0086, "seed 50x lower"))
# what a sweep turns off by default (per-step figures cost time and are not compared); --set wins
SWEEP_DEFAULTS = ("log.attention_figures=false", "log.console_diagnostics=false", "log.log_every=1")
ROW_KEYS = ("config", "profile", "kappa", "kappa_label", "irreps", "n_heads", "params", "steps", "val_ppl",
            "val_ce", "row_std_by_l", "row_std_legacy_by_l", "kl_mean_by_l", "kl_std_by_l", "causes",
            "cause_counts", "kl_mean_seed", "kl_std_seed", "max_grad_norm", "nan", "attention_label",
            "tokens_per_s", "peak_rss_mb", "seconds", "workdir")


@dataclasses.dataclass(frozen=True)
class Job:
    """One run of a sweep."""

    config: str
    profile: str
    overrides: tuple[str, ...]
    workdir: str
    kappa: float | None = None
    kappa_label: str | None = None
    windows: int = 4

    @property
    def name(self) -> str:
        return Path(self.workdir).name


def expand_kappas(kappas: Sequence[str | float] | None, config_kappa: float) -> list[tuple[float, str]]:
    """``["seed001", 0.5]`` -> ``[(κ_cfg·1, "seed original"), (κ_cfg/1000, ...), (κ_cfg/50, ...), (0.5, "0.5")]``."""
    out: list[tuple[float, str]] = []
    for k in kappas or ():
        if isinstance(k, str) and k.lower() == "seed001":
            out += [(config_kappa * v / SEED001_KAPPA, lab) for v, lab in SEED001_KAPPAS]
        else:
            try:
                value = float(k)
            except ValueError as err:
                raise ConfigError(f"kappa {k!r}: expected a number or 'seed001'") from err
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"kappa {k!r} must be a positive number")
            out.append((value, f"{value:g}"))
    return out


def plan(configs: Sequence[str], profiles: Sequence[str], overrides: Sequence[str], out: str | Path, *,
         kappas: Sequence[str | float] | None = None, windows: int = 4) -> list[Job]:
    """Every (config, profile[, κ]) job, validated up front (a bad config fails before any training)."""
    if not configs:
        raise ConfigError("no configs given; pass --configs A.yaml [B.yaml ...]")
    if not profiles:
        raise ConfigError("no profiles given; pass --profiles reference clean")
    runs = Path(out) / "runs"
    jobs, seen = [], set()
    for config in configs:
        if not Path(config).is_file():
            raise ConfigError(f"config {config} does not exist")
        stem = Path(config).stem
        for profile in profiles:
            base = (*SWEEP_DEFAULTS, f"model.profile={profile}", *overrides)
            cfg = load_run_config(config, base)  # validates
            points = expand_kappas(kappas, cfg.model.kappa_beta) if kappas else [(None, None)]
            for kappa, label in points:
                ov = base if kappa is None else (*base, f"model.kappa_beta={kappa!r}")
                name = f"{stem}-{profile}" + ("" if kappa is None else f"-k{kappa:.6g}")
                if name in seen:
                    raise ConfigError(f"two runs would share the workdir {name}; use distinct config names")
                seen.add(name)
                load_run_config(config, ov)
                jobs.append(Job(str(config), profile, tuple(ov), str(runs / name), kappa, label, windows))
    return jobs


# ----------------------------------------------------------------------------------------------
# One run (in a child process by default)
# ----------------------------------------------------------------------------------------------


def _train_records(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _by_label(values: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """``[L, H]`` -> mean per irrep label (over layers and heads)."""
    acc: dict[str, list[float]] = {}
    for row in values:
        for label, v in zip(labels, row):
            acc.setdefault(label, []).append(float(v))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def measure(model, run_cfg: RunConfig, windows: int) -> dict[str, Any]:
    """Attribution, valid and legacy row_std, KL statistics of a trained model on validation windows."""
    cfg = model.cfg
    data = load_data(run_cfg.data)
    n = run_cfg.data.seq_len
    count = max(1, min(windows, len(data.validation) // n))
    tokens = np.stack([data.validation[w * n:(w + 1) * n] for w in range(count)]).astype(np.int32)
    attribution = attr_lib.attribute(model, tokens)
    labels = cfg.head_labels

    def per_head(key):
        return np.array([[hd["uniformity"]["evidence"][key] if key in hd["uniformity"]["evidence"]
                          else hd["uniformity"][key] for hd in layer["heads"]]
                         for layer in attribution["layers"]])

    valid, legacy = per_head("row_std"), per_head("row_std_legacy")
    n_uniform = int(sum(row_std_label(v) == "UNIFORM" for v in valid.ravel()))
    return {
        "row_std_by_l": _by_label(valid, labels),
        "row_std_legacy_by_l": _by_label(legacy, labels),
        "kl_mean_by_l": _by_label(per_head("kl_mean"), labels),
        "kl_std_by_l": _by_label(per_head("kl_std"), labels),
        "causes": [[f"L{layer['layer']}", hd["label"], hd["uniformity"]["cause"]]
                   for layer in attribution["layers"] for hd in layer["heads"]],
        "cause_counts": attr_lib.cause_counts(attribution),
        "attention_label": f"{n_uniform}/{valid.size} uniform",
        "attribution": attribution,
    }


def cached_row(job: Job) -> dict[str, Any] | None:
    """The row of a finished run of ``job`` (same number of steps), or None."""
    path = Path(job.workdir) / "sweep_row.json"
    if not path.exists():
        return None
    row = json.loads(path.read_text(encoding="utf-8"))
    return row if row.get("steps") == load_run_config(job.config, job.overrides).train.steps else None


def run_job(job: Job) -> dict[str, Any]:
    """Train (or resume) one job and measure it; returns the row (also cached in the workdir)."""
    workdir = Path(job.workdir)
    cached = workdir / "sweep_row.json"
    run_cfg = load_run_config(job.config, job.overrides)
    row = cached_row(job)
    if row is not None:
        return row
    t0 = time.perf_counter()
    nan, summary = False, {}
    try:
        summary = train_and_evaluate(run_cfg, workdir)
    except FloatingPointError as err:
        nan = True
        print(f"[sweep] {job.name}: stopped on a non-finite value: {str(err).splitlines()[0]}", flush=True)
    records = _train_records(workdir)
    train = [r for r in records if r.get("split") == "train" and "nonfinite" not in r]
    evals = [r for r in records if r.get("split") == "eval" and "eval/ce" in r]
    grad = [r["grad_norm/total"] for r in records if r.get("split") == "train" and "grad_norm/total" in r]
    model = load(workdir).model
    params = int(sum(np.size(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
    row: dict[str, Any] = {
        "config": Path(job.config).stem, "profile": job.profile,
        "kappa": float(run_cfg.model.kappa_beta), "kappa_label": job.kappa_label,
        "irreps": run_cfg.model.irreps, "n_heads": run_cfg.model.n_heads, "params": params,
        "steps": run_cfg.train.steps,
        "val_ce": evals[-1]["eval/ce"] if evals else None,
        "val_ppl": evals[-1]["eval/ppl"] if evals and not nan else None,
        "kl_mean_seed": train[-1].get("diversity/kl_mean") if train else None,
        "kl_std_seed": train[-1].get("diversity/kl_std") if train else None,
        "max_grad_norm": float(np.nanmax(grad)) if grad else None,
        "nan": nan,
        "tokens_per_s": summary.get("tokens_per_sec"),
        "seconds": time.perf_counter() - t0,
        "workdir": str(workdir),
    }
    row.update(measure(model, run_cfg, job.windows))
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    (workdir / "attribution.json").write_text(json.dumps(row.pop("attribution"), indent=1, ensure_ascii=False),
                                              encoding="utf-8")
    if not nan:  # a run stopped by NaN is retried on the next sweep
        cached.write_text(json.dumps(row, indent=1, ensure_ascii=False), encoding="utf-8")
    return row


def _child(job: Job, result: str) -> None:
    enable_compilation_cache()
    try:
        row = run_job(job)
        Path(result).write_text(json.dumps({"row": row}), encoding="utf-8")
    except BaseException as err:  # report to the parent, which decides
        Path(result).write_text(json.dumps({"error": f"{type(err).__name__}: {err}",
                                            "trace": traceback.format_exc()}), encoding="utf-8")
        raise


def _run_isolated(job: Job) -> dict[str, Any]:
    Path(job.workdir).mkdir(parents=True, exist_ok=True)
    result = Path(job.workdir) / "sweep_result.tmp.json"
    result.unlink(missing_ok=True)
    proc = multiprocessing.get_context("spawn").Process(target=_child, args=(job, str(result)))
    proc.start()
    proc.join()
    if not result.exists():
        raise RuntimeError(f"run {job.name} died without a result (exit code {proc.exitcode})")
    out = json.loads(result.read_text(encoding="utf-8"))
    result.unlink()
    if "error" in out:
        raise RuntimeError(f"run {job.name} failed: {out['error']}\n{out['trace']}")
    return out["row"]


# ----------------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------------


def run_sweep(configs: Sequence[str], profiles: Sequence[str], overrides: Sequence[str], out: str | Path, *,
              kappas: Sequence[str | float] | None = None, windows: int = 4, isolate: bool = True,
              figures: bool = True) -> list[dict[str, Any]]:
    """Train and measure every job of :func:`plan`, then write ``sweep.json``/``.csv``/``.md`` and figures.

    Args:
      configs: run YAML files.
      profiles: model profiles (``reference``, ``clean``); each overrides ``model.profile``.
      overrides: ``section.key=value`` applied to every run (after the sweep defaults and the profile).
      out: sweep directory (runs under ``out/runs/``).
      kappas: κ mode (module docstring): ``"seed001"`` and/or numbers; None = each config's own κ.
      windows: validation windows measured per run.
      isolate: train each run in a fresh process (own peak RSS, no shared compiles).
      figures: draw the PNG figures.

    Returns:
      The rows (also in ``out/sweep.json``), in plan order.
    """
    from diagnostics import sweep_report  # matplotlib only when writing

    jobs = plan(configs, profiles, overrides, out, kappas=kappas, windows=windows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for i, job in enumerate(jobs, 1):
        print(f"[sweep {i}/{len(jobs)}] {job.name} ({job.config}, profile {job.profile}"
              + ("" if job.kappa is None else f", κ={job.kappa:.6g}") + f") -> {job.workdir}", flush=True)
        row = cached_row(job)  # finished earlier: no process to start
        if row is None:
            row = _run_isolated(job) if isolate else run_job(job)
        rows.append(row)
        sweep_report.write_tables(rows, out, kappa_mode=bool(kappas))
        elapsed = time.perf_counter() - t0
        ppl = "NaN stop" if row["nan"] else f"{row['val_ppl']:.1f}"
        print(f"[sweep {i}/{len(jobs)}] {job.name}: val PPL {ppl}, row_std by ℓ "
              f"{ {k: round(v, 4) for k, v in row['row_std_by_l'].items()} }, causes {row['cause_counts']}; "
              f"{elapsed:.0f}s elapsed, ~{elapsed / i * (len(jobs) - i):.0f}s left", flush=True)
    if figures:
        for path in sweep_report.write_figures(rows, out, kappa_mode=bool(kappas)):
            print(f"[sweep] figure {path}", flush=True)
    print(f"[sweep] {len(rows)} runs -> {out / 'sweep.json'}, sweep.csv, sweep.md", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gaugeformer-sweep", description=__doc__.split("\n")[0])
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
