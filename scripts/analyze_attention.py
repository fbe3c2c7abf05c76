#!/usr/bin/env python
"""Per-layer attention analyzer: single-head heatmaps, all-heads grids, top-k report, flow.

    python scripts/analyze_attention.py --text "The cat sat on the mat. It was fluffy."
    python scripts/analyze_attention.py --checkpoint tests/fixtures/T_A_v256/best_model.pt \\
        --text "def f(x): return x" --layer 1 --head 8 --top-k 3
    python scripts/analyze_attention.py --text "Once upon a time" --max-heads 4 --show-plots

β is captured from every layer of the model itself (no recomputation). Writes to --output-dir:
``layer_{l}_head_{h}.png`` (one head, token labels on both axes), ``layer_{l}_all_heads.png``
(grid of the layer's heads), ``attention_flow.png`` (self-attention vs attention to previous
tokens, per layer), ``topk.txt`` (the top-k attended tokens of every query) and
``attention.html`` (offline explorer). Without --checkpoint the weights are random, and every
caption says so.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diagnostics import capture as C  # noqa: E402
from diagnostics.html import write_attention_html  # noqa: E402
from diagnostics.plots import (  # noqa: E402
    plot_all_heads,
    plot_attention_flow,
    plot_head_heatmap,
    topk_report,
)

DEFAULT_TEXT = "The cat sat on the mat. It was fluffy."
CONSOLE_TOPK_MAX_TOKENS = 48  # longer sequences: the top-k report goes to topk.txt only


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--text", default=DEFAULT_TEXT, help="input text")
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


def main(argv: list[str] | None = None) -> C.ScriptResult:
    args = build_parser().parse_args(argv)
    out = Path(args.output_dir)
    try:
        model, cfg, ckpt = C.load_model_from_args(args)
        (seq,) = C.sequences_from_args(args, cfg)
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
    labels, masked = cfg.head_labels, cfg.mask_self_attention
    figs = []
    for li in layers:
        figs += [plot_head_heatmap(cap.beta, seq.tokens, labels, out / f"layer_{li}_head_{h}.png",
                                   layer=li, head=h, caption=caption, log_scale=args.log_scale,
                                   dpi=args.dpi) for h in heads]
        figs.append(plot_all_heads(cap.beta[:, :, :shown], seq.tokens, labels[:shown],
                                   out / f"layer_{li}_all_heads.png", layer=li,
                                   self_masked=masked, dpi=args.dpi))
    figs.append(plot_attention_flow(cap.beta, labels, out / "attention_flow.png", dpi=args.dpi))
    report = topk_report(cap.beta, seq.tokens, k=args.top_k, head=args.head, head_labels=labels,
                         layers=list(layers), out=out / "topk.txt")
    files = [out / "topk.txt", write_attention_html(cap.beta, seq.tokens, labels, caption,
                                                    out / "attention.html", kl=cap.kl)]
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


if __name__ == "__main__":
    main()
