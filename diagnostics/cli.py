"""The attention tools' command lines: ``gaugeformer-validate``, ``-visualize``, ``-recency``,
``-analyze`` (and ``scripts/validate_attention.py``, ``visualize_attention.py``,
``attention_recency.py``, ``analyze_attention.py``, thin wrappers of these functions).

Each tool is a parser and one function: load (:func:`gaugeformer.load`, or a random model), pick
sequences, capture (:func:`gaugeformer.capture.capture`), draw with the model's own key pattern
(:class:`gaugeformer.stats.KeyPattern`), summarise.  Every function returns a
:class:`~diagnostics.capture.ScriptResult` for in-process callers and tests.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gaugeformer.stats import KeyPattern

from diagnostics import capture as C
from diagnostics import recency as R
from diagnostics import report as report_io
from diagnostics import run as validate_run
from diagnostics import validate as validate_checks
from diagnostics.export import save_bertviz, save_circuitsvis
from diagnostics.html import write_attention_html
from diagnostics.irreps import head_labels as irreps_head_labels
from diagnostics.figures import (
    plot_all_heads,
    plot_attention_flow,
    plot_attention_with_context,
    plot_head_heatmap,
    plot_recency_lines,
    plot_recency_summary,
    plot_sample_heatmaps,
    topk_report,
)
from diagnostics.render import render_console
from diagnostics.schema import MODES

VISUALIZE_TEXT = "The transformer architecture has revolutionized natural language processing"
ANALYZE_TEXT = "The cat sat on the mat. It was fluffy."
CONSOLE_TOPK_MAX_TOKENS = 48  # longer sequences: the top-k report goes to topk.txt only
_T = R.Thresholds()


def validate(argv: Sequence[str] | None = None) -> validate_run.RunResult:
    """``gaugeformer-validate``: the 9-part attention validation report (:mod:`diagnostics.run`)."""
    return validate_run.main(argv)


VISUALIZE_DOC = """Per-layer attention figures with the full context: every head, the lossy head mean, KL.

    gaugeformer-visualize --mode text --text "The transformer architecture ..."
    gaugeformer-visualize --mode validation --dataset wikitext-2 --seq-len 128
    gaugeformer-visualize --mode validation --dataset wikitext-2 \\
        --data-files validation=wiki.valid.raw            # offline, a local WikiText-format file
    gaugeformer-visualize --mode random --seq-len 64
    gaugeformer-visualize --checkpoint tests/fixtures/T_A_v256/best_model.pt \\
        --text "def __init__(self, value):"

Writes to --output-dir: ``attention_context_L{l}.png``, one figure per layer (or per --layers):
the caption and decoded sequence; log10 β of every head with its irrep label and row_std
status; the head-averaged map, marked lossy, with per-query row-uniformity bars; the KL matrix
with its per-row spread and the "KL too uniform" warning. Also ``attention.html`` (offline
explorer of layers × heads), ``attention_bertviz.npz`` and ``attention_circuitsvis_L{l}.json``
(exports) and ``summary.txt`` (the console summary).
"""


def visualize_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=VISUALIZE_DOC.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=VISUALIZE_DOC.split("\n\n", 1)[1])
    C.add_source_arguments(p, default_mode="text", default_text=VISUALIZE_TEXT)
    C.add_model_arguments(p)
    p.add_argument("--layers", type=int, nargs="+", help="layers to draw (default: all)")
    p.add_argument("--output-dir", default="attention_context", help="output directory")
    return p


def visualize(argv: Sequence[str] | None = None) -> C.ScriptResult:
    args = visualize_parser().parse_args(argv)
    out = Path(args.output_dir)
    try:
        loaded = C.load_model_from_args(args)
        model, cfg, ckpt = loaded.model, loaded.config, loaded.description
        (seq,) = C.sequences_from_args(args, cfg, count=1, tokenizer=loaded.tokenizer)
        layers = C.check_layers(args.layers, cfg.n_layers)
    except (ValueError, OSError, RuntimeError) as exc:
        raise SystemExit(f"error: {exc}") from None
    cap = C.capture_attention(model, seq.ids)
    caption = C.caption_for(seq, ckpt, cfg)
    figs = plot_attention_with_context(cap.beta, cap.kl, seq.tokens, cfg.head_labels, caption, out,
                                       layers=layers, keys=KeyPattern.of(cfg),
                                       kappa=cfg.kappa_beta, dpi=args.dpi)
    report = C.context_summary(seq, cfg.head_labels, cap.beta, cap.kl, [f.stats for f in figs],
                               checkpoint=ckpt, kappa=cfg.kappa_beta, layers=layers)
    files = [write_attention_html(cap.beta, seq.tokens, cfg.head_labels, caption,
                                  out / "attention.html", kl=cap.kl, keys=KeyPattern.of(cfg)),
             save_bertviz(cap.beta, seq.tokens, out / "attention_bertviz.npz",
                          head_labels=cfg.head_labels)]
    files += [save_circuitsvis(cap.beta, li, seq.tokens, out / f"attention_circuitsvis_L{li}.json",
                               head_labels=cfg.head_labels) for li in range(cfg.n_layers)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.txt").write_text(report + "\n", encoding="utf-8")
    files.append(out / "summary.txt")
    print(report)
    for path in [f.path for f in figs] + files:
        print(f"saved: {path}")
    return C.ScriptResult(figs, files, report, [seq], cap, cfg, ckpt)


RECENCY_DOC = """Recency and context-compression analysis of attention over several sequences, per layer and head.

    gaugeformer-recency --samples 5 --dataset wikitext-2 --seq-len 128
    gaugeformer-recency --checkpoint tests/fixtures/T_A_v256/best_model.pt \\
        --dataset wikitext-2 --data-files validation=wiki.valid.raw --samples 8 --seq-len 64
    gaugeformer-recency --mode random --samples 3 --seq-len 32

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


