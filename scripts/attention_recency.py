#!/usr/bin/env python
"""Recency and context-compression analysis of attention over several sequences, per layer and head.

    python scripts/attention_recency.py --samples 5 --dataset wikitext-2 --seq-len 128
    python scripts/attention_recency.py --checkpoint tests/fixtures/T_A_v256/best_model.pt \\
        --dataset wikitext-2 --data-files validation=wiki.valid.raw --samples 8 --seq-len 64
    python scripts/attention_recency.py --mode random --samples 3 --seq-len 32

For every layer and head, over --samples sequences (consecutive validation windows from --index,
windows of one --text, or random ids): the last query's attention to its context (mean, std,
entropy in nats, argmax position, recent/distant ratio = mean weight on the most recent
--recent-frac of the context over the earliest --recent-frac), and the same for every query row
as a distribution. Console: per layer/head table, insights and compression recommendations (keep
the last K, uniform sampling, top-K positions), each with the threshold it was compared with.

Writes to --output-dir: ``recency_s{s}_L{l}_heads.png`` (per-sample per-head heatmaps),
``recency_s{s}_L{l}_lines.png`` (last query's attention, attention received per position),
``recency_summary.png`` (distributions across samples), ``recency_report.txt``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diagnostics import capture as C  # noqa: E402
from diagnostics import recency as R  # noqa: E402
from diagnostics.plots import (  # noqa: E402
    plot_recency_lines,
    plot_recency_summary,
    plot_sample_heatmaps,
)

_T = R.Thresholds()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--samples", type=int, default=5, help="number of sequences analysed")
    C.add_source_arguments(p, default_mode="validation")
    C.add_model_arguments(p)
    p.add_argument("--figure-samples", type=int, default=5,
                   help="draw per-sample figures for the first this many samples (0: none)")
    p.add_argument("--recent-frac", type=float, default=0.25,
                   help="fraction of the context in the recent and in the distant part")
    p.add_argument("--recency-threshold", type=float, default=_T.recency_ratio,
                   help="recent/distant ratio above which a head is recency-biased")
    p.add_argument("--entropy-threshold", type=float, default=_T.entropy_nats,
                   help="last-row entropy (nats) above which attention may be uniform")
    p.add_argument("--coverage", type=float, default=_T.coverage,
                   help="attention-mass fraction a compressed context must keep")
    p.add_argument("--output-dir", default="figs/attention", help="output directory")
    return p


def main(argv: list[str] | None = None) -> C.ScriptResult:
    args = build_parser().parse_args(argv)
    out = Path(args.output_dir)
    try:
        if args.samples < 1:
            raise ValueError("--samples must be >= 1")
        model, cfg, ckpt = C.load_model_from_args(args)
        seqs = C.sequences_from_args(args, cfg, count=args.samples)
    except (ValueError, OSError, RuntimeError) as exc:
        raise SystemExit(f"error: {exc}") from None
    thresholds = R.Thresholds(recency_ratio=args.recency_threshold,
                              entropy_nats=args.entropy_threshold, coverage=args.coverage)
    cap = C.capture_sequences(model, seqs)
    beta = cap.per_sample()  # (S, L, H, N, N)
    analysis = R.analyze_recency(beta, include_self=not cfg.mask_self_attention,
                                 recent_frac=args.recent_frac)
    labels = cfg.head_labels
    drawn = list(range(min(args.figure_samples, len(seqs))))
    figs = plot_sample_heatmaps(beta, labels, out, tokens=[s.tokens for s in seqs], samples=drawn,
                                dpi=args.dpi)
    figs += plot_recency_lines(beta, labels, out, samples=drawn, dpi=args.dpi)
    figs.append(plot_recency_summary(analysis, out / "recency_summary.png", head_labels=labels,
                                     thresholds=thresholds, dpi=args.dpi))
    report = (C.samples_header(seqs, ckpt, cfg, requested=args.samples) + "\n\n"
              + R.format_report(analysis, labels, thresholds))
    out.mkdir(parents=True, exist_ok=True)
    (out / "recency_report.txt").write_text(report + "\n", encoding="utf-8")
    print(report)
    for path in [f.path for f in figs] + [out / "recency_report.txt"]:
        print(f"saved: {path}")
    return C.ScriptResult(figs, [out / "recency_report.txt"], report, seqs, cap, cfg, ckpt)


if __name__ == "__main__":
    main()
