"""Recency / context-compression analysis of attention (seed 003), pure numpy.

Input is attention captured from several samples, ``beta`` of shape ``(S, L, H, N, N)``
[sample, layer, head, query i, key j]. For every query row we look at the weights the query puts
on its *context*: the keys it may attend to (``j <= i`` for a causal model; the query itself is
part of the context unless ``include_self=False``). Masked (future) keys never enter a statistic,
so the ≈1e-8 fill values of a clamped softmax cannot bias anything.

Per row statistics (all in :class:`RowStats`):

* ``mean``: mean raw weight over the context (``1/n`` for any row summing to 1 over ``n`` keys);
* ``std``: population std of the raw weights over the context (the seed's "concentration");
* ``entropy``: ``-sum p log p`` in nats, ``p`` = weights renormalised over the context (a row of
  uniform weights over ``n`` keys gives exactly ``ln n``); ``entropy_norm`` = entropy / ``ln n``;
* ``argmax``: absolute key position with the largest weight, ``argmax_dist`` = ``i - argmax``;
* ``recent_distant``: mean weight over the most recent ``recent_frac`` of the context divided by
  the mean weight over the earliest ``recent_frac`` (``q = max(1, floor(recent_frac * n))`` keys
  each). ``inf`` when the distant part carries no weight, NaN for rows shorter than
  ``min_context``.

The seed's analysis concerns the last query row (the "query token"); :func:`analyze_recency`
returns that row separately and the statistics of every row as a distribution.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gaugeformer.stats import KeyPattern

__all__ = [
    "RecencyAnalysis",
    "Recommendation",
    "RowStats",
    "Thresholds",
    "analyze_recency",
    "context_mask",
    "coverage_k",
    "format_report",
    "insights",
    "recommend_compression",
    "row_stats",
]


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds; every one is printed next to the value it is compared with.

    Attributes:
        recency_ratio: median recent/distant ratio above which a head is "recency biased"
            (seed 003: 2.0).
        entropy_nats: median last-row entropy (nats) above which attention may be "uniform"
            (seed 003: 2.0). Raw nats grow with context length (``ln n``), so a head is only
            called uniform if it also exceeds ``entropy_norm``.
        entropy_norm: median entropy / ln(n) above which a head is "uniform" (added here).
        sparse_frac: a head is "sparse" if its top-K positions hold ``coverage`` of the mass with
            ``K <= ceil(sparse_frac * n)``.
        coverage: attention-mass fraction a compressed context must keep (for every head).
        uniform_budget: fraction of the context kept by the uniform-sampling recommendation.
    """

    recency_ratio: float = 2.0
    entropy_nats: float = 2.0
    entropy_norm: float = 0.8
    sparse_frac: float = 0.1
    coverage: float = 0.9
    uniform_budget: float = 0.5


@dataclass(frozen=True)
class RowStats:
    """Statistics per query row; every array has the same leading shape."""

    mean: np.ndarray
    std: np.ndarray
    entropy: np.ndarray
    entropy_norm: np.ndarray
    argmax: np.ndarray
    argmax_dist: np.ndarray
    recent_distant: np.ndarray
    n_context: np.ndarray

    def index(self, key: object) -> RowStats:
        """Applies the same numpy index to every field.

        Args:
            key: any numpy index, e.g. ``(..., -1)`` for the last query row.

        Returns:
            A new :class:`RowStats`.
        """
        return RowStats(**{k: getattr(self, k)[key] for k in self.__dataclass_fields__})