def recency_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=RECENCY_DOC.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=RECENCY_DOC.split("\n\n", 1)[1])
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


def recency(argv: Sequence[str] | None = None) -> C.ScriptResult:
    args = recency_parser().parse_args(argv)
    out = Path(args.output_dir)
    try:
        if args.samples < 1:
            raise ValueError("--samples must be >= 1")
        loaded = C.load_model_from_args(args)
        model, cfg, ckpt = loaded.model, loaded.config, loaded.description
        seqs = C.sequences_from_args(args, cfg, count=args.samples,
                                      tokenizer=loaded.tokenizer)
    except (ValueError, OSError, RuntimeError) as exc:
        raise SystemExit(f"error: {exc}") from None
    thresholds = R.Thresholds(recency_ratio=args.recency_threshold,
                              entropy_nats=args.entropy_threshold, coverage=args.coverage)
    cap = C.capture_sequences(model, seqs)
    beta = cap.beta.swapaxes(0, 1)  # (S, L, H, N, N)
    keys = KeyPattern.of(cfg)
    analysis = R.analyze_recency(beta, keys=keys, include_self=not cfg.mask_self_attention,
                                 recent_frac=args.recent_frac)
    labels = cfg.head_labels
    drawn = list(range(min(args.figure_samples, len(seqs))))
    figs = plot_sample_heatmaps(beta, labels, out, tokens=[s.tokens for s in seqs], samples=drawn,
                                keys=keys, dpi=args.dpi)
    figs += plot_recency_lines(beta, labels, out, samples=drawn, keys=keys, dpi=args.dpi)
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


ANALYZE_DOC = """Per-layer attention analyzer: single-head heatmaps, all-heads grids, top-k report, flow.

    gaugeformer-analyze --text "The cat sat on the mat. It was fluffy."
    gaugeformer-analyze --checkpoint tests/fixtures/T_A_v256/best_model.pt \\
        --text "def f(x): return x" --layer 1 --head 8 --top-k 3
    gaugeformer-analyze --text "Once upon a time" --max-heads 4 --show-plots

β is captured from every layer of the model itself (no recomputation). Writes to --output-dir:
``layer_{l}_head_{h}.png`` (one head, token labels on both axes), ``layer_{l}_all_heads.png``
(grid of the layer's heads), ``attention_flow.png`` (self-attention vs attention to previous
tokens, per layer), ``topk.txt`` (the top-k attended tokens of every query) and
``attention.html`` (offline explorer). Without --checkpoint the weights are random, and every
caption says so.
"""


def analyze_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=ANALYZE_DOC.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=ANALYZE_DOC.split("\n\n", 1)[1])
    p.add_argument("--text", default=ANALYZE_TEXT, help="input text")
    C.add_model_arguments(p)
    p.add_argument("--dataset", choices=C.DATASETS, default=None,
                   help="corpus a restricted GPT-2 vocabulary is rebuilt from (V < 50257 only)")
    p.add_argument("--data-files", nargs="+", metavar="[SPLIT=]PATH",
                   help="local WikiText-format files for --dataset")
    p.add_argument("--layer", type=int, help="only this layer (default: all)")
    p.add_argument("--head", type=int, help="only this head (default: all); also the top-k head")
    p.add_argument("--max-heads", type=int, help="draw at most this many heads per layer")
    p.add_argument("--top-k", type=int, default=5, help="attended tokens listed per query")
    p.add_argument("--log-scale", action="store_true", help="log10 colour scale on single heads")
    p.add_argument("--output-dir", default="attention_plots", help="output directory")
    p.add_argument("--show-plots", action="store_true", help="also open the figures")
    return p


