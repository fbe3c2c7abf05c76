"""End-to-end demo: train the ``tiny`` config on the embedded corpus, then validate its attention.

    make demo     (python scripts/demo.py)      # about 2-3 minutes on 2 CPU cores
    python scripts/demo.py --workdir /tmp/demo --steps 100

Everything runs offline: the corpus (Botchan) and the GPT-2 BPE ranks ship with the package.
What it does and writes (all under ``--workdir``, default ``runs/tiny-demo``):

1. trains ``configs/tiny.yaml`` with a progress bar (loss, PPL, tokens/s), evaluating on the whole
   validation split at steps 0, 50, 100, 150, 200 -> ``metrics.jsonl``, ``metrics.csv``,
   ``curves.png``, ``checkpoints/``, ``best/``;
2. at each evaluation, the per-head attention figure and the row_std table (irrep labels) of a
   fixed validation sequence with its text -> ``attention/step_XXXXXX/``;
3. loads the best checkpoint and runs the 9-part attention validation report
   (:func:`diagnostics.run.run_report`: metrics, gradient flow, ablation, κ sweep) on validation
   windows -> ``validation/report.md``, ``report.json``, ``console.txt`` and figures.
"""

import argparse
import shutil
import sys
import time
from pathlib import Path

import jax
import numpy as np

from gaugeformer.loading import load
from gaugeformer.train import loop
from gaugeformer.train.runlog import RunLog
from gaugeformer.train.runtime import enable_compilation_cache
from gaugeformer.train.config import load_run_config

from diagnostics.run import run_report
from diagnostics.training import FIGURES

ROOT = Path(__file__).resolve().parents[1]  # the checkout (configs/, runs/)

N_VALIDATION_WINDOWS = 4


def prepare_workdir(workdir: Path, resume: bool) -> None:
    """Start fresh unless ``--resume``; only ever delete a previous run directory."""
    if resume or not workdir.exists() or not any(workdir.iterdir()):
        return
    if not (workdir / "run_config.yaml").exists():
        sys.exit(f"{workdir} exists and is not a gaugeformer run directory; choose --workdir")
    shutil.rmtree(workdir)


def validation_report(workdir: Path, run_cfg) -> Path:
    """The diagnostics issue's 9-part report (:func:`diagnostics.run.run_report`) for the best
    checkpoint, on the first validation windows; only the overall verdict is printed."""
    loaded = load(workdir / "best")
    model, meta = loaded.model, loaded.meta
    n = run_cfg.data.seq_len
    val = loop.load_data(run_cfg.data).validation
    windows = np.stack([val[w * n:(w + 1) * n] for w in range(N_VALIDATION_WINDOWS)])
    out = workdir / "validation"
    result = run_report(model=model, tokens=windows, seq_len=n, metrics="both",
                        json_path=out / "report.json", markdown_path=out / "report.md",
                        plot_dir=out, echo=None)
    print(f"\n[demo] attention validation of best/{meta['step']} on {len(windows)} validation "
          f"windows (9 parts; legacy = the reference's numbers, valid = causally valid keys):")
    for mode, summary in result.report.summaries.items():
        verdict = result.report.conclusions[mode]
        print(f"  {mode:6s}: {summary.passed}/{summary.total_tests} tests passed, "
              f"{summary.critical_failures} critical, {summary.warnings} warnings: "
              f"{verdict.headline}")
    (out / "console.txt").write_text(result.console, encoding="utf-8")
    return out / "report.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "tiny-demo"))
    parser.add_argument("--steps", type=int, default=None, help="override train.steps")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--resume", action="store_true", help="continue the run in --workdir")
    args = parser.parse_args(argv)
    overrides = args.overrides + ([f"train.steps={args.steps}"] if args.steps else [])
    run_cfg = load_run_config(args.config, overrides)
    workdir = Path(args.workdir).resolve()
    prepare_workdir(workdir, args.resume)
    cache = enable_compilation_cache()
    t0 = time.perf_counter()
    m = run_cfg.model
    print(f"[demo] {args.config}: K={m.embed_dim} irreps {m.irreps} ({m.n_heads} heads "
          f"{', '.join(m.head_labels)}), {m.n_layers} layer(s), V={m.vocab_size}, "
          f"N={run_cfg.data.seq_len}, B={run_cfg.data.batch_size}, {run_cfg.train.steps} steps "
          f"on {jax.device_count()} {jax.devices()[0].platform} device(s); XLA cache {cache}")
    summary = loop.train_and_evaluate(run_cfg, workdir, figures=FIGURES)
    records = RunLog(workdir, run_cfg, summary["step"], False).records()
    report = None
    try:
        report = validation_report(workdir, run_cfg)
    except Exception as err:  # never lose the training results to the report
        print(f"[demo] validation report skipped: {type(err).__name__}: {err}")
    print_outputs(workdir, summary, records, report, time.perf_counter() - t0)
    return 0


def print_outputs(workdir: Path, summary: dict, records: list, report, seconds: float) -> None:
    evals = [r for r in records if r["split"] == "eval"]
    first, final = summary["first_train"], summary["last_train"]
    print(f"\n[demo] done in {seconds:.0f}s ({summary['status']}, step {summary['step']}, "
          f"{summary['tokens_per_sec']:,.0f} tokens/s)")
    print(f"[demo] train CE {first['loss/ce']:.3f} (step 1) -> {final['loss/ce']:.3f} "
          f"(step {final['step']})")
    if evals:
        curve = "  ".join(f"step {r['step']}: {r['eval/ce']:.3f} (PPL {r['eval/ppl']:.0f})"
                          for r in evals)
        print(f"[demo] validation CE over the whole split: {curve}")
        if len(evals) > 1 and evals[-1]["eval/ce"] < evals[0]["eval/ce"] - 0.5:
            print("[demo] the loss fell.")
    figs = sorted((workdir / "attention").glob("step_*/*.png"))
    print("[demo] written:")
    for label, path in (("metrics (JSON lines)", workdir / "metrics.jsonl"),
                        ("metrics (CSV)", workdir / "metrics.csv"),
                        ("loss / PPL curves", workdir / "curves.png"),
                        ("attention figure (last eval)", figs[-1] if figs else None),
                        ("row_std table", figs[-1].parent / "row_std.md" if figs else None),
                        ("checkpoints", workdir / "checkpoints"),
                        ("best checkpoint", workdir / "best"), ("validation report", report),
                        ("resolved config", workdir / "run_config.yaml")):
        if path is not None:
            print(f"  {label:30s} {path}")
