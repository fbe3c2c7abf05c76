"""Publication attention figures (host-side numpy + matplotlib, no model dependency).

All inputs are numpy arrays captured from the model:

* ``beta`` and ``kl``: ``(L, B, H, N, N)`` = [layer, batch, head, query i, key j]. A 4-D
  ``(B, H, N, N)`` array is accepted as a single layer.
* ``tokens``: N already-decoded token strings (or raw ``bytes``); see :func:`format_token`.
* ``head_labels``: H labels such as ``"ℓ0"``, ``"ℓ1"``, ``"ℓ0_pad"``.
* ``caption``: ``{"source", "text_preview", "checkpoint", "self_attention_masked"}``.

Figures are built on :class:`matplotlib.figure.Figure` directly (Agg canvas, no pyplot state, so
nothing is left open), written as PNG, and described by a :class:`FigureRecord` (the path plus a
count of panels by kind, taken from the drawn axes).

Masked keys (``j > i`` for a causal model; the diagonal when self-attention is masked) are drawn
in light grey and are excluded from every statistic ("valid keys"). ``row_std`` here is the
valid-keys variant: for each query row the population std of β over its valid keys, averaged over
rows with at least two valid keys; SHARP > 0.1, MEDIUM > 0.05, else UNIFORM.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps, font_manager, ft2font
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, ScalarFormatter

from gaugeformer import stats as attn_stats
from gaugeformer.stats import KeyPattern

from diagnostics import recency as rec

__all__ = [
    "FigureRecord",
    "format_token",
    "format_tokens",
    "irrep_of",
    "plot_all_heads",
    "plot_attention_flow",
    "plot_attention_with_context",
    "plot_head_heatmap",
    "plot_irrep_summary",
    "plot_kappa_sweep",
    "plot_recency_lines",
    "plot_recency_summary",
    "plot_sample_heatmaps",
    "plot_training_curves",
    "topk_report",
]

STATUS_COLOURS = {
    "SHARP": "#1a7f37", "MEDIUM": "#d97706", "UNIFORM": "#c62828", "n/a": "#555555",
}
MASK_COLOUR = "#e6e6e6"
MAX_TOKEN_TICKS = 48
_MONO = ["DejaVu Sans Mono", "DejaVu Sans"]


# ----------------------------------------------------------------------------------------------
# Records and tokens
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FigureRecord:
    """A written figure: its path, panel counts by kind and any warnings shown on it.

    It is ``os.PathLike``, so it can be passed wherever a path is expected.

    Attributes:
        path: the PNG written.
        panels: number of axes per kind (e.g. ``{"head": 9, "colorbar": 3, ...}``), counted
            from the figure's axes at save time.
        notes: warnings drawn on the figure (e.g. "KL too uniform").
        stats: numbers shown on the figure (e.g. per-head row_std).
    """

    path: Path
    panels: dict[str, int]
    notes: tuple[str, ...] = ()
    stats: dict[str, Any] = field(default_factory=dict)

    def __fspath__(self) -> str:
        """The PNG path as a string."""
        return str(self.path)


@lru_cache(maxsize=1)
def _font_charset() -> frozenset[int]:
    """Code points the default sans-serif and mono fonts can draw."""
    cps: set[int] = set()
    for fam in ("DejaVu Sans",):
        try:
            path = font_manager.findfont(fam, fallback_to_default=True)
            cps.update(ft2font.FT2Font(path).get_charmap())
        except (OSError, RuntimeError, ValueError):  # pragma: no cover - font missing
            continue
    return frozenset(cps)


def _escape_char(ch: str, charset: frozenset[int] | None) -> str:
    r"""Printable replacement of one character (``\\xNN``, ``\\uNNNN``, ``⟨?⟩`` …)."""
    cp = ord(ch)
    special = {"\n": "↵", "\r": "\\r", "\t": "\\t", "\ufffd": "⟨?⟩"}
    if ch in special:
        return special[ch]
    if 0xDC80 <= cp <= 0xDCFF:  # surrogateescape-decoded raw byte
        return f"\\x{cp - 0xDC00:02x}"
    if not ch.isprintable() and ch != " ":
        return f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}"
    if charset is not None and cp not in charset and ch != " ":
        return f"\\u{cp:04x}" if cp <= 0xFFFF else f"\\U{cp:08x}"
    return ch


def format_token(
    tok: str | bytes,
    *,
    max_len: int = 12,
    mark_spaces: bool = True,
    for_matplotlib: bool = False,
) -> str:
    r"""Makes a decoded BPE piece displayable.

    Raw ``bytes`` that are not valid UTF-8 (partial multi-byte pieces) are shown as ``\\xNN``;
    U+FFFD from a lossy decode as ``⟨?⟩``; newlines as ``↵``; other unprintable characters as
    ``\\xNN``/``\\uNNNN``; leading/trailing spaces as ``␣``; an empty piece as ``⟨∅⟩``.

    Args:
        tok: the token as decoded text, or its raw bytes.
        max_len: longer results are cut to ``max_len - 1`` characters plus ``…``.
        mark_spaces: show leading/trailing spaces as ``␣``.
        for_matplotlib: also replace characters the bundled fonts cannot draw with
            ``\\uNNNN`` and escape ``$`` so matplotlib does not start mathtext.

    Returns:
        A short printable string.
    """
    if isinstance(tok, (bytes, bytearray)):
        tok = bytes(tok).decode("utf-8", errors="surrogateescape")
    tok = str(tok)
    if tok == "":
        return "⟨∅⟩"
    charset = _font_charset() if for_matplotlib else None
    core = tok.strip(" ")
    lead, trail = len(tok) - len(tok.lstrip(" ")), len(tok) - len(tok.rstrip(" "))
    if not core:
        lead, trail = len(tok), 0
    sp = "␣" if mark_spaces else " "
    text = sp * lead + "".join(_escape_char(c, charset) for c in core) + sp * trail
    if len(text) > max_len:
        text = text[: max(1, max_len - 1)] + "…"
    return text.replace("$", r"\$") if for_matplotlib else text


def format_tokens(tokens: Sequence[str | bytes], **kwargs: Any) -> list[str]:
    """Applies :func:`format_token` to every token.

    Args:
        tokens: decoded tokens.
        **kwargs: passed to :func:`format_token`.

    Returns:
        Display strings.
    """
    return [format_token(t, **kwargs) for t in tokens]


def _display_text(text: str, for_matplotlib: bool = True) -> str:
    """Free text (caption, preview) made safe: unprintables escaped, ``$`` escaped."""
    charset = _font_charset() if for_matplotlib else None
    out = "".join(" " if c == "\n" else _escape_char(c, charset) for c in str(text))
    return out.replace("$", r"\$") if for_matplotlib else out


# ----------------------------------------------------------------------------------------------
# Statistics on valid keys
# ----------------------------------------------------------------------------------------------


_IRREP_RE = re.compile(r"(?:ℓ|l|L|ell)\s*=?\s*(\d+)")


def irrep_of(label: str) -> tuple[int | None, bool]:
    """Parses an irrep label: ``"ℓ1"`` → ``(1, False)``, ``"ℓ0_pad"`` → ``(0, True)``."""
    m = _IRREP_RE.search(label)
    return (int(m.group(1)) if m else None), ("pad" in label.lower())


def _irrep_colour(label: str) -> str:
    """A stable colour per irrep order (padding heads in grey)."""
    ell, pad = irrep_of(label)
    if pad:
        return "#8c8c8c"
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"]
    if ell is None:
        return "#17becf"
    return palette[ell % len(palette)]


# ----------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------


def _as_lbhnn(x: np.ndarray, name: str) -> np.ndarray:
    """Returns ``x`` as float64 ``(L, B, H, N, N)``."""
    a = np.asarray(x, np.float64)
    if a.ndim == 4:
        a = a[None]
    if a.ndim != 5 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"{name} must be (L, B, H, N, N) or (B, H, N, N); got {a.shape}")
    return np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)


def _check_tokens(tokens: Sequence[str | bytes] | None, n: int) -> list[str] | None:
    """Validates token count; returns matplotlib-safe labels."""
    if tokens is None:
        return None
    if len(tokens) != n:
        raise ValueError(f"got {len(tokens)} tokens for sequence length {n}")
    return format_tokens(tokens, for_matplotlib=True)


def _check_labels(labels: Sequence[str] | None, h: int) -> list[str]:
    """Validates head labels (no silent ``H0…`` fallback)."""
    if labels is None:
        raise ValueError("head_labels is required (one irrep label per head)")
    if len(labels) != h:
        raise ValueError(f"got {len(labels)} head labels for {h} heads")
    return [_display_text(s) for s in labels]


def _out_path(out: str | os.PathLike[str]) -> Path:
    """Creates the parent directory of ``out``."""
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _save(fig: Figure, out: str | os.PathLike[str], dpi: int, notes: Iterable[str] = (),
          stats: Mapping[str, Any] | None = None) -> FigureRecord:
    """Writes the PNG and describes its panels (axes labels set by the drawing code)."""
    path = _out_path(out)
    panels = Counter(_panel_kind(ax) for ax in fig.get_axes())
    fig.savefig(path, dpi=dpi, facecolor="white")
    return FigureRecord(path, dict(panels), tuple(notes), dict(stats or {}))


def _panel_kind(ax: Axes) -> str:
    """Kind of a panel: the axes label up to ``:`` (``"colorbar"`` for colorbars)."""
    lab = ax.get_label()
    return "colorbar" if lab == "<colorbar>" else (lab.split(":")[0] or "axes")


def _caption_lines(caption: Mapping[str, Any], n: int, extra: str = "") -> list[str]:
    """Caption: source, text preview, checkpoint, self-attention masking."""
    if "source" not in caption:
        raise ValueError("caption needs at least a 'source'")
    masked = caption.get("self_attention_masked")
    mask_txt = "unknown" if masked is None else ("yes" if masked else "no")
    ckpt = caption.get("checkpoint") or "random weights"
    preview = _display_text(str(caption.get("text_preview") or ""))[:80]
    line1 = (f"Source: {_display_text(str(caption['source']))}  |  checkpoint: "
             f"{_display_text(str(ckpt))}  |  self-attention masked: {mask_txt}  |  N = {n}")
    lines = [line1 + (f"  |  {extra}" if extra else "")]
    if preview:
        lines.append(f"Text: \u201c{preview}\u2026\u201d")
    return lines


def _with_preview(caption: Mapping[str, Any], tokens: Sequence[str | bytes] | None
                  ) -> dict[str, Any]:
    """Caption copy whose missing ``text_preview`` is the concatenated tokens."""
    cap = dict(caption)
    if not cap.get("text_preview") and tokens is not None:
        cap["text_preview"] = "".join(
            bytes(t).decode("utf-8", "replace") if isinstance(t, (bytes, bytearray)) else str(t)
            for t in tokens
        )
    return cap


def _self_masked(caption: Mapping[str, Any] | None) -> bool:
    """Whether the caption says self-attention is masked."""
    return bool(caption and caption.get("self_attention_masked"))


# ----------------------------------------------------------------------------------------------
# Drawing primitives
# ----------------------------------------------------------------------------------------------


def _log_floor(n: int) -> float:
    """Lower end of the log10 colour scale: ≤ −3 and at least a decade below uniform (1/N)."""
    return float(min(-3.0, math.floor(math.log10(1.0 / max(n, 1))) - 1))


def _heatmap(
    ax: Axes, mat: np.ndarray, mask: np.ndarray, *, log: bool, vmin: float, vmax: float,
    cmap: str,
) -> Any:
    """Draws a masked heatmap; invalid keys in light grey."""
    data = np.log10(np.clip(mat, 10.0**vmin, None)) if log else mat
    cm = colormaps[cmap].with_extremes(bad=MASK_COLOUR)
    im = ax.imshow(np.ma.masked_where(~mask, data), cmap=cm, vmin=vmin, vmax=vmax,
                   interpolation="nearest", aspect="equal")
    return im


def _tick_fontsize(n: int, span_in: float) -> float:
    """Font size so that ``n`` labels fit into ``span_in`` inches."""
    return float(np.clip(0.85 * span_in * 72.0 / max(n, 1), 4.0, 9.0))


def _ticks(ax: Axes, labels: list[str] | None, n: int, *, span_in: float, limit: int,
           x: bool = True, y: bool = True) -> None:
    """Token tick labels if ``n <= limit`` (else integer positions)."""
    if labels is None or n > limit:
        for on, axis in ((x, ax.xaxis), (y, ax.yaxis)):
            if on:
                axis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        return
    fs = _tick_fontsize(n, span_in)
    idx = np.arange(n)
    if x:
        ax.set_xticks(idx, [f"{t} {i}" for i, t in enumerate(labels)], rotation=90,
                      fontsize=fs)
    if y:
        ax.set_yticks(idx, [f"{t} {i}" for i, t in enumerate(labels)], fontsize=fs)
    ax.tick_params(length=2, pad=1)


def _grid_shape(h: int, max_cols: int = 6) -> tuple[int, int]:
    """Rows and columns for ``h`` panels, balanced."""
    rows = max(1, math.ceil(h / max_cols))
    return rows, max(1, math.ceil(h / rows))


def _status_title(ax: Axes, head: int, label: str, value: float, fs: float = 9.0) -> None:
    """Head title: irrep label and row_std status, coloured by the status."""
    status = attn_stats.status(value)
    ax.set_title(f"h{head} \u00b7 {label}\nrow_std {value:.3f} {status}", fontsize=fs,
                 color=STATUS_COLOURS[status], linespacing=1.15)


def _outer_labels(axes: np.ndarray, h: int, cols: int, xlabel: str, ylabel: str, *,
                  x_all: bool = False) -> None:
    """Tick labels only on the left column and the lowest panels (x on all if ``x_all``).

    With token tick labels use ``x_all``: a grid row whose panels differ in x labels gets the
    largest bottom margin for all of its panels, which shrinks that row.
    """
    for idx, ax in enumerate(axes.flat[:h]):
        bottom, left = idx + cols >= h, idx % cols == 0
        ax.tick_params(labelbottom=bottom or x_all, labelleft=left, labelsize=7)
        ax.set_xlabel(xlabel if bottom else "", fontsize=8)
        ax.set_ylabel(ylabel if left else "", fontsize=8)


def _text_panel(sub: Figure | SubFigure, lines: list[str], token_text: str,
                fontsize: float = 8.5) -> None:
    """Caption lines plus the decoded sequence in a monospace box."""
    ax = sub.add_subplot(label="tokens")
    ax.set_axis_off()
    ax.text(0.0, 1.0, "\n".join(lines), transform=ax.transAxes, ha="left", va="top",
            fontsize=fontsize + 0.5)
    ax.text(0.0, 0.0, token_text, transform=ax.transAxes, ha="left", va="bottom",
            fontsize=fontsize, family=_MONO, linespacing=1.25,
            bbox={"boxstyle": "round,pad=0.45", "fc": "#eaf2fb", "ec": "#7aa6d6"})


def _sequence_text(tokens: list[str] | None, n: int, width_in: float, fontsize: float,
                   max_lines: int = 6) -> str:
    """``i:tok | …`` wrapped to the figure width, cut after ``max_lines`` lines."""
    if tokens is None:
        return f"(no tokens given; N = {n})"
    chars = max(40, int(width_in * 72 / (0.62 * fontsize)) - 4)
    lines: list[str] = []
    cur = ""
    for i, t in enumerate(tokens):
        piece = f"{i}:{t}"
        cand = f"{cur} | {piece}" if cur else piece
        final = len(lines) == max_lines - 1  # the last line keeps room for "… +K more"
        if len(cand) <= chars - (16 if final and i < n - 1 else 0):
            cur = cand
            continue
        if final:
            return _seq_join(lines, cur, n - i, n)
        lines.append(cur + " |")
        cur = piece
    lines.append(cur)
    return _seq_join(lines, None, 0, n)


def _seq_join(lines: list[str], last: str | None, more: int, n: int) -> str:
    """Joins the sequence box lines, with a ``… +K more`` marker when cut."""
    if last is not None:
        lines = lines + [f"{last} | \u2026 +{more} more"]
    return f"Sequence ({n} tokens):\n" + "\n".join(lines)


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
    b = _as_lbhnn(beta, "beta")
    k = None if kl is None else _as_lbhnn(kl, "kl")
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
    for idx, ax in enumerate(axes.flat):
        if idx >= h:
            ax.set_axis_off()
            ax.set_label("empty")
            continue
        ax.set_label(f"head:{idx}")
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
    _row_bars(bx, per_row, "#4682b4", attn_stats.MEDIUM_THRESHOLD, "uniform threshold 0.05")
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
    b = _as_lbhnn(beta, "beta")
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
    b = _as_lbhnn(beta, "beta")
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
    for idx, ax in enumerate(axes.flat):
        if idx >= h:
            ax.set_axis_off()
            ax.set_label("empty")
            continue
        ax.set_label(f"head:{idx}")
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
    b = _as_lbhnn(beta, "beta")
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
    b = _as_lbhnn(beta, "beta")
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
    b = _as_lbhnn(beta, "beta")
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
    lines = [(f"Top-{k} attended tokens per query \u2014 {what}, batch element {batch}, "
              f"keys {'j \u2264 i' if keys == KeyPattern() else keys.describe()}")]
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


# ----------------------------------------------------------------------------------------------
# Seed 003: per-sample heatmaps, line plots, summary distributions
# ----------------------------------------------------------------------------------------------


def _as_slhnn(beta: np.ndarray) -> np.ndarray:
    """Returns attention as ``(S, L, H, N, N)`` float64."""
    a = np.asarray(beta, np.float64)
    if a.ndim == 4:
        a = a[None]
    if a.ndim != 5 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"expected (S, L, H, N, N) attention, got {a.shape}")
    return np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)


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
    b = _as_slhnn(beta)
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
            for idx, ax in enumerate(axes.flat):
                if idx >= h:
                    ax.set_axis_off()
                    ax.set_label("empty")
                    continue
                ax.set_label(f"head:{idx}")
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
    b = _as_slhnn(beta)
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
# κ sweep, irrep summary, training curves
# ----------------------------------------------------------------------------------------------


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
    ax.axhline(attn_stats.SHARP_THRESHOLD, color=STATUS_COLOURS["SHARP"], ls=":", lw=1.2, label="SHARP > 0.10")
    ax.axhline(attn_stats.MEDIUM_THRESHOLD, color=STATUS_COLOURS["MEDIUM"], ls=":", lw=1.2, label="MEDIUM > 0.05")
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


_TRAIN_LOSS = ("train_loss", "train/loss", "loss/train", "loss")
_EVAL_LOSS = ("eval_loss", "val_loss", "eval/loss", "val/loss", "loss/eval", "loss/val",
              "validation_loss", "valid_loss")
_TRAIN_PPL = ("train_ppl", "train/ppl", "ppl/train", "train_perplexity", "ppl", "perplexity")
_EVAL_PPL = ("eval_ppl", "val_ppl", "eval/ppl", "val/ppl", "ppl/eval", "ppl/val",
             "eval_perplexity", "val_perplexity", "validation_ppl")
_STEP = ("step", "global_step", "iteration", "iter", "it")


def _load_records(src: str | os.PathLike[str] | Sequence[Mapping[str, Any]]
                  ) -> list[Mapping[str, Any]]:
    """Reads JSON-lines (blank lines skipped) or returns the given list."""
    if isinstance(src, (str, os.PathLike)):
        recs = []
        for no, line in enumerate(Path(src).read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    recs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{src}:{no}: invalid JSON ({e.msg})") from e
        return recs
    return list(src)


def _split_of(rec: Mapping[str, Any]) -> str | None:
    """``"train"``/``"eval"`` from a ``split``/``phase``/``mode`` field, if any."""
    for key in ("split", "phase", "mode", "kind"):
        val = str(rec.get(key, "")).lower()
        if val in ("train", "training"):
            return "train"
        if val in ("eval", "val", "valid", "validation", "test"):
            return "eval"
    return None


def training_series(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list, list]]:
    """Extracts ``(steps, values)`` for train/eval loss and PPL from log records.

    Keys are recognised by common names (``loss``/``train_loss``, ``eval_loss``/``val_loss``,
    ``ppl``…); a record with ``split``/``phase``/``mode`` = train|eval routes a bare ``loss`` /
    ``ppl``. Missing PPL series are derived as exp(loss) (series name ends in ``*``).

    Args:
        records: log dicts.

    Returns:
        Mapping of ``train_loss``, ``eval_loss``, ``train_ppl``, ``eval_ppl`` (those present) to
        ``(steps, values)``.
    """
    out: dict[str, tuple[list, list]] = {}
    for idx, r in enumerate(records):
        step = next((r[k] for k in _STEP if _finite(r.get(k))), idx)
        split = _split_of(r) or "train"
        for name, keys in (("train_loss", _TRAIN_LOSS), ("eval_loss", _EVAL_LOSS),
                           ("train_ppl", _TRAIN_PPL), ("eval_ppl", _EVAL_PPL)):
            bare = "loss" if name.endswith("loss") else "ppl"
            keys = tuple(k for k in keys if k not in ("loss", "ppl", "perplexity"))
            if name.startswith(split):  # a bare key belongs to the record's split
                keys += ("loss",) if bare == "loss" else ("ppl", "perplexity")
            val = next((r[k] for k in keys if _finite(r.get(k))), None)
            if val is not None:
                out.setdefault(name, ([], []))
                out[name][0].append(step)
                out[name][1].append(float(val))
    for split in ("train", "eval"):
        if f"{split}_ppl" not in out and f"{split}_loss" in out:
            st, vals = out[f"{split}_loss"]
            out[f"{split}_ppl*"] = (st, [math.exp(min(v, 700.0)) for v in vals])
    return out


def _finite(x: Any) -> bool:
    """True for a finite real number (bools excluded)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def plot_training_curves(
    src: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
    out: str | os.PathLike[str],
    *,
    title: str = "Training curves",
    dpi: int = 150,
) -> FigureRecord:
    """Loss and perplexity against step, train and eval (two panels).

    Args:
        src: path of a JSON-lines log or a list of dicts (see :func:`training_series`).
        out: PNG path.
        title: figure title.
        dpi: PNG resolution.

    Returns:
        :class:`FigureRecord` (``stats`` holds the final value of each series).
    """
    series = training_series(_load_records(src))
    if not series:
        raise ValueError("no loss / ppl values found in the training log")
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    ax, px = fig.subplots(1, 2)
    ax.set_label("loss")
    px.set_label("ppl")
    style = {"train": {"color": "#1f77b4", "lw": 1.4},
             "eval": {"color": "#d62728", "lw": 2.0, "marker": "o", "ms": 4}}
    for name, (st, vals) in series.items():
        split, kind = name.rstrip("*").split("_")
        target = ax if kind == "loss" else px
        lab = f"{split}" + (" (exp loss)" if name.endswith("*") else "")
        target.plot(st, vals, label=lab, **style[split])
    ax.set_ylabel("cross-entropy loss [nats]")
    px.set_ylabel("perplexity")
    px.set_yscale("log")
    px.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    px.yaxis.set_major_formatter(ScalarFormatter())
    px.yaxis.set_minor_formatter(NullFormatter())
    for a_ in (ax, px):
        a_.set_xlabel("step")
        a_.grid(alpha=0.3)
        if a_.lines:
            a_.legend(fontsize=9)
    fig.suptitle(title, fontsize=12, fontweight="bold")
    return _save(fig, out, dpi, stats={k: v[1][-1] for k, v in series.items()})