@dataclass(frozen=True)
class RecencyAnalysis:
    """Result of :func:`analyze_recency`.

    Attributes:
        last: statistics of the last query row, arrays ``(S, L, H)``.
        rows: statistics of every query row, arrays ``(S, L, H, N)`` (NaN where undefined).
        profile: mean over samples of the last row's context weights, ``(L, H, N)``; zero at
            positions outside the context.
        n_context: context length of the last query row.
        keys: the model's key pattern the context was taken from.
        include_self: whether the query's own key belongs to its context.
        recent_frac: fraction of the context used for the recent/distant ratio.
        min_context: rows with fewer context keys have NaN ``recent_distant``.
    """

    last: RowStats
    rows: RowStats
    profile: np.ndarray
    n_context: int
    keys: KeyPattern
    include_self: bool
    recent_frac: float
    min_context: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(S, L, H)``."""
        return tuple(self.last.mean.shape)  # type: ignore[return-value]


@dataclass(frozen=True)
class Recommendation:
    """One compression recommendation.

    Attributes:
        strategy: ``"keep_last"``, ``"uniform_sampling"``, ``"top_k"`` or ``"none"``.
        k: number of context positions to keep (``None`` for ``"none"``).
        reason: the evidence with thresholds, one line.
        snippet: a one-line numpy snippet implementing the strategy.
        positions: the kept positions for ``"top_k"`` (absolute key indices).
        heads: ``(layer, head)`` pairs the recommendation is based on.
    """

    strategy: str
    k: int | None
    reason: str
    snippet: str = ""
    positions: tuple[int, ...] = ()
    heads: tuple[tuple[int, int], ...] = field(default_factory=tuple)


def context_mask(n: int, *, keys: KeyPattern | None = None, include_self: bool = True
                 ) -> np.ndarray:
    """Boolean ``(N, N)`` mask of the context keys of each query row.

    Args:
        n: sequence length N.
        keys: the model's key pattern (default full causal): keys it cannot attend are excluded.
        include_self: whether key ``i`` belongs to query ``i``'s context.

    Returns:
        ``mask[i, j]`` is True when key j is in query i's context.
    """
    mask = (keys or KeyPattern()).grid(n)
    if not include_self:
        mask &= ~np.eye(n, dtype=bool)
    return mask


def row_stats(
    beta: np.ndarray,
    *,
    keys: KeyPattern | None = None,
    include_self: bool = True,
    recent_frac: float = 0.25,
    min_context: int = 4,
) -> RowStats:
    """Computes per-row context statistics for attention ``(..., N, N)``.

    Args:
        beta: attention weights, last two axes (query i, key j).
        keys: the model's key pattern (default full causal).
        include_self: the query's own key is part of its context.
        recent_frac: fraction of the context in each of the recent / distant parts.
        min_context: rows with fewer context keys get NaN ``recent_distant``.

    Returns:
        :class:`RowStats` with arrays of shape ``beta.shape[:-1]``.
    """
    b = np.nan_to_num(np.asarray(beta, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    n = b.shape[-1]
    if b.ndim < 2 or b.shape[-2] != n:
        raise ValueError(f"expected (..., N, N) attention, got shape {b.shape}")
    mask = np.broadcast_to(context_mask(n, keys=keys, include_self=include_self), b.shape)
    count = mask.sum(-1)
    safe = np.maximum(count, 1)
    w = np.where(mask, b, 0.0)
    mean = w.sum(-1) / safe
    std = np.sqrt(np.where(mask, (b - mean[..., None]) ** 2, 0.0).sum(-1) / safe)
    entropy, entropy_norm = _entropy(w, count)
    argmax = np.argmax(np.where(mask, b, -np.inf), axis=-1)
    rows = np.arange(n)
    ratio = _recent_distant(b, mask, count, recent_frac)
    ratio = np.where(count >= max(min_context, 2), ratio, np.nan)
    empty = count == 0
    return RowStats(
        mean=np.where(empty, np.nan, mean),
        std=np.where(empty, np.nan, std),
        entropy=entropy,
        entropy_norm=entropy_norm,
        argmax=np.where(empty, -1, argmax),
        argmax_dist=np.where(empty, -1, rows - argmax),
        recent_distant=ratio,
        n_context=count,
    )


def _entropy(w: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entropy (nats) of context weights renormalised per row, and entropy / ln(n)."""
    total = w.sum(-1, keepdims=True)
    p = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    ent = -plogp.sum(-1)
    ent = np.where((count > 0) & (total[..., 0] > 0), ent, np.nan)
    log_n = np.log(np.maximum(count, 1).astype(np.float64))
    norm = np.divide(ent, log_n, out=np.full_like(ent, np.nan), where=count >= 2)
    return ent, norm


def _recent_distant(
    b: np.ndarray, mask: np.ndarray, count: np.ndarray, frac: float
) -> np.ndarray:
    """Mean weight over the most recent vs the earliest ``frac`` of each row's context."""
    rank = np.cumsum(mask, axis=-1) - 1  # order of each context key among the context keys
    q = np.maximum(1, np.floor(frac * count).astype(np.int64))[..., None]
    recent = mask & (rank >= count[..., None] - q)
    distant = mask & (rank < q)
    r = np.where(recent, b, 0.0).sum(-1)
    d = np.where(distant, b, 0.0).sum(-1)  # both parts have q keys, so sums compare as means
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(d > 0, r / np.where(d > 0, d, 1.0), np.where(r > 0, np.inf, np.nan))
    return ratio


