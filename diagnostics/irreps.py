"""Heads by irrep: labels from an irreps specification and seed 001's per-irrep row_std table."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from gaugeformer import stats
from gaugeformer.ops.so3 import parse_irreps

from diagnostics.schema import IrrepRow

_ELL = re.compile(r"^ℓ(\d+)")


def head_labels(
    irreps: str | Sequence[tuple[str, int, int]], embed_dim: int | None = None
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Per-head labels and dimensions, one head per irrep copy, padding heads last.

    Args:
        irreps: an e3nn-style string (``"5x0e+3x1e+1x2e"``) or the reference's
            ``[(label, multiplicity, dim), ...]``.
        embed_dim: K; if the irrep dims sum to less, the rest becomes ``ℓ0_pad`` scalar heads.

    Returns:
        ``(labels, dims)``; ``"5x0e+3x1e+1x2e"`` gives 9 heads labelled ℓ0 x5, ℓ1 x3, ℓ2 with
        dims 1 x5, 3 x3, 5.
    """
    labels: list[str] = []
    dims: list[int] = []
    for label, mult, dim in parse_irreps(irreps):  # the model's parser (e3nn strings, lists)
        labels += [str(label)] * int(mult)
        dims += [int(dim)] * int(mult)
    if embed_dim is not None:
        pad = embed_dim - sum(dims)
        if pad < 0:
            raise ValueError(f"irrep dims sum to {sum(dims)} > embed_dim {embed_dim}")
        labels += ["ℓ0_pad"] * pad
        dims += [1] * pad
    return tuple(labels), tuple(dims)


def _ell(label: str) -> int | None:
    match = _ELL.match(label)
    return int(match.group(1)) if match else None


def _kind(label: str) -> str:
    ell = _ell(label)
    if ell is None:
        return "head"
    names = {0: "scalar", 1: "vector", 2: "tensor"}
    kind = names.get(ell, f"rank-{ell} tensor")
    return kind + (", padding" if label.endswith("_pad") else "")


def _default_dim(label: str) -> int:
    ell = _ell(label)
    return 1 if ell is None or label.endswith("_pad") else 2 * ell + 1


def irrep_summary(
    row_std: Sequence[float], labels: Sequence[str], dims: Sequence[int] | None = None
) -> tuple[IrrepRow, ...]:
    """Group per-head row_std values by irrep label (first-appearance order).

    Args:
        row_std: one value per head ``[H]``.
        labels: head labels ``[H]`` (see :func:`head_labels`).
        dims: head dimensions; derived from ``ℓ`` (2ℓ+1) when omitted.
    """
    values = np.asarray(row_std, dtype=np.float64)
    if len(labels) != len(values):
        raise ValueError(f"{len(labels)} labels for {len(values)} heads")
    rows = []
    for label in dict.fromkeys(labels):
        idx = [h for h, lab in enumerate(labels) if lab == label]
        dim = int(dims[idx[0]]) if dims is not None else _default_dim(label)
        v = values[idx]
        rows.append(
            IrrepRow(label, _kind(label), dim, len(idx), float(v.min()), float(v.max()),
                     float(v.mean()))
        )
    return tuple(rows)


def render_irrep_table(rows: Sequence[IrrepRow], valid: Sequence[IrrepRow] | None = None) -> str:
    """Markdown table in seed 001's format (plus head counts and means); ``valid`` adds columns."""
    head = "| Head Type | Dimensionality | Heads | Typical row_std | Mean row_std | Status |"
    rule = "|-----------|----------------|-------|-----------------|--------------|--------|"
    if valid is not None:
        head += " Mean row_std (valid) | Status (valid) |"
        rule += "----------------------|----------------|"
    lines = [head, rule]
    for k, r in enumerate(rows):
        line = (
            f"| {r.label} ({r.kind}) | {r.dim} | {r.heads} | {r.row_std_min:.3f} - "
            f"{r.row_std_max:.3f} | {r.row_std_mean:.4f} | {stats.table_status(r.status)} |"
        )
        if valid is not None:
            v = valid[k]
            line += f" {v.row_std_mean:.4f} | {stats.table_status(v.status)} |"
        lines.append(line)
    return "\n".join(lines)
