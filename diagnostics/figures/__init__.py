"""Publication attention figures (host-side numpy + matplotlib, no model dependency), one module
per family: :mod:`~diagnostics.figures.context` (seed 002), :mod:`~diagnostics.figures.heads`
(seed 004), :mod:`~diagnostics.figures.recency` (seed 003), :mod:`~diagnostics.figures.sweeps`
(seed 001), :mod:`~diagnostics.figures.curves` (training); shared pieces in
:mod:`~diagnostics.figures.base`.

All inputs are numpy arrays captured from the model:

* ``beta`` and ``kl``: ``(L, B, H, N, N)`` = [layer, batch, head, query i, key j]. A 4-D
  ``(B, H, N, N)`` array is accepted as a single layer.
* ``tokens``: N already-decoded token strings (or raw ``bytes``); see :func:`format_token`.
* ``head_labels``: H labels such as ``"ℓ0"``, ``"ℓ1"``, ``"ℓ0_pad"``.
* ``caption``: ``{"source", "text_preview", "checkpoint", "self_attention_masked"}``.
* ``keys``: the model's :class:`gaugeformer.stats.KeyPattern` (``KeyPattern.of(cfg)``): keys
  outside it are drawn grey and excluded from every statistic.

Each figure is written as PNG and described by a :class:`FigureRecord` (the path plus a count of
panels by kind, taken from the drawn axes). ``row_std`` is the valid-keys variant
(:mod:`gaugeformer.stats`).
"""

from diagnostics.figures.base import FigureRecord, format_token, format_tokens, irrep_of
from diagnostics.figures.context import plot_attention_with_context
from diagnostics.figures.curves import plot_training_curves, training_series
from diagnostics.figures.heads import (
    attention_flow,
    plot_all_heads,
    plot_attention_flow,
    plot_head_heatmap,
    topk_report,
)
from diagnostics.figures.recency import (
    plot_recency_lines,
    plot_recency_summary,
    plot_sample_heatmaps,
)
from diagnostics.figures.sweeps import plot_irrep_summary, plot_kappa_sweep

__all__ = [
    "FigureRecord", "attention_flow", "format_token", "format_tokens", "irrep_of",
    "plot_all_heads", "plot_attention_flow", "plot_attention_with_context", "plot_head_heatmap",
    "plot_irrep_summary", "plot_kappa_sweep", "plot_recency_lines", "plot_recency_summary",
    "plot_sample_heatmaps", "plot_training_curves", "topk_report", "training_series",
]