def analyze_recency(
    beta: np.ndarray,
    *,
    keys: KeyPattern | None = None,
    include_self: bool = True,
    recent_frac: float = 0.25,
    min_context: int = 4,
) -> RecencyAnalysis:
    """Analyses attention of several samples, ``(S, L, H, N, N)``.

    Args:
        beta: attention per sample, layer, head. A 4-D ``(L, H, N, N)`` array is one sample.
        keys: the model's key pattern (default full causal).
        include_self: the query's own key is part of its context.
        recent_frac: fraction of the context in each of the recent / distant parts.
        min_context: rows with fewer context keys get NaN ``recent_distant``.

    Returns:
        :class:`RecencyAnalysis`.
    """
    b = np.asarray(beta, np.float64)
    if b.ndim == 4:
        b = b[None]
    if b.ndim != 5:
        raise ValueError(f"expected (S, L, H, N, N) attention, got shape {b.shape}")
    rows = row_stats(
        b, keys=keys, include_self=include_self, recent_frac=recent_frac,
        min_context=min_context,
    )
    n = b.shape[-1]
    mask = context_mask(n, keys=keys, include_self=include_self)[-1]
    profile = np.where(mask, np.nan_to_num(b[..., -1, :]), 0.0).mean(0)
    return RecencyAnalysis(
        last=rows.index((..., -1)),
        rows=rows,
        profile=profile,
        n_context=int(mask.sum()),
        keys=keys or KeyPattern(),
        include_self=include_self,
        recent_frac=recent_frac,
        min_context=min_context,
    )


def coverage_k(weights: np.ndarray, coverage: float, *, order: str) -> int:
    """Smallest K whose kept positions hold ``coverage`` of the total weight.

    Args:
        weights: non-negative context weights of one row (context positions only, in order).
        coverage: required fraction of the total, in (0, 1].
        order: ``"last"`` keeps the most recent K positions; ``"top"`` the K largest.

    Returns:
        K in ``[1, len(weights)]`` (0 for an empty or all-zero row).
    """
    if order not in ("last", "top"):
        raise ValueError(f"order must be 'last' or 'top', got {order!r}")
    w = np.clip(np.asarray(weights, np.float64), 0.0, None)
    total = w.sum()
    if w.size == 0 or total <= 0:
        return 0
    seq = w[::-1] if order == "last" else np.sort(w)[::-1]
    cum = np.cumsum(seq) / total
    return int(min(np.searchsorted(cum, coverage - 1e-12) + 1, w.size))


def _context_profile(a: RecencyAnalysis, layer: int, head: int) -> np.ndarray:
    """Mean last-row weights over the context positions only, in order."""
    mask = context_mask(a.profile.shape[-1], keys=a.keys, include_self=a.include_self)[-1]
    return a.profile[layer, head][mask]


def _head_table(a: RecencyAnalysis, t: Thresholds) -> dict[str, np.ndarray]:
    """Per (layer, head) medians, K values and pattern flags."""
    _, layers, heads = a.shape
    n = a.n_context
    k_last = np.zeros((layers, heads), int)
    k_top = np.zeros((layers, heads), int)
    for li in range(layers):
        for hi in range(heads):
            prof = _context_profile(a, li, hi)
            k_last[li, hi] = coverage_k(prof, t.coverage, order="last")
            k_top[li, hi] = coverage_k(prof, t.coverage, order="top")
    ratio = _nanmedian(a.last.recent_distant, axis=0)
    ent = _nanmedian(a.last.entropy, axis=0)
    ent_n = _nanmedian(a.last.entropy_norm, axis=0)
    sparse_k = max(1, math.ceil(t.sparse_frac * n))
    return {
        "ratio": ratio, "entropy": ent, "entropy_norm": ent_n, "k_last": k_last, "k_top": k_top,
        "recency": ratio > t.recency_ratio,
        "uniform": (ent > t.entropy_nats) & (ent_n > t.entropy_norm),
        "sparse": k_top <= sparse_k,
        "sparse_k": np.full((layers, heads), sparse_k),
    }


