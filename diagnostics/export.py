"""Export attention to the formats of external viewers (bertviz, circuitsvis).

Nothing here imports those packages; the arrays are shaped for them:

* bertviz ``head_view(attention, tokens)`` wants one ``(batch, heads, N, N)`` array per layer
  (wrap each in ``torch.tensor`` on the viewing side);
* circuitsvis ``attention.attention_patterns(tokens, attention)`` wants ``(heads, dest, src)``,
  i.e. ``(H, query i, key j)``.

Inputs follow the rest of ``diagnostics``: β ``(L, B, H, N, N)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diagnostics.figures.base import as_attention

__all__ = [
    "load_bertviz",
    "save_bertviz",
    "save_circuitsvis",
    "to_bertviz",
    "to_circuitsvis",
    "token_strings",
]


def token_strings(tokens: Sequence[str | bytes]) -> list[str]:
    r"""Tokens as JSON-safe ``str`` (raw bytes decoded with ``\\xNN`` for invalid UTF-8).

    Args:
        tokens: decoded tokens or raw token bytes.

    Returns:
        A list of str, spaces and newlines preserved.
    """
    return [
        bytes(t).decode("utf-8", errors="backslashreplace")
        if isinstance(t, (bytes, bytearray)) else str(t)
        for t in tokens
    ]


def to_bertviz(beta: np.ndarray, *, batch: int = 0) -> list[np.ndarray]:
    """Per-layer attention for bertviz.

    Args:
        beta: ``(L, B, H, N, N)``.
        batch: batch element to export.

    Returns:
        A list of L float32 arrays of shape ``(1, H, N, N)``.
    """
    b = as_attention(beta, dtype=np.float32, finite=False)
    return [np.ascontiguousarray(b[li, batch][None]) for li in range(b.shape[0])]


def to_circuitsvis(
    beta: np.ndarray, layer: int, tokens: Sequence[str | bytes], *, batch: int = 0
) -> tuple[np.ndarray, list[str]]:
    """One layer's attention for circuitsvis ``attention_patterns``.

    Args:
        beta: ``(L, B, H, N, N)``.
        layer: layer index.
        tokens: N tokens.
        batch: batch element.

    Returns:
        ``(attention (H, N, N) float32, tokens as str)``.
    """
    b = as_attention(beta, dtype=np.float32, finite=False)
    if len(tokens) != b.shape[-1]:
        raise ValueError(f"got {len(tokens)} tokens for sequence length {b.shape[-1]}")
    return np.ascontiguousarray(b[layer, batch]), token_strings(tokens)


def _with_suffix(path: str | os.PathLike[str], suffix: str) -> Path:
    """Path with ``suffix`` (added if missing); parent directory created."""
    p = Path(path)
    if p.suffix != suffix:
        p = p.with_name(p.name + suffix)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def save_bertviz(
    beta: np.ndarray,
    tokens: Sequence[str | bytes],
    path: str | os.PathLike[str],
    *,
    batch: int = 0,
    head_labels: Sequence[str] | None = None,
) -> Path:
    """Writes ``.npz`` with ``layer_000 …`` ``(1, H, N, N)``, ``tokens`` and ``head_labels``.

    Args:
        beta: ``(L, B, H, N, N)``.
        tokens: N tokens.
        path: output path (``.npz`` is appended if missing).
        batch: batch element.
        head_labels: optional H labels.

    Returns:
        The written path.
    """
    layers = to_bertviz(beta, batch=batch)
    n = layers[0].shape[-1]
    if len(tokens) != n:
        raise ValueError(f"got {len(tokens)} tokens for sequence length {n}")
    arrays = {f"layer_{i:03d}": a for i, a in enumerate(layers)}
    arrays["tokens"] = np.array(token_strings(tokens), dtype=np.str_)
    if head_labels is not None:
        arrays["head_labels"] = np.array(list(head_labels), dtype=np.str_)
    p = _with_suffix(path, ".npz")
    np.savez_compressed(p, **arrays)
    return p


def load_bertviz(path: str | os.PathLike[str]) -> tuple[list[np.ndarray], list[str]]:
    """Reads a file written by :func:`save_bertviz`.

    Args:
        path: the ``.npz`` path.

    Returns:
        ``(list of (1, H, N, N) arrays, tokens)``.
    """
    with np.load(path, allow_pickle=False) as z:
        keys = sorted(k for k in z.files if k.startswith("layer_"))
        return [z[k] for k in keys], [str(t) for t in z["tokens"]]


def save_circuitsvis(
    beta: np.ndarray,
    layer: int,
    tokens: Sequence[str | bytes],
    path: str | os.PathLike[str],
    *,
    batch: int = 0,
    head_labels: Sequence[str] | None = None,
    decimals: int = 6,
) -> Path:
    """Writes ``{"tokens", "attention" (H×N×N nested lists), "head_labels", "layer"}`` JSON.

    Args:
        beta: ``(L, B, H, N, N)``.
        layer: layer index.
        tokens: N tokens.
        path: output path (``.json`` is appended if missing).
        batch: batch element.
        head_labels: optional H labels.
        decimals: rounding of the weights.

    Returns:
        The written path.
    """
    att, toks = to_circuitsvis(beta, layer, tokens, batch=batch)
    doc = {
        "layer": int(layer),
        "batch": int(batch),
        "tokens": toks,
        "head_labels": list(head_labels) if head_labels is not None else None,
        "attention": np.round(att.astype(np.float64), decimals).tolist(),
    }
    p = _with_suffix(path, ".json")
    p.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return p
