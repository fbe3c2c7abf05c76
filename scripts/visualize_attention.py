#!/usr/bin/env python
"""Per-layer attention figures with the full context: every head, the lossy head mean, KL.

    python scripts/visualize_attention.py --mode text --text "The transformer architecture ..."
    python scripts/visualize_attention.py --mode validation --dataset wikitext-2 --seq-len 128
    python scripts/visualize_attention.py --mode validation --dataset wikitext-2 \\
        --data-files validation=wiki.valid.raw            # offline, a local WikiText-format file
    python scripts/visualize_attention.py --mode random --seq-len 64
    python scripts/visualize_attention.py --checkpoint tests/fixtures/T_A_v256/best_model.pt \\
        --text "def __init__(self, value):"

Writes to --output-dir: ``attention_context_L{l}.png``, one figure per layer (or per --layers):
the caption and decoded sequence; log10 β of every head with its irrep label and row_std
status; the head-averaged map, marked lossy, with per-query row-uniformity bars; the KL matrix
with its per-row spread and the "KL too uniform" warning. Also ``attention.html`` (offline
explorer of layers × heads), ``attention_bertviz.npz`` and ``attention_circuitsvis_L{l}.json``
(exports) and ``summary.txt`` (the console summary).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diagnostics import capture as C  # noqa: E402
from diagnostics.export import save_bertviz, save_circuitsvis  # noqa: E402
from diagnostics.html import write_attention_html  # noqa: E402
from diagnostics.plots import plot_attention_with_context  # noqa: E402

DEFAULT_TEXT = "The transformer architecture has revolutionized natural language processing"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    C.add_source_arguments(p, default_mode="text", default_text=DEFAULT_TEXT)
    C.add_model_arguments(p)
    p.add_argument("--layers", type=int, nargs="+", help="layers to draw (default: all)")
    p.add_argument("--output-dir", default="attention_context", help="output directory")
    return p


def main(argv: list[str] | None = None) -> C.ScriptResult:
    args = build_parser().parse_args(argv)
    out = Path(args.output_dir)
    try:
        model, cfg, ckpt = C.load_model_from_args(args)
        (seq,) = C.sequences_from_args(args, cfg, count=1)
        layers = C.check_layers(args.layers, cfg.n_layers)
    except (ValueError, OSError, RuntimeError) as exc:
        raise SystemExit(f"error: {exc}") from None
    cap = C.capture_attention(model, seq.ids)
    caption = C.caption_for(seq, ckpt, cfg)
    figs = plot_attention_with_context(cap.beta, cap.kl, seq.tokens, cfg.head_labels, caption, out,
                                       layers=layers, kappa=cfg.kappa_beta, dpi=args.dpi)
    report = C.context_summary(seq, cfg.head_labels, cap.beta, cap.kl, [f.stats for f in figs],
                               checkpoint=ckpt, kappa=cfg.kappa_beta, layers=layers)
    files = [write_attention_html(cap.beta, seq.tokens, cfg.head_labels, caption,
                                  out / "attention.html", kl=cap.kl),
             save_bertviz(cap.beta, seq.tokens, out / "attention_bertviz.npz",
                          head_labels=cfg.head_labels)]
    files += [save_circuitsvis(cap.beta, li, seq.tokens, out / f"attention_circuitsvis_L{li}.json",
                               head_labels=cfg.head_labels) for li in range(cap.n_layers)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.txt").write_text(report + "\n", encoding="utf-8")
    files.append(out / "summary.txt")
    print(report)
    for path in [f.path for f in figs] + files:
        print(f"saved: {path}")
    return C.ScriptResult(figs, files, report, [seq], cap, cfg, ckpt)


if __name__ == "__main__":
    main()