def analyze(argv: Sequence[str] | None = None) -> C.ScriptResult:
    args = analyze_parser().parse_args(argv)
    out = Path(args.output_dir)
    try:
        loaded = C.load_model_from_args(args)
        model, cfg, ckpt = loaded.model, loaded.config, loaded.description
        (seq,) = C.sequences_from_args(args, cfg, tokenizer=loaded.tokenizer)
        n_layers, n_heads = cfg.n_layers, cfg.n_heads
        if args.layer is not None and not 0 <= args.layer < n_layers:
            raise ValueError(f"--layer {args.layer}: the model has {n_layers} layers")
        if args.head is not None and not 0 <= args.head < n_heads:
            raise ValueError(f"--head {args.head}: the model has {n_heads} heads")
    except (ValueError, OSError, RuntimeError) as exc:
        raise SystemExit(f"error: {exc}") from None
    layers = range(n_layers) if args.layer is None else [args.layer]
    shown = n_heads if args.max_heads is None else max(1, min(args.max_heads, n_heads))
    heads = range(shown) if args.head is None else [args.head]
    cap = C.capture_attention(model, seq.ids)
    caption = C.caption_for(seq, ckpt, cfg)
    labels, keys = cfg.head_labels, KeyPattern.of(cfg)
    figs = []
    for li in layers:
        figs += [plot_head_heatmap(cap.beta, seq.tokens, labels, out / f"layer_{li}_head_{h}.png",
                                   layer=li, head=h, caption=caption, keys=keys,
                                   log_scale=args.log_scale, dpi=args.dpi) for h in heads]
        figs.append(plot_all_heads(cap.beta[:, :, :shown], seq.tokens, labels[:shown],
                                   out / f"layer_{li}_all_heads.png", layer=li,
                                   keys=keys, dpi=args.dpi))
    figs.append(plot_attention_flow(cap.beta, labels, out / "attention_flow.png", dpi=args.dpi))
    report = topk_report(cap.beta, seq.tokens, k=args.top_k, head=args.head, head_labels=labels,
                         layers=list(layers), keys=keys, out=out / "topk.txt")
    files = [out / "topk.txt", write_attention_html(cap.beta, seq.tokens, labels, caption,
                                                    out / "attention.html", kl=cap.kl,
                                                    keys=keys)]
    header = (f"Sequence: {seq.source}\nText: \u201c{seq.preview()}\u2026\u201d ({len(seq)} tokens)"
              f"\nCheckpoint: {ckpt}\n")
    print(header)
    print(report if len(seq) <= CONSOLE_TOPK_MAX_TOKENS
          else f"(top-{args.top_k} report for {len(seq)} queries: {out / 'topk.txt'})")
    for path in [f.path for f in figs] + files:
        print(f"saved: {path}")
    if args.show_plots:
        C.show_pngs([f.path for f in figs])
    return C.ScriptResult(figs, files, header + report, [seq], cap, cfg, ckpt)


def _layer_stack(data, prefix: str) -> np.ndarray | None:
    keys = sorted((k for k in data.files if re.fullmatch(rf"{prefix}\d+", k)),
                  key=lambda k: int(k[len(prefix):]))
    return np.stack([data[k] for k in keys]) if keys else None


def validate_npz(argv: Sequence[str] | None = None) -> int:
    """The report from stored attention (e.g. a golden ``.npz`` with ``attn_beta_L{l}`` /
    ``attn_kl_L{l}`` keys): ``python -m diagnostics.cli --npz FILE [--metrics both] [--json OUT]``."""
    parser = argparse.ArgumentParser(description="The 9-part attention validation report of stored attention arrays.")
    parser.add_argument("--npz", required=True,
                        help="arrays: attn_beta_L{l} [B,H,N,N], optional attn_kl_L{l}, tokens, "
                             "mu_final, phi_final, sigma_final")
    parser.add_argument("--metrics", choices=tuple(MODES), default="legacy")
    parser.add_argument("--irreps", default=None, help='e.g. "5x0e+3x1e+1x2e"')
    parser.add_argument("--embed-dim", type=int, default=None)
    parser.add_argument("--special-ids", type=int, nargs="*", default=())
    parser.add_argument("--json", default=None, help="write the JSON report here")
    parser.add_argument("--md", default=None, help="write the markdown report here")
    args = parser.parse_args(argv)
    data = np.load(args.npz)
    beta = _layer_stack(data, "attn_beta_L")
    if beta is None:
        parser.error(f"{args.npz} has no attn_beta_L<l> arrays")
    sigma = data["sigma_final"] if "sigma_final" in data.files else None
    sigma_diag = None if sigma is None else np.diagonal(sigma, axis1=-2, axis2=-1)
    labels = dims = None
    if args.irreps:
        labels, dims = irreps_head_labels(args.irreps, args.embed_dim)

    def get(key):
        return data[key] if key in data.files else None

    rep = validate_checks.run_validation(
        beta, _layer_stack(data, "attn_kl_L"), None, get("tokens"), mu=get("mu_final"),
        phi=get("phi_final"), sigma_diag=sigma_diag, special_ids=args.special_ids,
        head_labels=labels, head_dims=dims, mode=args.metrics,
        meta={"source": str(args.npz), "irreps": args.irreps},
    )
    print(render_console(rep))
    if args.json:
        report_io.write_json(rep, args.json)
    if args.md:
        report_io.write_markdown(rep, args.md)
    return 0


if __name__ == "__main__":  # python -m diagnostics.cli --npz FILE
    sys.exit(validate_npz())
