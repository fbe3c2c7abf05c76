"""Seed 002: attention with its full context, one figure per layer (every head as log10 β, the
lossy head mean with row-uniformity bars, the KL matrix with its "KL too uniform" warning)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.ticker import MaxNLocator

from gaugeformer import stats as attn_stats
from gaugeformer.stats import KeyPattern

from diagnostics.figures.base import (
    head_panels,
    as_attention,
    FigureRecord,
    MAX_TOKEN_TICKS,
    _caption_lines,
    _check_labels,
    _check_tokens,
    _grid_shape,
    _heatmap,
    _log_floor,
    _outer_labels,
    _save,
    _self_masked,
    _sequence_text,
    _status_title,
    _text_panel,
    _ticks,
    _with_preview,
)

# ----------------------------------------------------------------------------------------------
# Seed 002: attention with full context, one figure per layer
# ----------------------------------------------------------------------------------------------


def plot_attention_with_context(
    beta: np.ndarray,
    kl: np.ndarray | None,
    tokens: Sequence[str | bytes],
    head_labels: Sequence[str],
    caption: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    layers: Sequence[int] | None = None,
    batch: int = 0,
    keys: KeyPattern | None = None,
    head_stats: np.ndarray | None = None,
    kappa: float = 1.0,
    kl_spread_threshold: float = 0.5,
    max_token_ticks: int = MAX_TOKEN_TICKS,
    prefix: str = "attention_context",
    dpi: int = 150,
) -> list[FigureRecord]:
    """Per-layer diagnostic figure (seed 002) with the sequence, every head and the KL panel.

    Each figure (``{prefix}_L{l}.png``) contains:

    1. a caption (source, text preview, checkpoint, self-attention masking, layer) and the
       decoded sequence ``i:token`` in a box;
    2. one log10 β heatmap per head (never averaged), titled ``h{h} · {irrep}`` and its
       valid-keys ``row_std`` with SHARP/MEDIUM/UNIFORM status; one shared colorbar;
    3. the head-averaged heatmap, titled as LOSSY, with per-query row-uniformity bars (std of the
       head-mean row over valid keys; dashed line at 0.05) aligned to its rows;
    4. the KL matrix (head mean over valid keys) with per-row KL spread bars aligned to its rows
       and a "KL too uniform" warning when the mean spread of KL/κ is below
       ``kl_spread_threshold``.

    Args:
        beta: attention ``(L, B, H, N, N)``.
        kl: KL matrix of the same shape, or None (the panel then says it was not captured).
        tokens: N decoded tokens.
        head_labels: H irrep labels.
        caption: dict with ``source``, ``text_preview``, ``checkpoint``,
            ``self_attention_masked``.
        out_dir: directory for the PNGs.
        layers: layers to draw (default all).
        batch: batch element.
        keys: the model's key pattern (``KeyPattern.of(cfg)``: pattern, window, self-masking);
            default full causal, self-masked when the caption says so.
        head_stats: optional precomputed row_std ``(L, H)`` or ``(H,)`` to show instead of the
            local valid-keys computation.
        kappa: attention temperature κ (the warning compares the spread of KL/κ).
        kl_spread_threshold: threshold on the mean per-row std of KL/κ.
        max_token_ticks: token tick labels on the large panels when N ≤ this (the per-head
            panels show positions; the sequence box maps positions to tokens).
        prefix: file-name prefix.
        dpi: PNG resolution.

    Returns:
        One :class:`FigureRecord` per layer; ``stats`` holds ``row_std`` per head,
        ``row_std_avg`` and ``kl_spread``.
    """
    b = as_attention(beta, "beta")
    k = None if kl is None else as_attention(kl, "kl")
    if k is not None and k.shape != b.shape:
        raise ValueError(f"kl shape {k.shape} != beta shape {b.shape}")
    n_layers, _, h, n, _ = b.shape
    labels = _check_labels(head_labels, h)
    toks = _check_tokens(tokens, n)
    mask = (keys or KeyPattern(mask_self=_self_masked(caption))).grid(n)
    caption = _with_preview(caption, tokens)
    records = []
    for li in (range(n_layers) if layers is None else layers):
        stats_l = None
        if head_stats is not None:
            hs = np.asarray(head_stats, np.float64)
            stats_l = hs[li] if hs.ndim == 2 else hs
        records.append(_context_figure(
            b[li, batch], None if k is None else k[li, batch], toks, labels, caption, mask,
            Path(out_dir) / f"{prefix}_L{li}.png", layer=(li, n_layers), batch=batch,
            head_stats=stats_l, kappa=kappa, kl_thr=kl_spread_threshold,
            tick_limit=max_token_ticks, dpi=dpi,
        ))
    return records


def _context_figure(
    beta: np.ndarray, kl: np.ndarray | None, toks: list[str] | None, labels: list[str],
    caption: Mapping[str, Any], mask: np.ndarray, out: Path, *, layer: tuple[int, int],
    batch: int, head_stats: np.ndarray | None, kappa: float, kl_thr: float, tick_limit: int,
    dpi: int,
) -> FigureRecord:
    """Builds one seed-002 figure for ``beta`` ``(H, N, N)``."""
    h, n, _ = beta.shape
    rows, cols = _grid_shape(h)
    width = max(14.0, 2.9 * cols + 1.5)
    head_h = 3.0 * rows + 0.3
    bottom_h = 6.2 if (toks is not None and n <= tick_limit) else 5.2
    seq_fs = 8.0
    seq = _sequence_text(toks, n, width - 0.5, seq_fs)
    text_h = 0.75 + 0.17 * (seq.count("\n") + 1)
    fig = Figure(figsize=(width, text_h + head_h + bottom_h), layout="constrained")
    stats = attn_stats.row_std_valid(beta, mask, empty=np.nan) if head_stats is None else np.asarray(head_stats, float)
    fig.suptitle(f"Attention with context \u2014 layer {layer[0]} of {layer[1]}, batch element "
                 f"{batch}", fontsize=14, fontweight="bold")
    top, mid, bot = fig.subfigures(3, 1, height_ratios=[text_h, head_h, bottom_h])
    _text_panel(top, _caption_lines(caption, n, f"layer {layer[0]}/{layer[1]}"), seq, seq_fs)
    _head_panels(mid, beta, mask, labels, stats, toks, tick_limit, cols)
    avg_std, notes, kl_spread = _bottom_panels(bot, beta, kl, mask, toks, tick_limit, kappa,
                                               kl_thr, width)
    return _save(fig, out, dpi, notes, {
        "row_std": [float(x) for x in stats], "row_std_avg": avg_std, "kl_spread": kl_spread,
    })


def _head_panels(sub: SubFigure, beta: np.ndarray, mask: np.ndarray, labels: list[str],
                 stats: np.ndarray, toks: list[str] | None, tick_limit: int, cols: int) -> None:
    """Grid of per-head log10 β panels with one colorbar."""
    h, n, _ = beta.shape
    rows = math.ceil(h / cols)
    vmin = _log_floor(n)
    axes = sub.subplots(rows, cols, squeeze=False)
    im = None
    for idx, ax in head_panels(axes, h):
        im = _heatmap(ax, beta[idx], mask, log=True, vmin=vmin, vmax=0.0, cmap="viridis")
        _status_title(ax, idx, labels[idx], float(stats[idx]))
        _ticks(ax, None, n, span_in=2.3, limit=0)  # tokens: see the large panels below
    _outer_labels(axes, h, cols, "key j", "query i")
    cb = sub.colorbar(im, ax=axes.ravel().tolist(), shrink=0.85, pad=0.01, aspect=30)
    cb.set_label("log\u2081\u2080 \u03b2\u1d62\u2c7c  (grey = masked key)", fontsize=9)
    sub.suptitle("Per-head attention (not averaged)", fontsize=11, x=0.01, ha="left")


def _bottom_panels(
    sub: SubFigure, beta: np.ndarray, kl: np.ndarray | None, mask: np.ndarray,
    toks: list[str] | None, tick_limit: int, kappa: float, kl_thr: float, width: float,
) -> tuple[float, list[str], float | None]:
    """Head-average + uniformity bars (left) and KL + spread bars (right)."""
    left, right = sub.subfigures(1, 2, wspace=0.02)
    avg = beta.mean(0)
    avg_std = float(attn_stats.row_std_valid(avg, mask, empty=np.nan))
    _avg_block(left, avg, mask, toks, tick_limit, avg_std, beta.shape[0], width)
    if kl is None:
        ax = right.add_subplot(label="kl:missing")
        ax.set_axis_off()
        ax.text(0.5, 0.5, "KL matrix not captured \u2014 pass kl=... to draw it", ha="center",
                va="center", fontsize=11, color="#c62828")
        return avg_std, ["KL matrix not provided"], None
    notes, spread = _kl_block(right, kl.mean(0), mask, toks, tick_limit, kappa, kl_thr, width)
    return avg_std, notes, spread


def _avg_block(sub: SubFigure, avg: np.ndarray, mask: np.ndarray, toks: list[str] | None,
               tick_limit: int, avg_std: float, h: int, width: float) -> None:
    """Head-averaged heatmap (marked lossy) and per-query row-uniformity bars."""
    n = avg.shape[0]
    ax, bx = sub.subplots(1, 2, width_ratios=[3.2, 1.0], sharey=True)
    ax.set_label("average")
    bx.set_label("row_uniformity")
    im = _heatmap(ax, avg, mask, log=True, vmin=_log_floor(n), vmax=0.0, cmap="viridis")
    ax.set_aspect("auto")
    _ticks(ax, toks, n, span_in=width * 0.3, limit=tick_limit)
    ax.set_xlabel("key j")
    ax.set_ylabel("query i")
    status = attn_stats.status(avg_std)
    ax.set_title(f"Head-AVERAGED \u03b2 over {h} heads \u2014 LOSSY\nrow_std {avg_std:.3f} "
                 f"{status} (averaging hides per-head patterns)", fontsize=10,
                 color="#c62828")
    cb = sub.colorbar(im, ax=ax, location="bottom", shrink=0.8, aspect=35, pad=0.02)
    cb.set_label("log\u2081\u2080 \u03b2\u0304\u1d62\u2c7c", fontsize=9)
    per_row = attn_stats.row_std_rows(avg, mask)
    _row_bars(bx, per_row, "#4682b4", attn_stats.MEDIUM_THRESHOLD,
              f"uniform threshold {attn_stats.MEDIUM_THRESHOLD:.2f}")
    bx.set_title("Row uniformity\nstd over valid keys", fontsize=9)
    bx.set_xlabel("std(\u03b2\u0304\u1d62\u00b7)", fontsize=8)


def _row_bars(ax: Axes, values: np.ndarray, colour: str, threshold: float, label: str) -> None:
    """Horizontal per-query bars aligned with heatmap rows (NaN rows left empty)."""
    n = values.shape[0]
    ax.barh(np.arange(n), np.nan_to_num(values), height=0.8, color=colour, alpha=0.75)
    ax.axvline(threshold, color="#c62828", ls="--", lw=1.2, label=label)
    ax.set_ylim(n - 0.5, -0.5)
    ax.tick_params(labelleft=False, labelsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=3))
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", framealpha=0.9)


def _kl_block(sub: SubFigure, kl: np.ndarray, mask: np.ndarray, toks: list[str] | None,
              tick_limit: int, kappa: float, thr: float, width: float
              ) -> tuple[list[str], float]:
    """KL heatmap (head mean, valid keys) and per-row KL/κ spread bars, with warning."""
    n = kl.shape[0]
    ax, bx = sub.subplots(1, 2, width_ratios=[3.2, 1.0], sharey=True)
    ax.set_label("kl")
    bx.set_label("kl_spread")
    vals = kl[mask]
    vmax = float(np.percentile(vals, 99)) if vals.size else 1.0
    im = _heatmap(ax, kl, mask, log=False, vmin=0.0, vmax=max(vmax, 1e-6), cmap="magma_r")
    ax.set_aspect("auto")
    _ticks(ax, toks, n, span_in=width * 0.3, limit=tick_limit)
    ax.set_xlabel("key j")
    ax.set_ylabel("query i")
    ax.set_title("KL(q\u1d62 \u2016 \u03a9\u1d62\u2c7c q\u2c7c), head mean over valid keys",
                 fontsize=10)
    cb = sub.colorbar(im, ax=ax, location="bottom", shrink=0.8, aspect=35, pad=0.02)
    cb.set_label("KL [nats]  (colour clipped at 99th percentile)", fontsize=9)
    spread = attn_stats.row_std_rows(kl / kappa, mask)
    mean_spread = float(np.nanmean(spread)) if np.isfinite(spread).any() else float("nan")
    _row_bars(bx, spread, "#ef8a62", thr, f"threshold {thr:g}")
    bx.set_title("KL spread per row\nstd(KL/\u03ba) over valid keys", fontsize=9)
    bx.set_xlabel(f"std (\u03ba = {kappa:g})", fontsize=8)
    notes: list[str] = []
    if not np.isfinite(mean_spread):
        sub.suptitle("KL spread undefined: no query has two valid keys", fontsize=10,
                     color="#555555")
    elif mean_spread < thr:
        msg = (f"\u26a0 KL too uniform: mean row std of KL/\u03ba = {mean_spread:.3f} < "
               f"{thr:g} \u2192 softmax(\u2212KL/\u03ba) is near-uniform")
        notes.append(msg)
        sub.suptitle(msg, fontsize=10, color="#7a4f00",
                     bbox={"boxstyle": "round,pad=0.3", "fc": "#fff3b0", "ec": "#d4a017"})
    else:
        sub.suptitle(f"KL spread OK: mean row std of KL/\u03ba = {mean_spread:.3f} \u2265 "
                     f"{thr:g}", fontsize=10, color="#1a7f37")
    return notes, mean_spread
