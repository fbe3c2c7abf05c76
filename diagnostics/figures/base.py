"""What every figure shares: the record of a written figure, token labels, input checks, captions
and drawing primitives (host-side numpy + matplotlib; :class:`matplotlib.figure.Figure` directly,
no pyplot state, so nothing is left open).

Masked keys are drawn in light grey and excluded from every statistic ("valid keys"); the valid
keys are the model's (:class:`gaugeformer.stats.KeyPattern`), full causal by default."""

from __future__ import annotations

import math
import os
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
from matplotlib.ticker import MaxNLocator

from gaugeformer import stats as attn_stats


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


def as_attention(x: np.ndarray, name: str = "beta", *, lead: str = "L, B, H",
                 dtype=np.float64, finite: bool = True) -> np.ndarray:
    """``x`` as a 5-D ``(<lead>, N, N)`` array (a 4-D input gets a leading axis of 1).

    Args:
      x: attention-shaped values.
      name: for the error message.
      lead: the names of the three leading axes (``"L, B, H"``; ``"S, L, H"`` per sample).
      dtype: result dtype.
      finite: zero NaN and ±inf (what the figures draw).
    """
    a = np.asarray(x, dtype)
    if a.ndim == 4:
        a = a[None]
    if a.ndim != 5 or a.shape[-1] != a.shape[-2]:
        short = lead.split(", ", 1)[1]
        raise ValueError(f"{name} must be ({lead}, N, N) or ({short}, N, N); got {a.shape}")
    return np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0) if finite else a


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


def head_panels(axes: np.ndarray, h: int):
    """``(head, ax)`` for the first ``h`` panels of a grid (labelled ``head:<h>``); the other
    panels are hidden (labelled ``empty``)."""
    for idx, ax in enumerate(axes.flat):
        if idx >= h:
            ax.set_axis_off()
            ax.set_label("empty")
            continue
        ax.set_label(f"head:{idx}")
        yield idx, ax


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
