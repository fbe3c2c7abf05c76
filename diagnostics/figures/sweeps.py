"""Seed 001: per-head row_std against κ, and the per-irrep row_std summary."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from gaugeformer import stats as attn_stats

from diagnostics.figures.base import (
    FigureRecord,
    STATUS_COLOURS,
    _display_text,
    _irrep_colour,
    _save,
    irrep_of,
)


def plot_kappa_sweep(
    kappas: Sequence[float],
    row_std: np.ndarray,
    head_labels: Sequence[str],
    out: str | os.PathLike[str],
    *,
    dpi: int = 150,
) -> FigureRecord:
    """Per-head row_std against κ, coloured by irrep, with SHARP / MEDIUM thresholds.

    Thin lines are heads, thick dashed lines the mean of each irrep.

    Args:
        kappas: K temperatures.
        row_std: ``(K, H)`` valid-keys row_std per κ and head.
        head_labels: H labels.
        out: PNG path.
        dpi: PNG resolution.

    Returns:
        :class:`FigureRecord`.
    """
    ks = np.asarray(kappas, float)
    vals = np.asarray(row_std, float)
    if vals.shape != (ks.size, len(head_labels)):
        raise ValueError(f"row_std must be (K={ks.size}, H={len(head_labels)}); got {vals.shape}")
    labels = [_display_text(x) for x in head_labels]
    order = np.argsort(ks)
    ks, vals = ks[order], vals[order]
    fig = Figure(figsize=(8.5, 5.2), layout="constrained")
    ax = fig.add_subplot(label="kappa_sweep")
    for hi, lab in enumerate(labels):
        ax.plot(ks, vals[:, hi], color=_irrep_colour(lab), lw=1, alpha=0.45)
    for lab in dict.fromkeys(labels):
        cols = [i for i, x in enumerate(labels) if x == lab]
        ax.plot(ks, vals[:, cols].mean(1), color=_irrep_colour(lab), lw=2.6, ls="--",
                marker="o", ms=4, label=f"{lab} (\u00d7{len(cols)}, mean)")
    ax.axhline(attn_stats.SHARP_THRESHOLD, color=STATUS_COLOURS["SHARP"], ls=":", lw=1.2,
               label=f"SHARP > {attn_stats.SHARP_THRESHOLD:.2f}")
    ax.axhline(attn_stats.MEDIUM_THRESHOLD, color=STATUS_COLOURS["MEDIUM"], ls=":", lw=1.2,
               label=f"MEDIUM > {attn_stats.MEDIUM_THRESHOLD:.2f}")
    if ks.size > 1 and ks.min() > 0 and ks.max() / ks.min() >= 10:
        ax.set_xscale("log")
    ax.set_xlabel("\u03ba (attention temperature)")
    ax.set_ylabel("row_std (valid keys)")
    ax.set_title("Attention sharpness vs \u03ba (thin: individual heads)", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    return _save(fig, out, dpi)


def plot_irrep_summary(
    values: np.ndarray,
    head_labels: Sequence[str],
    out: str | os.PathLike[str],
    *,
    metric: str = "row_std",
    thresholds: Sequence[tuple[float, str]] = ((attn_stats.SHARP_THRESHOLD, "SHARP"),
                                                (attn_stats.MEDIUM_THRESHOLD, "MEDIUM")),
    dpi: int = 150,
) -> FigureRecord:
    """Bar per irrep (mean ± std over its heads and any leading axes) with the heads as dots.

    Args:
        values: ``(H,)`` or ``(..., H)`` metric per head (e.g. ``(L, H)`` row_std).
        head_labels: H labels; heads with equal labels form one bar.
        out: PNG path.
        metric: y-axis name.
        thresholds: horizontal reference lines ``(value, name)``.
        dpi: PNG resolution.

    Returns:
        :class:`FigureRecord` (``stats`` maps label → mean).
    """
    v = np.asarray(values, float)
    labels = [_display_text(x) for x in head_labels]
    if v.shape[-1] != len(labels):
        raise ValueError(f"values last axis {v.shape[-1]} != {len(labels)} head labels")
    v = v.reshape(-1, len(labels))
    groups = list(dict.fromkeys(labels))
    fig = Figure(figsize=(max(5.5, 1.3 * len(groups) + 3), 4.6), layout="constrained")
    ax = fig.add_subplot(label="irrep_summary")
    means = {}
    rng = np.random.default_rng(0)
    for gi, g in enumerate(groups):
        d = v[:, [i for i, x in enumerate(labels) if x == g]].ravel()
        d = d[np.isfinite(d)]
        means[g] = float(d.mean()) if d.size else float("nan")
        _, pad = irrep_of(g)
        ax.bar(gi, means[g], yerr=d.std() if d.size > 1 else 0, color=_irrep_colour(g),
               alpha=0.75, capsize=4, hatch="//" if pad else None, edgecolor="black", lw=0.6)
        ax.scatter(gi + rng.uniform(-0.22, 0.22, d.size), d, color="black", s=9, zorder=3)
        ax.text(gi, 0, f"n={d.size}", ha="center", va="bottom", fontsize=7, color="white")
    for val, name in thresholds:
        ax.axhline(val, color=STATUS_COLOURS.get(name, "#555555"), ls=":", lw=1.2,
                   label=f"{name} {val:g}")
    ax.set_xticks(range(len(groups)),
                  [f"{g}\n\u00d7{labels.count(g)} heads" for g in groups])
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by irrep (bar: mean \u00b1 std, dots: heads)", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    if thresholds:
        ax.legend(fontsize=8)
    return _save(fig, out, dpi, stats=means)