def _nanmedian(x: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmedian`` without the all-NaN-slice warning (such slices give NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(np.nanmedian(np.asarray(x, np.float64), axis=axis))


def _fmt(x: float) -> str:
    """Formats a statistic, including inf / NaN."""
    if np.isnan(x):
        return "n/a"
    return "inf" if np.isinf(x) else f"{x:.2f}"


def _heads_str(pairs: Sequence[tuple[int, int]], labels: Sequence[str] | None) -> str:
    """``L0/h2(ℓ1)`` style list, truncated."""
    items = [f"L{li}/h{hi}" + (f"({labels[hi]})" if labels else "") for li, hi in pairs]
    return ", ".join(items[:8]) + (f", … (+{len(items) - 8})" if len(items) > 8 else "")


def insights(
    a: RecencyAnalysis,
    thresholds: Thresholds = Thresholds(),
    head_labels: Sequence[str] | None = None,
) -> list[str]:
    """Human-readable findings, each with the value and the threshold it was compared with.

    Args:
        a: analysis from :func:`analyze_recency`.
        thresholds: decision thresholds.
        head_labels: optional per-head labels (e.g. irrep names).

    Returns:
        Lines of text (one finding per line).
    """
    t = thresholds
    tab = _head_table(a, t)
    layers, heads = tab["ratio"].shape
    total = layers * heads
    out: list[str] = []
    for key, name, rule in (
        ("recency", "Strong recency bias",
         f"median recent/distant ratio > {t.recency_ratio:.2f}"),
        ("uniform", "Broad / near-uniform attention",
         f"median entropy > {t.entropy_nats:.2f} nats and entropy/ln(n) > {t.entropy_norm:.2f}"),
        ("sparse", "Sparse attention",
         (f"top-K positions hold {t.coverage:.0%} of the mass with "
          f"K <= {int(tab['sparse_k'][0, 0])} (= ceil({t.sparse_frac:g}·n))")),
    ):
        pairs = list(zip(*np.nonzero(tab[key]), strict=True))
        if pairs:
            out.append(
                f"INSIGHT: {name} in {len(pairs)}/{total} heads [{rule}]: "
                f"{_heads_str(pairs, head_labels)}"
            )
    if not out:
        out.append(
            "INSIGHT: no head passes the recency, uniform or sparse rule "
            f"(ratio > {t.recency_ratio:.2f}; entropy > {t.entropy_nats:.2f} nats and "
            f"> {t.entropy_norm:.2f}·ln n; top-K ≤ {int(tab['sparse_k'][0, 0])})."
        )
    out.append(
        "NOTE: clustered-context grouping (seed 003) needs hidden states and is not assessed here."
    )
    return out


def recommend_compression(
    a: RecencyAnalysis, thresholds: Thresholds = Thresholds()
) -> list[Recommendation]:
    """Compression recommendations for the query's context (seed 003 rules).

    The K values are chosen so that *every* head of *every* layer keeps at least
    ``thresholds.coverage`` of its mean last-query attention mass.

    Args:
        a: analysis from :func:`analyze_recency`.
        thresholds: decision thresholds.

    Returns:
        Recommendations, most specific first; a single ``"none"`` entry when no rule applies.
    """
    t = thresholds
    tab = _head_table(a, t)
    n = a.n_context
    all_pairs = tuple(zip(*np.nonzero(np.ones_like(tab["recency"])), strict=True))
    recs: list[Recommendation] = []
    cov = f"keeps >= {t.coverage:.0%} of every head's mean last-query attention"
    if tab["recency"].all():
        k = int(tab["k_last"].max())
        recs.append(Recommendation(
            "keep_last", k,
            f"all heads have median recent/distant ratio > {t.recency_ratio:.2f} "
            f"(min {_fmt(float(np.nanmin(tab['ratio'])))}); K={k} of n={n} {cov}",
            f"history = history[-{k}:]", heads=all_pairs,
        ))
    if tab["sparse"].all() and not tab["recency"].all():
        k, pos = _top_positions(a, t)
        recs.append(Recommendation(
            "top_k", k,
            f"all heads are sparse (top-K ≤ {int(tab['sparse_k'][0, 0])}); the union of each "
            f"head's top positions has K={k} of n={n} and {cov}",
            f"history = history[np.array({list(pos)})]", positions=pos, heads=all_pairs,
        ))
    uni = tab["uniform"]
    if uni.any():
        k = max(1, math.ceil(t.uniform_budget * n))
        recs.append(Recommendation(
            "uniform_sampling", k,
            f"{int(uni.sum())}/{uni.size} heads are broad (entropy > {t.entropy_nats:.2f} nats "
            f"and > {t.entropy_norm:.2f}·ln n): compress with care; with budget "
            f"{t.uniform_budget:.0%} (K={k} of n={n}) near-uniform heads keep ≈{k / n:.0%}",
            f"history = history[np.linspace(0, len(history) - 1, {k}).astype(int)]",
            heads=tuple(zip(*np.nonzero(uni), strict=True)),
        ))
    if not recs:
        recs.append(Recommendation(
            "none", None,
            "no rule holds for all heads (mixed patterns); keep the full context or decide per "
            f"layer (keep-last K needed per layer: {tab['k_last'].max(1).tolist()}, n={n})",
        ))
    return recs


def _top_positions(a: RecencyAnalysis, t: Thresholds) -> tuple[int, tuple[int, ...]]:
    """Union over heads of the top positions that reach the coverage target."""
    layers, heads = a.profile.shape[:2]
    mask = context_mask(a.profile.shape[-1], keys=a.keys, include_self=a.include_self)[-1]
    idx = np.nonzero(mask)[0]
    keep: set[int] = set()
    for li in range(layers):
        for hi in range(heads):
            prof = a.profile[li, hi][mask]
            k = coverage_k(prof, t.coverage, order="top")
            keep.update(int(idx[j]) for j in np.argsort(-prof, kind="stable")[:k])
    pos = tuple(sorted(keep))
    return len(pos), pos


def format_report(
    a: RecencyAnalysis,
    head_labels: Sequence[str] | None = None,
    thresholds: Thresholds = Thresholds(),
) -> str:
    """Console report: per layer/head statistics, insights and recommendations.

    Args:
        a: analysis from :func:`analyze_recency`.
        head_labels: optional per-head labels.
        thresholds: decision thresholds (printed).

    Returns:
        The report text.
    """
    t = thresholds
    s, layers, heads = a.shape
    tab = _head_table(a, t)
    ctx = "j ≤ i" if a.keys == KeyPattern() else a.keys.describe()
    ctx += "" if a.include_self else ", j ≠ i"
    lines = [
        "=" * 96,
        (f"RECENCY ANALYSIS: last query row, {s} samples, {layers} layers × {heads} heads, "
         f"context n={a.n_context} ({ctx})"),
        (f"thresholds: recency ratio > {t.recency_ratio}, entropy > {t.entropy_nats} nats and "
         f"> {t.entropy_norm}·ln n, sparse top-K ≤ ceil({t.sparse_frac}·n), "
         f"coverage {t.coverage:.0%}, recent/distant = {a.recent_frac:.0%} vs "
         f"{a.recent_frac:.0%}"),
        "=" * 96,
        (f"{'layer':>5} {'head':>10} {'mean':>7} {'std':>7} {'H(nats)':>8} {'H/lnN':>6} "
         f"{'argmax':>7} {'dist':>5} {'ratio':>7} {'K_last':>6} {'K_top':>6}  pattern"),
    ]
    for li in range(layers):
        for hi in range(heads):
            lines.append(_report_row(a, tab, li, hi, head_labels))
    lines.append("-" * 96)
    lines.extend(insights(a, t, head_labels))
    for r in recommend_compression(a, t):
        k = "" if r.k is None else f" K={r.k}"
        lines.append(f"RECOMMENDATION [{r.strategy}{k}]: {r.reason}")
        if r.snippet:
            lines.append(f"    {r.snippet}")
    return "\n".join(lines)


def _report_row(
    a: RecencyAnalysis, tab: dict[str, np.ndarray], li: int, hi: int,
    labels: Sequence[str] | None,
) -> str:
    """One table row (medians over samples)."""
    last = a.last
    med = {k: float(_nanmedian(getattr(last, k)[:, li, hi], 0))
           for k in ("mean", "std", "argmax", "argmax_dist")}
    pattern = [p for p in ("recency", "uniform", "sparse") if tab[p][li, hi]]
    name = f"h{hi}" + (f" {labels[hi]}" if labels else "")
    return (
        f"{li:>5} {name[:10]:>10} {med['mean']:>7.4f} {med['std']:>7.4f} "
        f"{tab['entropy'][li, hi]:>8.3f} {tab['entropy_norm'][li, hi]:>6.3f} "
        f"{med['argmax']:>7.0f} {med['argmax_dist']:>5.0f} {_fmt(tab['ratio'][li, hi]):>7} "
        f"{tab['k_last'][li, hi]:>6d} {tab['k_top'][li, hi]:>6d}  {','.join(pattern) or '-'}"
    )
