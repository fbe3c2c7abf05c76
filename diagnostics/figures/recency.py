"""Seed 003: per-sample heatmaps, last-query and received-attention lines, summary distributions."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from gaugeformer import stats as attn_stats
from gaugeformer.stats import KeyPattern

from diagnostics import recency as rec

from diagnostics.figures.base import (
    head_panels,
    as_attention,
    FigureRecord,
    _check_labels,
    _check_tokens,
    _display_text,
    _grid_shape,
    _heatmap,
    _irrep_colour,
    _log_floor,
    _outer_labels,
    _save,
    _status_title,
    _ticks,
)

# ----------------------------------------------------------------------------------------------
# Seed 003: per-sample heatmaps, line plots, summary distributions
# ----------------------------------------------------------------------------------------------


def plot_sample_heatmaps(
    beta: np.ndarray,
    head_labels: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    tokens: Sequence[Sequence[str | bytes]] | None = None,
    samples: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    keys: KeyPattern | None = None,
    prefix: str = "recency",
    dpi: int = 150,
) -> list[FigureRecord]:
    """Per-sample, per-layer figure with one log10 heatmap per head (seed 003).

    Args:
        beta: attention ``(S, L, H, N, N)``.
        head_labels: H labels.
        out_dir: output directory; files ``{prefix}_s{s}_L{l}_heads.png``.
        tokens: optional per-sample token lists.
        samples: samples to draw (default all).
        layers: layers to draw (default all).
        keys: the model's key pattern (default full causal).
        prefix: file-name prefix.
        dpi: PNG resolution.

    Returns:
        One record per (sample, layer).
    """
    b = as_attention(beta, lead="S, L, H")
    s_n, l_n, h, n, _ = b.shape
    labels = _check_labels(head_labels, h)
    mask = (keys or KeyPattern()).grid(n)
    recs = []
    for s in (range(s_n) if samples is None else samples):
        toks = _check_tokens(tokens[s], n) if tokens is not None else None
        for li in (range(l_n) if layers is None else layers):
            rows, cols = _grid_shape(h)
            fig = Figure(figsize=(3.0 * cols + 1.2, 3.0 * rows + 0.7), layout="constrained")
            axes = fig.subplots(rows, cols, squeeze=False)
            stats = attn_stats.row_std_valid(b[s, li], mask, empty=np.nan)
            im = None
            for idx, ax in head_panels(axes, h):
                im = _heatmap(ax, b[s, li, idx], mask, log=True, vmin=_log_floor(n), vmax=0,
                              cmap="viridis")
                _ticks(ax, toks, n, span_in=2.2, limit=16)
                _status_title(ax, idx, labels[idx], float(stats[idx]))
            _outer_labels(axes, h, cols, "key j", "query i", x_all=toks is not None and n <= 16)
            cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, aspect=30)
            cb.set_label("log\u2081\u2080 \u03b2\u1d62\u2c7c")
            fig.suptitle(f"Sample {s}, layer {li}: per-head attention (N = {n})",
                         fontsize=12, fontweight="bold")
            recs.append(_save(fig, Path(out_dir) / f"{prefix}_s{s}_L{li}_heads.png", dpi))
    return recs


def plot_recency_lines(
    beta: np.ndarray,
    head_labels: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    samples: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    keys: KeyPattern | None = None,
    prefix: str = "recency",
    dpi: int = 150,
) -> list[FigureRecord]:
    """Line plots per sample and layer (seed 003).

    Left: the last query's attention over key positions, one line per head (coloured by irrep),
    with the uniform level 1/n dotted and the recent / distant quarters shaded. Right: average
    attention *received* by each key position j, mean over the queries that may attend to it
    (i ≥ j for a causal model), one line per head.

    Args:
        beta: attention ``(S, L, H, N, N)``.
        head_labels: H labels.
        out_dir: output directory; files ``{prefix}_s{s}_L{l}_lines.png``.
        samples: samples to draw (default all).
        layers: layers to draw (default all).
        keys: the model's key pattern (default full causal).
        prefix: file-name prefix.
        dpi: PNG resolution.

    Returns:
        One record per (sample, layer).
    """
    b = as_attention(beta, lead="S, L, H")
    s_n, l_n, h, n, _ = b.shape
    labels = _check_labels(head_labels, h)
    mask = (keys or KeyPattern()).grid(n)
    recv = np.where(mask, b, 0).sum(-2) / np.maximum(mask.sum(-2), 1)  # (S, L, H, N)
    recs = []
    for s in (range(s_n) if samples is None else samples):
        for li in (range(l_n) if layers is None else layers):
            fig = Figure(figsize=(13, 4.6), layout="constrained")
            ax, bx = fig.subplots(1, 2)
            ax.set_label("last_query")
            bx.set_label("received")
            _last_query_lines(ax, b[s, li, :, -1, :], mask[-1], labels)
            _lines_by_head(bx, recv[s, li], labels)
            bx.set_title("Average attention received per position\n(mean over the queries "
                         "that may attend j)", fontsize=10)
            bx.set_xlabel("key position j")
            bx.set_ylabel("mean \u03b2\u1d62\u2c7c")
            fig.suptitle(f"Sample {s}, layer {li}: recency profile", fontsize=12,
                         fontweight="bold")
            recs.append(_save(fig, Path(out_dir) / f"{prefix}_s{s}_L{li}_lines.png", dpi))
    return recs


def _lines_by_head(ax: Axes, rows: np.ndarray, labels: list[str]) -> None:
    """One line per head, irrep colours, legend de-duplicated by label."""
    seen: set[str] = set()
    x = np.arange(rows.shape[-1])
    for hi, lab in enumerate(labels):
        name = lab if lab not in seen else None
        seen.add(lab)
        ax.plot(x, rows[hi], color=_irrep_colour(lab), lw=1.4, alpha=0.85, marker=".",
                ms=3, label=name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="best")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _last_query_lines(ax: Axes, rows: np.ndarray, ctx: np.ndarray, labels: list[str]) -> None:
    """Last query row per head over its context, with recent/distant quarters shaded."""
    n_ctx = int(ctx.sum())
    q = max(1, int(0.25 * n_ctx))
    idx = np.nonzero(ctx)[0]
    ax.axvspan(idx[0] - 0.5, idx[q - 1] + 0.5, color="#9ecae1", alpha=0.35,
               label="earliest 25 %")
    ax.axvspan(idx[-q] - 0.5, idx[-1] + 0.5, color="#fdae6b", alpha=0.35,
               label="most recent 25 %")
    ax.axhline(1.0 / max(n_ctx, 1), color="k", ls=":", lw=1, label="uniform 1/n")
    _lines_by_head(ax, np.where(ctx, rows, np.nan), labels)
    ax.set_title("Last query's attention over the context", fontsize=10)
    ax.set_xlabel("key position j")
    ax.set_ylabel("\u03b2 (last query row)")


def plot_recency_summary(
    analysis: rec.RecencyAnalysis,
    out: str | os.PathLike[str],
    *,
    head_labels: Sequence[str] | None = None,
    thresholds: rec.Thresholds | None = None,
    dpi: int = 150,
) -> FigureRecord:
    """Summary distributions across samples (seed 003), one box per layer.

    Six panels, each over samples × heads of the last query row unless noted: mean context
    attention, std (concentration), entropy (nats; dashed: ln n and the 2.0 threshold),
    recent/distant ratio (log scale; dashed: threshold), argmax distance from the query, and the
    normalised entropy of *every* query row. Points are coloured by irrep.

    Args:
        analysis: result of :func:`diagnostics.recency.analyze_recency`.
        out: PNG path.
        head_labels: optional H labels (point colours, legend).
        thresholds: thresholds drawn as dashed lines (default :class:`recency.Thresholds`).
        dpi: PNG resolution.

    Returns:
        :class:`FigureRecord`.
    """
    a = analysis
    thresholds = thresholds or rec.Thresholds()
    s_n, l_n, h = a.shape
    labels = [_display_text(x) for x in head_labels] if head_labels else [""] * h
    if len(labels) != h:
        raise ValueError(f"got {len(labels)} head labels for {h} heads")
    last = a.last
    ratio = np.where(np.isinf(last.recent_distant), np.nan, last.recent_distant)
    panels = [
        ("mean", last.mean, "mean context attention",
         [(1.0 / a.n_context, "uniform 1/n")], False),
        ("std", last.std, "std of context attention (concentration)", None, False),
        ("entropy", last.entropy, "entropy [nats]",
         [(math.log(a.n_context), "ln n"), (thresholds.entropy_nats, "threshold")], False),
        ("ratio", ratio, "recent / distant ratio",
         [(thresholds.recency_ratio, "threshold"), (1.0, "no bias")], True),
        ("argmax_dist", last.argmax_dist.astype(float), "argmax distance from query (i \u2212 j)",
         None, False),
    ]
    fig = Figure(figsize=(15, 8.2), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    for ax, (key, data, title, refs, logy) in zip(axes, panels, strict=False):
        ax.set_label(f"summary:{key}")
        _box_by_layer(ax, data, labels, title, refs, logy)
    axes[0].set_ylim(0, max(2.0 / a.n_context, float(np.nanmax(last.mean)) * 1.1))
    axes[4].set_ylim(-0.5, a.n_context - 0.5)
    axes[4].yaxis.set_major_locator(MaxNLocator(integer=True))
    n_inf = int(np.isinf(last.recent_distant).sum())
    if n_inf:
        axes[3].text(0.02, 0.97, f"{n_inf} infinite ratios (no distant mass) not drawn",
                     transform=axes[3].transAxes, fontsize=7, va="top")
    rows_norm = a.rows.entropy_norm  # (S, L, H, N)
    ax = axes[5]
    ax.set_label("summary:rows_entropy")
    data = [rows_norm[:, li][np.isfinite(rows_norm[:, li])] for li in range(l_n)]
    ax.violinplot([d if d.size else np.array([np.nan]) for d in data], positions=range(l_n),
                  showmedians=True)
    ax.axhline(thresholds.entropy_norm, color="#c62828", ls="--", lw=1,
               label=f"threshold {thresholds.entropy_norm:g}")
    ax.set_xticks(range(l_n), [f"L{i}" for i in range(l_n)])
    ax.set_title("entropy / ln n, every query row", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _irrep_legend(fig, labels)
    fig.suptitle(f"Last-query attention statistics across {s_n} samples \u00d7 {h} heads "
                 f"(context n = {a.n_context})", fontsize=13, fontweight="bold")
    return _save(fig, out, dpi)


def _box_by_layer(ax: Axes, data: np.ndarray, labels: list[str], title: str,
                  refs: list[tuple[float, str]] | None, logy: bool) -> None:
    """Box per layer over samples × heads, with jittered points coloured by irrep."""
    _, l_n, h = data.shape
    groups = [data[:, li].ravel() for li in range(l_n)]
    groups = [g[np.isfinite(g)] for g in groups]
    ax.boxplot([g if g.size else np.array([np.nan]) for g in groups], positions=range(l_n),
               widths=0.5, showfliers=False)
    rng = np.random.default_rng(0)
    for li in range(l_n):
        for hi in range(h):
            v = data[:, li, hi]
            v = v[np.isfinite(v)]
            ax.scatter(li + rng.uniform(-0.18, 0.18, v.size), v, s=10, alpha=0.7,
                       color=_irrep_colour(labels[hi]), lw=0)
    for val, name in refs or []:
        ax.axhline(val, color="#c62828" if name == "threshold" else "#555555", ls="--", lw=1,
                   label=f"{name} = {val:.2f}")
    if refs:
        ax.legend(fontsize=7, loc="best")
    if logy:
        ax.set_yscale("log")
    ax.set_xticks(range(l_n), [f"L{i}" for i in range(l_n)])
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)


def _irrep_legend(fig: Figure, labels: list[str]) -> None:
    """Figure legend mapping irrep labels to point colours."""
    uniq = list(dict.fromkeys(lab for lab in labels if lab))
    if not uniq:
        return
    handles = [Line2D([], [], color=_irrep_colour(u), marker="o", ls="", ms=5) for u in uniq]
    fig.legend(handles, uniq, loc="outside lower center", ncol=min(len(uniq), 8), fontsize=8,
               title="head irrep", title_fontsize=8)


# ----------------------------------------------------------------------------------------------
