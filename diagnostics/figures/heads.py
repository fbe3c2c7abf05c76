"""Seed 004: one head with token labels, all heads of a layer, attention flow, top-k report."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gaugeformer import stats as attn_stats
from gaugeformer.stats import KeyPattern

from diagnostics.figures.base import (
    head_panels,
    as_attention,
    FigureRecord,
    MAX_TOKEN_TICKS,
    STATUS_COLOURS,
    _caption_lines,
    _check_labels,
    _check_tokens,
    _grid_shape,
    _heatmap,
    _log_floor,
    _out_path,
    _outer_labels,
    _save,
    _self_masked,
    _status_title,
    _tick_fontsize,
    _ticks,
    _with_preview,
    format_tokens,
)

# ----------------------------------------------------------------------------------------------
# Seed 004: single head, all heads, attention flow, top-k report
# ----------------------------------------------------------------------------------------------


def _single_heatmap(ax: Axes, mat: np.ndarray, mask: np.ndarray, toks: list[str] | None,
                    *, log: bool, span_in: float, limit: int, annotate: bool) -> Any:
    """Linear (0..1, Blues) or log10 (viridis) heatmap with token labels."""
    n = mat.shape[0]
    if log:
        im = _heatmap(ax, mat, mask, log=True, vmin=_log_floor(n), vmax=0.0, cmap="viridis")
    else:
        im = _heatmap(ax, mat, mask, log=False, vmin=0.0, vmax=1.0, cmap="Blues")
    _ticks(ax, toks, n, span_in=span_in, limit=limit)
    ax.set_xlabel("key j (attended to)")
    ax.set_ylabel("query i (attending from)")
    if annotate and n <= 16:
        fs = _tick_fontsize(n, span_in) - 1
        for i, j in zip(*np.nonzero(mask & (mat >= 0.1)), strict=True):
            ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=fs,
                    color="white" if (log or mat[i, j] > 0.6) else "black")
    return im


def plot_head_heatmap(
    beta: np.ndarray,
    tokens: Sequence[str | bytes],
    head_labels: Sequence[str],
    out: str | os.PathLike[str],
    *,
    layer: int = 0,
    head: int = 0,
    batch: int = 0,
    keys: KeyPattern | None = None,
    self_masked: bool = False,
    log_scale: bool = False,
    caption: Mapping[str, Any] | None = None,
    max_token_ticks: int = MAX_TOKEN_TICKS,
    dpi: int = 150,
) -> FigureRecord:
    """Single-head heatmap with token labels on both axes (seed 004 ``layer_X_head_Y``).

    Linear β in [0, 1] (Blues; values ≥ 0.1 annotated when N ≤ 16) or log10 β; masked keys in
    grey; title with layer, head, irrep label and valid-keys row_std.

    Args:
        beta: attention ``(L, B, H, N, N)``.
        tokens: N decoded tokens.
        head_labels: H irrep labels.
        out: PNG path.
        layer: layer index.
        head: head index.
        batch: batch element.
        keys: the model's key pattern (default: full causal, ``self_masked`` / the caption's flag).
        self_masked: the diagonal is masked (overridden by ``caption`` if given).
        log_scale: log10 colour scale instead of linear.
        caption: optional caption dict (drawn under the title).
        max_token_ticks: token labels when N ≤ this.
        dpi: PNG resolution.

    Returns:
        :class:`FigureRecord` (``stats["row_std"]``).
    """
    b = as_attention(beta, "beta")
    _, _, h, n, _ = b.shape
    labels = _check_labels(head_labels, h)
    toks = _check_tokens(tokens, n)
    masked = _self_masked(caption) if caption is not None else self_masked
    mask = (keys or KeyPattern(mask_self=masked)).grid(n)
    mat = b[layer, batch, head]
    side = float(np.clip(0.22 * n + 2.5, 5.0, 11.0))
    fig = Figure(figsize=(side + 1.6, side + (0.8 if caption else 0.3)), layout="constrained")
    ax = fig.add_subplot(label=f"head:{head}")
    im = _single_heatmap(ax, mat, mask, toks, log=log_scale, span_in=side - 1.5,
                         limit=max_token_ticks, annotate=not log_scale)
    std = float(attn_stats.row_std_valid(mat, mask, empty=np.nan))
    status = attn_stats.status(std)
    ax.set_title(f"Layer {layer} \u00b7 head {head} ({labels[head]})   row_std {std:.3f} "
                 f"{status}", fontsize=11, color=STATUS_COLOURS[status])
    cb = fig.colorbar(im, ax=ax, shrink=0.8)
    cb.set_label("log\u2081\u2080 \u03b2\u1d62\u2c7c" if log_scale else "\u03b2\u1d62\u2c7c")
    if caption:
        width = max(40, int(fig.get_figwidth() * 14))  # characters that fit at fontsize 8
        lines = [part for line in _caption_lines(_with_preview(caption, tokens), n)
                 for part in textwrap.wrap(line, width)]
        fig.suptitle("\n".join(lines), fontsize=8, x=0.01, ha="left")
    return _save(fig, out, dpi, stats={"row_std": std})


def plot_all_heads(
    beta: np.ndarray,
    tokens: Sequence[str | bytes] | None,
    head_labels: Sequence[str],
    out: str | os.PathLike[str],
    *,
    layer: int = 0,
    batch: int = 0,
    keys: KeyPattern | None = None,
    self_masked: bool = False,
    log_scale: bool = True,
    max_cols: int = 4,
    max_token_ticks: int = 24,
    dpi: int = 150,
) -> FigureRecord:
    """Grid of every head of one layer (seed 004 ``layer_X_all_heads``), one shared colorbar.

    Args:
        beta: attention ``(L, B, H, N, N)``.
        tokens: N decoded tokens or None.
        head_labels: H irrep labels.
        out: PNG path.
        layer: layer index.
        batch: batch element.
        keys: the model's key pattern (default: full causal, ``self_masked``).
        self_masked: the diagonal is masked.
        log_scale: log10 (default) or linear colour scale.
        max_cols: columns of the grid.
        max_token_ticks: token labels when N ≤ this.
        dpi: PNG resolution.

    Returns:
        :class:`FigureRecord` (``panels["head"] == H``, ``stats["row_std"]`` per head).
    """
    b = as_attention(beta, "beta")
    _, _, h, n, _ = b.shape
    labels = _check_labels(head_labels, h)
    toks = _check_tokens(tokens, n)
    mask = (keys or KeyPattern(mask_self=self_masked)).grid(n)
    rows, cols = _grid_shape(h, max_cols)
    panel = 3.6 if (toks is not None and n <= max_token_ticks) else 3.0
    fig = Figure(figsize=(panel * cols + 1.2, panel * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    stats = attn_stats.row_std_valid(b[layer, batch], mask, empty=np.nan)
    im = None
    for idx, ax in head_panels(axes, h):
        im = _single_heatmap(ax, b[layer, batch, idx], mask, toks, log=log_scale,
                             span_in=panel - 1.0, limit=max_token_ticks, annotate=False)
        _status_title(ax, idx, labels[idx], float(stats[idx]))
    _outer_labels(axes, h, cols, "key j (attended to)", "query i (attending from)",
                  x_all=toks is not None and n <= max_token_ticks)
    cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.7, aspect=30)
    cb.set_label("log\u2081\u2080 \u03b2\u1d62\u2c7c" if log_scale else "\u03b2\u1d62\u2c7c")
    fig.suptitle(f"Layer {layer}: all {h} heads (batch element {batch})", fontsize=13,
                 fontweight="bold")
    return _save(fig, out, dpi, stats={"row_std": [float(x) for x in stats]})


def attention_flow(beta: np.ndarray, *, causal: bool = True) -> dict[str, np.ndarray]:
    """Per-layer, per-head attention mass on self / previous tokens, averaged over rows i ≥ 1.

    Args:
        beta: attention ``(L, B, H, N, N)``.
        causal: if False, ``future`` mass is reported too.

    Returns:
        Arrays ``(L, H)`` (mean over batch and rows 1…N−1): ``self`` = β_ii, ``previous`` =
        Σ_{j<i} β_ij, ``prev_token`` = β_{i,i−1}, ``first`` = β_{i,0} and ``future`` =
        Σ_{j>i} β_ij.
    """
    b = as_attention(beta, "beta")
    n = b.shape[-1]
    if n < 2:
        raise ValueError("attention flow needs N >= 2")
    rows = np.arange(1, n)
    lower = np.tril(np.ones((n, n), bool), -1)
    upper = np.triu(np.ones((n, n), bool), 1)
    out = {
        "self": b[..., rows, rows],
        "previous": np.where(lower, b, 0).sum(-1)[..., 1:],
        "prev_token": b[..., rows, rows - 1],
        "first": b[..., 1:, 0],
        "future": np.where(upper, b, 0).sum(-1)[..., 1:],
    }
    return {k: v.mean(axis=(1, 3)) for k, v in out.items()}


def plot_attention_flow(
    beta: np.ndarray,
    head_labels: Sequence[str],
    out: str | os.PathLike[str],
    *,
    causal: bool = True,
    dpi: int = 150,
) -> FigureRecord:
    """Attention flow across layers (seed 004 ``attention_flow``).

    Left: head-mean attention mass per layer on self (β_ii) and on previous tokens (Σ_{j<i}),
    plus the previous token and the first token, with min–max bands over heads. Right: self mass
    per layer × head (annotated), columns labelled with the irrep.

    Args:
        beta: attention ``(L, B, H, N, N)``; averaged over batch and query rows i ≥ 1 (row 0 can
            only attend to itself and is left out).
        head_labels: H irrep labels.
        out: PNG path.
        causal: keys ``j > i`` are masked (otherwise the future mass is drawn too).
        dpi: PNG resolution.

    Returns:
        :class:`FigureRecord` (``stats`` holds the (L, H) arrays as lists).
    """
    b = as_attention(beta, "beta")
    n_layers, _, h, _, _ = b.shape
    labels = _check_labels(head_labels, h)
    flow = attention_flow(b, causal=causal)
    fig = Figure(figsize=(12.5, 4.8), layout="constrained")
    ax, hx = fig.subplots(1, 2, width_ratios=[1.25, 1.0])
    ax.set_label("flow")
    hx.set_label("flow_heads")
    xs = np.arange(n_layers)
    series = [("self", "self-attention β\u1d62\u1d62", "#d62728", "o"),
              ("previous", "previous tokens \u03a3\u2c7c<\u1d62 β\u1d62\u2c7c", "#1f77b4", "s"),
              ("prev_token", "previous token β\u1d62,\u1d62\u208b\u2081", "#2ca02c", "^"),
              ("first", "first token β\u1d62,\u2080", "#9467bd", "v")]
    if not causal:
        series.append(("future", "future tokens \u03a3\u2c7c>\u1d62", "#7f7f7f", "d"))
    for key, name, colour, marker in series:
        v = flow[key]
        ax.plot(xs, v.mean(1), marker=marker, color=colour, lw=2, label=name)
        ax.fill_between(xs, v.min(1), v.max(1), color=colour, alpha=0.12, lw=0)
    ax.set_xticks(xs, [f"L{i}" for i in xs])
    ax.set_xlim(-0.3, n_layers - 0.7) if n_layers > 1 else ax.set_xlim(-0.5, 0.5)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean attention mass per query (rows i \u2265 1)")
    ax.set_title("Attention flow across layers (line: head mean, band: min\u2013max over heads)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    _annotated_matrix(fig, hx, flow["self"], labels, "self-attention mass per head")
    return _save(fig, out, dpi, stats={k: v.tolist() for k, v in flow.items()})


def _annotated_matrix(fig: Figure, ax: Axes, mat: np.ndarray, labels: list[str],
                      title: str) -> None:
    """Layer × head matrix in [0, 1] with values written in the cells."""
    n_layers, h = mat.shape
    im = ax.imshow(mat, cmap="Reds", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(np.arange(h), [f"h{i}\n{lab}" for i, lab in enumerate(labels)],
                  fontsize=7 if h > 8 else 8)
    ax.set_yticks(np.arange(n_layers), [f"L{i}" for i in range(n_layers)])
    if h * n_layers <= 200:
        for (i, j), v in np.ndenumerate(mat):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if v > 0.6 else "black")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.85)


def topk_report(
    beta: np.ndarray,
    tokens: Sequence[str | bytes],
    *,
    k: int = 5,
    head: int | None = None,
    head_labels: Sequence[str] | None = None,
    batch: int = 0,
    layers: Sequence[int] | None = None,
    keys: KeyPattern | None = None,
    out: str | os.PathLike[str] | None = None,
) -> str:
    """Top-k attended tokens for every query (seed 004 text analysis), from the β given.

    Args:
        beta: attention ``(L, B, H, N, N)``; it is read, never recomputed.
        tokens: N decoded tokens.
        k: number of keys per query.
        head: a head index, or None for the head mean (stated in the header; lossy).
        head_labels: optional labels (used in the header when ``head`` is given).
        batch: batch element.
        layers: layers to report (default all).
        keys: the model's key pattern; only valid keys are ranked (default full causal).
        out: if given, the text is also written to this ``.txt`` path.

    Returns:
        The report text.
    """
    b = as_attention(beta, "beta")
    n_layers, _, h, n, _ = b.shape
    if len(tokens) != n:
        raise ValueError(f"got {len(tokens)} tokens for sequence length {n}")
    toks = format_tokens(tokens, max_len=20)
    if head is None:
        what = f"head mean over {h} heads (lossy)"
    else:
        lab = f" ({head_labels[head]})" if head_labels is not None else ""
        what = f"head {head}{lab}"
    keys = keys or KeyPattern()
    mask = keys.grid(n)
    which = "j \u2264 i" if keys == KeyPattern() else keys.describe()
    lines = [(f"Top-{k} attended tokens per query \u2014 {what}, batch element {batch}, "
              f"keys {which}")]
    for li in (range(n_layers) if layers is None else layers):
        mat = b[li, batch].mean(0) if head is None else b[li, batch, head]
        lines.append(f"\nLayer {li}:")
        for i in range(n):
            lines.extend(_topk_lines(mat[i], i, toks, k, mask[i]))
    text = "\n".join(lines) + "\n"
    if out is not None:
        _out_path(out).write_text(text, encoding="utf-8")
    return text


def _topk_lines(row: np.ndarray, i: int, toks: list[str], k: int, valid: np.ndarray
                ) -> list[str]:
    """Lines for one query row (``valid``: its valid keys)."""
    valid = np.flatnonzero(valid)
    order = valid[np.argsort(-row[valid], kind="stable")][:k]
    out = [f"  [{i:>3}] \u00ab{toks[i]}\u00bb attends most to:"]
    for rank, j in enumerate(order, 1):
        tag = " (self)" if j == i else ""
        quoted = f"\u00ab{toks[j]}\u00bb"
        out.append(f"      {rank}. [{j:>3}] {quoted:<24} {row[j]:.3f}{tag}")
    return out
