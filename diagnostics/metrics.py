"""Pure, jittable attention metrics over stacked per-layer attention tensors.

Axis vocabulary (shared with the rest of gaugeformer): ``L`` layers, ``B`` batch, ``H`` heads,
``N`` queries (index ``i``), ``M`` keys (index ``j``; ``M == N`` for self-attention), ``K`` belief
dimension. Attention ``beta`` and divergences ``kl`` are ``[L, B, H, N, M]``; ``mask`` is the
``[N, M]`` boolean key-validity mask (``True`` = the key may be attended; lower-triangular for
causal attention, diagonal cleared except row 0 for ``mask_self_attention``).

Every metric is a small kernel on one ``[N, M]`` matrix (a head, or the head mean of one
(layer, batch) element), lifted over the leading axes with :func:`jax.vmap` (the public
single-metric functions, any number of leading axes) or with ``lax.map`` over vmapped chunks of
heads (:func:`all_metrics`, which keeps XLA's temporaries cache-sized). Nothing here touches the
host, imports flax, or keeps state; every public function is jitted at module level (compiles
are cached per shape and static arguments).

Two families of numbers are produced (see ref-diagnostics §2-§3):

* ``legacy``: bug-compatible with the PyTorch reference. Statistics run over *all* keys,
  causally masked ones (≈1e-8) included, with the reference's baselines (``1/N``, ``ln N``).
* ``valid``: only causally valid keys. Row ``i`` has ``n_i`` valid keys (``i + 1`` for a causal
  mask); baselines become ``1/n_i`` and ``ln n_i``. Rows with fewer than two valid keys carry no
  information about sharpness and are left out of row means in this mode. A uniform causal row
  scores exactly "uniform" (row_std 0, deviation 0, normalised entropy 1, positional ratio 1).
  Per family: row_std, deviation and entropy run over the valid keys of each row; positional
  and token statistics weight ``beta_ij`` by ``n_i`` (its ratio to the uniform weight ``1/n_i``)
  over valid pairs only, which removes the "late rows have small weights" confound; query
  variation compares the residual rows ``beta_i - u_i`` (``u_i`` uniform over valid keys);
  normalisation sums the valid keys; KL spread uses valid off-diagonal pairs.

Outputs never contain NaN (so ``jax_debug_nans`` stays usable): quantities undefined for a
static shape are left out of the result (e.g. the positional ratio when N < 11), and empty
selections give 0 next to a count that says so.

:func:`all_metrics` computes everything the validation report needs in one compiled call and
returns a flat ``dict[str, Array]``; :data:`METRIC_KEYS` documents each key and its shape.
"""

import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Mode = Literal["legacy", "valid"]

LOG_EPS = 1e-10  # additive epsilon inside log(beta + eps) (ref §3.6)
RATIO_EPS = 1e-10  # denominator epsilon of the reference's ratios
N_QUERY_SUB = 20  # query-variation sub-analysis looks at the first 20 queries (ref §3.8)
DISTANT_LAG = 10  # ... and compares rows 10 apart
POS_BUCKETS = 5  # positional bias: distances 1..5 vs the last 5 distances (ref §3.4)
KL_SAMPLE = 5  # top-left KL block printed by the diversity tracker (ref §6.3)

# Keys of the all_metrics() result: name -> (shape, meaning). Shapes use the axis letters above;
# D = N distances (index 0 = the diagonal), Bq = min(query_var_batches, B), S = min(5, N).
METRIC_KEYS: dict[str, tuple[str, str]] = {
    # row_std (§2.1) per head and for the head-mean attention
    "row_std_legacy": ("L B H", "mean over all rows of the std over the N-1 off-diagonal keys"),
    "row_std_valid": ("L B H", "mean over rows (>=2 valid keys) of the std over valid keys"),
    "row_std_avg_legacy": ("L B", "legacy row_std of the head-mean attention"),
    "row_std_avg_valid": ("L B", "valid row_std of the head-mean attention"),
    # normalisation and causality (§3.3)
    "rowsum_maxerr_all": ("L B H", "max_i |sum_j beta_ij - 1| over all keys"),
    "rowsum_maxerr_valid": ("L B H", "max_i |sum_{valid j} beta_ij - 1|"),
    "future_max": ("L B H", "max beta_ij over the strict upper triangle (j > i)"),
    "future_mass_max": ("L B H", "max over rows of sum_{j>i} beta_ij"),
    "future_mass_mean": ("L B H", "mean over rows of sum_{j>i} beta_ij"),
    # positional bias (§3.4), pooled over heads
    "pos_profile_legacy": ("L B D", "mean beta_{i,i-d} over heads and rows i >= d"),
    "pos_profile_valid": ("L B D", "mean n_i*beta_{i,i-d} over heads and valid pairs (0: none)"),
    "pos_count_valid": ("D", "number of valid pairs (i, i-d) per distance"),
    "pos_near_legacy": ("L B", "mean of the pooled legacy profile over d = 1..5"),
    "pos_far_legacy": ("L B", "mean of the pooled legacy profile over d = N-5..N-1"),
    "pos_ratio_legacy": ("L B", "near / (far + 1e-10); absent if N - 1 < 10"),
    "pos_all_legacy": ("L B", "mean of the pooled legacy profile over d = 1..N-1"),
    "pos_near_valid": ("L B", "as pos_near_legacy on the mask-corrected profile"),
    "pos_far_valid": ("L B", "as pos_far_legacy on the mask-corrected profile"),
    "pos_ratio_valid": ("L B", "near / (far + 1e-10) on the corrected profile; absent if N < 11"),
    "pos_all_valid": ("L B", "mean of the pooled corrected profile over d >= 1"),
    # statistical tests (§3.6)
    "uniform_dev_mean_legacy": ("L B H", "mean over rows of RMS_j(beta_ij - 1/M), all keys"),
    "uniform_dev_max_legacy": ("L B H", "max over rows of the same"),
    "uniform_dev_mean_valid": ("L B H", "mean over rows of RMS_{valid j}(beta_ij - 1/n_i)"),
    "uniform_dev_max_valid": ("L B H", "max over rows of the same"),
    "entropy_norm_legacy": ("L B H", "mean over rows of H_i / ln M, H_i over all keys"),
    "entropy_norm_valid": ("L B H", "mean over rows of H_i / ln n_i, H_i over valid keys"),
    "entropy_nats": ("L B", "mean over rows of -sum p log p of the head-mean beta (nats, §6.2)"),
    "concentration": ("L B", "mean over rows of max_j of the head-mean beta (§6.2)"),
    # query-side variation (§3.8)
    "query_var_legacy": ("L Bq H", "mean over pairs i < i' of ||beta_i - beta_i'||_2"),
    "query_var_valid": ("L Bq H", "same on residuals beta_i - u_i, u_i uniform over valid keys"),
    "query_adjacent_legacy": ("L B H", "mean ||row_i - row_{i-1}|| over i = 1..min(N,20)-1"),
    "query_distant_legacy": ("L B H", "mean ||row_i - row_{i-10}||, i = 10..min(N,20)-1 (N>10)"),
    "query_adjacent_valid": ("L B H", "adjacent sub-analysis on residual rows"),
    "query_distant_valid": ("L B H", "distant sub-analysis on residual rows"),
    # row-uniformity bars (§2.4), on the head-mean attention
    "row_uniformity_std": ("L B N", "std over keys j <= i (diag incl.) of the head-mean beta"),
    "row_uniformity_cv": ("L B N", "the same std divided by the row's mean over those keys"),
    # token patterns (§3.5) -- present only when tokens are given
    "rep_same_legacy": ("L B", "mean head-mean beta over pairs j < i with equal token ids"),
    "rep_diff_legacy": ("L B", "same over pairs with different ids"),
    "rep_same_valid": ("L B", "mean n_i * head-mean beta over valid pairs j < i, equal ids"),
    "rep_diff_valid": ("L B", "same over valid pairs with different ids"),
    "rep_pairs": ("L B", "number of pairs j < i with equal token ids"),
    "special_mean_legacy": ("L B", "mean over special columns of all-rows column means (0: none)"),
    "regular_mean_legacy": ("L B", "mean over regular columns of the all-rows column mean"),
    "special_mean_valid": ("L B", "as above with n_i-weighted column means over valid rows"),
    "regular_mean_valid": ("L B", "as above for regular columns"),
    "special_count": ("L B", "number of positions holding a special id"),
    # KL properties (§3.3) and KL spread (§6.3) -- present only when kl is given
    "kl_min": ("L B H", "min over all entries"),
    "kl_neg_frac": ("L B H", "fraction of entries < 0"),
    "kl_diag_max": ("L B H", "max of KL_ii"),
    "kl_diag_mean": ("L B H", "mean of KL_ii"),
    "kl_asym": ("L Bq H", "mean over i != j of |KL_ij - KL_ji|"),
    "kl_asym_rel": ("L Bq H", "kl_asym / mean over i != j of |KL_ij|"),
    "kl_offdiag_mean": ("L B", "head-mean KL, i != j (future pairs incl.): mean"),
    "kl_offdiag_std": ("L B", "... unbiased std"),
    "kl_offdiag_min": ("L B", "... min"),
    "kl_offdiag_max": ("L B", "... max"),
    "kl_valid_mean": ("L B", "head-mean KL over valid pairs i != j: mean"),
    "kl_valid_std": ("L B", "... unbiased std"),
    "kl_valid_min": ("L B", "... min"),
    "kl_valid_max": ("L B", "... max"),
    "kl_sample": ("L B S S", "top-left block of the head-mean KL, diagonal kept"),
    # belief diversity (§3.9, §6.3) -- present only when the respective input is given
    "mu_div": ("L B", "mean of all N^2 pairwise distances ||mu_i - mu_j|| (diag incl.)"),
    "mu_dist_mean": ("L B", "mean of the N(N-1) off-diagonal pairwise distances"),
    "mu_dist_std": ("L B", "unbiased std of the off-diagonal pairwise distances"),
    "phi_std": ("L B", "mean over the 3 components of the unbiased std over positions"),
    "sigma_mean": ("L B", "mean of the N*K covariance diagonal entries"),
    "sigma_std": ("L B", "unbiased std of the same"),
    "sigma_min": ("L B", "min of the same"),
    "sigma_max": ("L B", "max of the same"),
}


# ------------------------------------------------------------------------------------------------
# Small helpers (trace-time geometry, lifting)
# ------------------------------------------------------------------------------------------------

MAP_CHUNK = 8  # heads per lax.map step in all_metrics: keeps every temporary cache-sized


def causal_mask(n: int, m: int | None = None) -> Array:
    """Lower-triangular key-validity mask.

    Args:
        n: number of queries N.
        m: number of keys M (defaults to N).

    Returns:
        ``[N, M]`` bool, ``True`` where ``j <= i``.
    """
    m = n if m is None else m
    return jnp.asarray(np.tri(n, m, dtype=bool))


def _lift(fn, n_lead: int):
    """vmap ``fn`` over ``n_lead`` leading axes of every argument."""
    for _ in range(n_lead):
        fn = jax.vmap(fn)
    return fn


def _map_lead(fn, args: tuple, n_lead: int, chunk: int = MAP_CHUNK):
    """Apply a per-item kernel over ``n_lead`` leading axes with ``lax.map`` in vmapped chunks.

    Equivalent to ``_lift(fn, n_lead)(*args)`` but the loop keeps XLA's temporaries at
    ``chunk`` items instead of materialising full ``[L, B, H, N, M]`` intermediates.
    """
    lead = args[0].shape[:n_lead]
    size = math.prod(lead)
    flat = tuple(a.reshape((size,) + a.shape[n_lead:]) for a in args)
    out = jax.lax.map(lambda xs: fn(*xs), flat, batch_size=min(chunk, size))
    return jax.tree.map(lambda o: o.reshape(lead + o.shape[1:]), out)


def _resolve_mask(mask: Array | None, n: int, m: int) -> Array:
    if mask is None:
        return causal_mask(n, m)
    return jnp.asarray(mask, dtype=bool)


def _default_include_diag(mode: str, include_diag: bool | None) -> bool:
    if mode not in ("legacy", "valid"):
        raise ValueError(f"mode must be 'legacy' or 'valid', got {mode!r}")
    if include_diag is None:
        return mode == "valid"
    return include_diag


def _row_selection(mask: Array, mode: str, include_diag: bool) -> Array:
    """Keys entering a row statistic: ``[N, M]`` bool."""
    n, m = mask.shape
    eye = np.eye(n, m, dtype=bool)
    if mode == "legacy":
        return jnp.asarray(np.ones((n, m), bool) if include_diag else ~eye)
    return mask if include_diag else mask & ~eye


def _safe_div(num: Array, den: Array) -> Array:
    return num / jnp.maximum(den, 1.0)


def _diag_sums(x: Array) -> Array:
    """Sums along sub-diagonals: ``out[..., d] = sum_i x[..., i, i-d]``, d = 0..N-1.

    ``x [..., N, N]`` must be zero above the diagonal. Uses a reshape "skew" (flat index
    ``i(N+1) - d`` lands in column ``N+1-d`` of an ``[N, N+1]`` view) instead of a gather.
    """
    n = x.shape[-1]
    lead = x.shape[:-2]
    flat = jnp.concatenate([x.reshape(lead + (n * n,)), jnp.zeros(lead + (n,), x.dtype)], -1)
    y = flat.reshape(lead + (n, n + 1)).sum(-2)
    return jnp.concatenate([y[..., :1], y[..., :0:-1][..., : n - 1]], -1)


# ------------------------------------------------------------------------------------------------
# Kernels: one [N, M] matrix in, scalars / rows out.
#
# Row statistics go through ONE variadic lax.reduce over the key axis (XLA CPU emits a single
# vectorised loop for it; separate reductions sharing a producer get materialised instead).
# Masks are float 0/1 multipliers. Standard deviations use sums shifted by each row's expected
# mean (see _std_terms), so one pass is as accurate as two.
# ------------------------------------------------------------------------------------------------

_REDUCERS = {"sum": (jnp.add, 0.0), "max": (jnp.maximum, -jnp.inf), "min": (jnp.minimum, jnp.inf)}


def _row_reduce(terms: dict[str, tuple[Array, str]]) -> dict[str, Array]:
    """Reduce several same-shape ``[..., M]`` arrays over the last axis in one pass.

    Args:
        terms: name -> (array, "sum" | "max" | "min").

    Returns:
        name -> ``[...]`` reduced array.
    """
    names = tuple(terms)
    xs = tuple(terms[k][0] for k in names)
    ops = tuple(_REDUCERS[terms[k][1]] for k in names)
    inits = tuple(jnp.asarray(init, x.dtype) for x, (_, init) in zip(xs, ops))

    def combine(a, b):
        return tuple(op(x, y) for (op, _), x, y in zip(ops, a, b))

    out = jax.lax.reduce(xs, inits, combine, (xs[0].ndim - 1,))
    # Keep later reductions of these rows out of this loop: XLA CPU would otherwise merge them
    # into one multi-axis variadic reduce, which it does not vectorise (≈10x slower).
    return dict(zip(names, jax.lax.optimization_barrier(out)))


class _Sel:
    """A float 0/1 key selection ``[N, M]`` with its per-row key counts and diagonal flags."""

    def __init__(self, sel: Array):
        n, m = sel.shape
        self.sel = sel
        self.cnt = sel.sum(-1)  # [N]
        self.diag = jnp.zeros((n,), sel.dtype).at[: min(n, m)].set(jnp.diagonal(sel))


def _diagonal(b: Array) -> Array:
    """``b[i, i]`` for every row ``i`` of ``b [N, M]`` (0 where the row has no diagonal)."""
    n, m = b.shape
    return jnp.zeros((n,), b.dtype).at[: min(n, m)].set(jnp.diagonal(b))


def _std_terms(b: Array, s: _Sel, tag: str) -> dict[str, tuple[Array, str]]:
    """Row-reduce terms for the population std of ``b [N, M]`` over the keys selected by ``s``.

    The sums are shifted by each row's expected mean for an attention row of unit mass,
    ``(1 - beta_ii [ii not selected]) / n_keys`` (clipped to [0, 1]): close to the true mean
    for any attention pattern, which keeps the one-pass variance accurate (a fixed shift such
    as 1/M loses ~1e-6 to cancellation on rows whose mass sits on an excluded diagonal).
    """
    shift = (1.0 - _diagonal(b) * (1.0 - s.diag)) / jnp.maximum(s.cnt, 1.0)
    x = (b - jnp.clip(shift, 0.0, 1.0)[:, None]) * s.sel
    return {f"{tag}_s1": (x, "sum"), f"{tag}_s2": (x * x, "sum")}


def _std_from(r: dict[str, Array], tag: str, cnt: Array) -> Array:
    """Per-row std from shifted sums over ``cnt`` keys; 0 where ``cnt < 2``."""
    c = jnp.maximum(cnt, 1.0)
    mean = r[f"{tag}_s1"] / c
    var = jnp.maximum(r[f"{tag}_s2"] / c - mean * mean, 0.0)
    return jnp.where(cnt >= 2, jnp.sqrt(var), 0.0)


def _head_level(rows: Array, cnt: Array, mode: str) -> Array:
    """Row statistic -> head scalar: all rows (legacy) or rows with >= 2 keys (valid)."""
    if mode == "legacy":
        return rows.mean(-1)
    keep = (cnt >= 2).astype(rows.dtype)
    return _safe_div((rows * keep).sum(-1), keep.sum())


class _Geom:
    """Float masks and per-row constants derived once from ``mask`` (traced values)."""

    def __init__(self, mask: Array, include_diag: bool, dtype=jnp.float32):
        n, m = mask.shape
        self.n, self.m = n, m

        def f(x):
            return jnp.asarray(x, dtype)

        eye = np.eye(n, m, dtype=bool)
        self.mask = f(mask)  # valid keys
        self.off = f(~eye)  # every key but the diagonal (legacy row_std keys)
        self.future = f(np.triu(np.ones((n, m), bool), k=1))  # j > i
        self.lower = f(np.tri(n, m, dtype=bool))  # j <= i
        self.n_valid = self.mask.sum(-1)  # [N]
        self.inv_n = (1.0 / jnp.maximum(self.n_valid, 1.0))[:, None]  # [N, 1]
        self.has2 = f(self.n_valid >= 2)
        self.u = self.mask * self.inv_n  # uniform over valid keys
        self.past = f(np.tri(n, m, k=-1, dtype=bool))  # j < i
        self.past_valid = self.past * self.mask
        self.w_col = self.mask * self.n_valid[:, None]  # n_i on valid pairs
        # key selections of the three row_std flavours
        self.s_legacy = _Sel(self.off)
        self.s_valid = _Sel(f(_row_selection(mask, "valid", include_diag)))
        self.s_bars = _Sel(jnp.maximum(self.mask, f(eye)))  # §2.4: valid keys plus the diagonal
        if n == m:  # positional tables: weight n_i on valid past pairs, pair counts per distance
            self.w_pos = self.mask * self.lower * self.n_valid[:, None]
            self.cnt_legacy = f(n - np.arange(n))
            self.cnt_valid = _diag_sums(self.mask * self.lower)


def _k_head_rows(b: Array, k: Array | None, g: _Geom) -> dict[str, Array]:
    """Per-row accumulators ``[N]`` of one head ``b [N, M]`` (and its KL) in one pass."""
    m = b.shape[1]
    plogp = b * jnp.log(b + LOG_EPS)
    fut = b * g.future
    terms = {
        "s1": (b, "sum"),
        "s1v": (b * g.mask, "sum"),
        "a2": ((b - 1.0 / m) ** 2, "sum"),
        "v2": (((b - g.u) ** 2) * g.mask, "sum"),
        "h": (plogp, "sum"),
        "hv": (plogp * g.mask, "sum"),
        "f": (fut, "sum"),
        "fmax": (fut, "max"),
        **_std_terms(b, g.s_legacy, "rl"),
        **_std_terms(b, g.s_valid, "rv"),
    }
    if k is not None:
        terms.update(kmin=(k, "min"), kneg=((k < 0).astype(b.dtype), "sum"))
    r = _row_reduce(terms)
    if k is not None:
        r["kdiag"] = jnp.diagonal(k)
    return r


def _finish_head(r: dict[str, Array], g: _Geom) -> dict[str, Array]:
    """Head-level scalars from one head's per-row accumulators ``[N]`` (vmapped outside the
    loop, so the final reductions run once over all heads)."""
    n, m = g.n, g.m
    has2 = g.has2
    n_has2 = jnp.maximum(has2.sum(), 1.0)
    d_legacy = jnp.sqrt(r["a2"] / m)
    d_valid = jnp.sqrt(r["v2"] * g.inv_n[:, 0]) * has2
    ln_n = jnp.log(jnp.maximum(g.n_valid, 2.0))
    out = {
        "row_std_legacy": _std_from(r, "rl", g.s_legacy.cnt).mean(),
        "row_std_valid": _head_level(_std_from(r, "rv", g.s_valid.cnt), g.s_valid.cnt, "valid"),
        "rowsum_maxerr_all": jnp.abs(r["s1"] - 1.0).max(),
        "rowsum_maxerr_valid": jnp.abs(r["s1v"] - 1.0).max(),
        "future_max": r["fmax"].max(),
        "future_mass_max": r["f"].max(),
        "future_mass_mean": r["f"].mean(),
        "entropy_norm_legacy": (-r["h"]).mean() / max(math.log(m), LOG_EPS),
        "entropy_norm_valid": (-r["hv"] / ln_n * has2).sum() / n_has2,
        "uniform_dev_mean_legacy": d_legacy.mean(),
        "uniform_dev_max_legacy": d_legacy.max(),
        "uniform_dev_mean_valid": d_valid.sum() / n_has2,
        "uniform_dev_max_valid": d_valid.max(),
    }
    if "kmin" in r:
        out.update(
            kl_min=r["kmin"].min(),
            kl_neg_frac=r["kneg"].sum() / (n * m),
            kl_diag_max=r["kdiag"].max(),
            kl_diag_mean=r["kdiag"].mean(),
        )
    return out


def _k_query_sub(b: Array, g: _Geom) -> dict[str, Array]:
    """Adjacent / distant query-row distances over the first 20 queries of one head (§3.8)."""
    nq = min(g.n, N_QUERY_SUB)
    rows = b[:nq]
    out = {}
    for tag, x in (("legacy", rows), ("valid", rows - g.u[:nq])):
        for name, lag in (("adjacent", 1), ("distant", DISTANT_LAG)):
            if nq > lag:  # keys are absent when the sequence is too short (static)
                diff = x[lag:] - x[:-lag]
                out[f"query_{name}_{tag}"] = jnp.linalg.norm(diff, axis=-1).mean()
    return out


def _mean_pair_dist(x: Array) -> Array:
    """Mean over pairs i < i' of ||x_i - x_i'||_2 for the rows of ``x [N, M]`` (Gram form)."""
    n = x.shape[0]
    iu = jnp.asarray(np.triu(np.ones((n, n)), k=1), x.dtype)
    x = x - x.mean(0, keepdims=True)  # distances are shift-invariant; centring limits round-off
    gram = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
    sq = jnp.diagonal(gram)
    d2 = sq[:, None] + sq[None, :] - 2.0 * gram
    return (jnp.sqrt(jnp.maximum(d2, 0.0)) * iu).sum() / max(n * (n - 1) // 2, 1)


def _k_pairwise(b: Array, k: Array | None, g: _Geom) -> dict[str, Array]:
    """The O(N^3) / transposing statistics of one head: query variation, KL asymmetry."""
    out = {"query_var_legacy": _mean_pair_dist(b), "query_var_valid": _mean_pair_dist(b - g.u)}
    if k is not None:
        n = k.shape[0]
        n_off = max(n * (n - 1), 1)
        asym = (jnp.abs(k - k.T) * g.off).sum() / n_off
        out["kl_asym"] = asym
        out["kl_asym_rel"] = asym / ((jnp.abs(k) * g.off).sum() / n_off + 1e-12)
    return out


_BIG = 3.0e38  # stands in for +-inf in masked min/max (x * 0 would turn inf into nan)


def _moment_terms(x: Array, sel: Array, shift: Array, tag: str) -> dict[str, tuple[Array, str]]:
    """Row-reduce terms for pooled moments of ``x [N, M]`` over ``sel`` (float 0/1).

    ``shift`` is any value inside the data range; shifted sums keep the one-pass variance exact
    to rounding.
    """
    xs = (x - shift) * sel
    return {
        f"{tag}_s1": (xs, "sum"),
        f"{tag}_s2": (xs * xs, "sum"),
        f"{tag}_min": (x * sel + (1.0 - sel) * _BIG, "min"),
        f"{tag}_max": (x * sel - (1.0 - sel) * _BIG, "max"),
    }


def _kl_shift_index(n: int) -> tuple[int, int]:
    """Entry of the head-mean KL used as the moment shift (an off-diagonal one when N > 1)."""
    return (min(1, n - 1), 0)


def _finish_moments(
    r: dict[str, Array], shift: Array, sel: Array, tag: str, prefix: str
) -> dict[str, Array]:
    """mean / unbiased std / min / max from one item's :func:`_moment_terms` rows ``[N]``."""
    cnt = jnp.maximum(sel.sum(), 1.0)
    s1, s2 = r[f"{tag}_s1"].sum(), r[f"{tag}_s2"].sum()
    var = jnp.maximum(s2 - s1 * s1 / cnt, 0.0) / jnp.maximum(cnt - 1.0, 1.0)
    return {
        f"{prefix}_mean": shift + s1 / cnt,
        f"{prefix}_std": jnp.sqrt(var),
        f"{prefix}_min": r[f"{tag}_min"].min(),
        f"{prefix}_max": r[f"{tag}_max"].max(),
    }


def _k_mean_rows(
    bm: Array,  # [N, N] head-mean attention
    tok: Array | None,  # [N]
    km: Array | None,  # [N, N] head-mean KL
    g: _Geom,
) -> dict[str, Array]:
    """Per-row accumulators ``[N]`` of the head means of one (layer, batch) element."""
    n = bm.shape[0]
    dt = bm.dtype
    p = jnp.maximum(bm, LOG_EPS)
    terms = {
        "ent": (p * jnp.log(p), "sum"),
        "max": (bm, "max"),
        **_std_terms(bm, g.s_legacy, "rl"),
        **_std_terms(bm, g.s_valid, "rv"),
        **_std_terms(bm, g.s_bars, "bar"),
        "bar_sum": (bm * g.s_bars.sel, "sum"),
    }
    if tok is not None:
        same = g.past * (tok[:, None] == tok[None, :]).astype(dt)
        scaled = bm * g.n_valid[:, None]
        terms.update(
            past_l=(bm * g.past, "sum"),
            same_l=(bm * same, "sum"),
            past_v=(scaled * g.past_valid, "sum"),
            same_v=(scaled * same * g.mask, "sum"),
            cnt_same=(same, "sum"),
            cnt_same_v=(same * g.mask, "sum"),
        )
    if km is not None:
        shift = km[_kl_shift_index(n)]
        terms.update(_moment_terms(km, g.off, shift, "ko"))
        terms.update(_moment_terms(km, g.off * g.mask, shift, "kv"))
    return _row_reduce(terms)


def _finish_mean(
    r: dict[str, Array],  # [N] rows from _k_mean_rows
    bm: Array,  # [N, N] head-mean attention
    tok: Array | None,  # [N]
    km: Array | None,  # [N, N] head-mean KL
    g: _Geom,
    special_ids: tuple[int, ...],
) -> dict[str, Array]:
    """Head-mean metrics of one (layer, batch) element from :func:`_k_mean_rows` rows
    (vmapped outside the loop)."""
    n = g.n
    dt = bm.dtype
    bar_std = _std_from(r, "bar", g.s_bars.cnt)
    bar_mean = _safe_div(r["bar_sum"], g.s_bars.cnt)
    out = {
        "row_std_avg_legacy": _std_from(r, "rl", g.s_legacy.cnt).mean(),
        "row_std_avg_valid": _head_level(
            _std_from(r, "rv", g.s_valid.cnt), g.s_valid.cnt, "valid"
        ),
        "row_uniformity_std": bar_std,
        "row_uniformity_cv": jnp.where(bar_mean > 0, bar_std / jnp.maximum(bar_mean, 1e-30), 0.0),
        "entropy_nats": -r["ent"].mean(),
        "concentration": r["max"].mean(),
        # positional profiles are linear in beta: the profile of the head mean is the profile
        # pooled over heads (every head contributes the same pairs to each distance bucket)
        "pos_profile_legacy": _diag_sums(bm * g.lower) / g.cnt_legacy,
        "pos_profile_valid": _diag_sums(bm * g.w_pos) / jnp.maximum(g.cnt_valid, 1.0),
    }
    # nearby (d = 1..5) vs far (last 5 distances); valid-mode buckets without pairs are skipped
    has = {"legacy": jnp.ones((n,), dt), "valid": (g.cnt_valid > 0).astype(dt)}
    buckets = {"near": slice(1, 1 + POS_BUCKETS), "far": slice(max(n - POS_BUCKETS, 1), n),
               "all": slice(1, n)}
    for tag in ("legacy", "valid"):
        prof, w = out[f"pos_profile_{tag}"], has[tag]
        for name, sl in buckets.items():
            out[f"pos_{name}_{tag}"] = _safe_div((prof[sl] * w[sl]).sum(), w[sl].sum())
        if n - 1 >= 2 * POS_BUCKETS:  # the reference needs >= 10 distances (static)
            out[f"pos_ratio_{tag}"] = out[f"pos_near_{tag}"] / (out[f"pos_far_{tag}"] + RATIO_EPS)
    if tok is not None:
        n_past, n_past_v = g.past.sum(), g.past_valid.sum()
        for tag, suf, total in (("legacy", "l", n_past), ("valid", "v", n_past_v)):
            cnt_same = r["cnt_same" if tag == "legacy" else "cnt_same_v"].sum()
            same = r[f"same_{suf}"].sum()
            out[f"rep_same_{tag}"] = _safe_div(same, cnt_same)
            out[f"rep_diff_{tag}"] = _safe_div(r[f"past_{suf}"].sum() - same, total - cnt_same)
        out["rep_pairs"] = r["cnt_same"].sum()
        is_sp = jnp.zeros(tok.shape, bool)
        for s in special_ids:
            is_sp = is_sp | (tok == s)
        sp = is_sp.astype(dt)  # [N]
        n_sp = sp.sum()
        col_legacy = bm.mean(0)  # column means over all rows (ref §3.5)
        col_valid = _safe_div((bm * g.w_col).sum(0), g.mask.sum(0))
        for tag, col in (("legacy", col_legacy), ("valid", col_valid)):
            out[f"special_mean_{tag}"] = _safe_div((col * sp).sum(), n_sp)
            out[f"regular_mean_{tag}"] = _safe_div((col * (1.0 - sp)).sum(), n - n_sp)
        out["special_count"] = n_sp
    if km is not None:
        shift = km[_kl_shift_index(n)]
        out.update(_finish_moments(r, shift, g.off, "ko", "kl_offdiag"))
        out.update(_finish_moments(r, shift, g.off * g.mask, "kv", "kl_valid"))
        s = min(KL_SAMPLE, n)
        out["kl_sample"] = km[:s, :s]
    return out


def _pairwise_dist(x: Array) -> Array:
    """Euclidean distance matrix ``[N, N]`` of the rows of ``x`` ``[N, K]``, exact 0 diagonal."""
    x = x - x.mean(0, keepdims=True)
    gram = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
    sq = jnp.diagonal(gram)
    d = jnp.sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0))
    return jnp.where(np.eye(x.shape[0], dtype=bool), 0.0, d)


def _k_mu(mu: Array) -> dict[str, Array]:
    n = mu.shape[0]
    d = _pairwise_dist(mu)  # zero diagonal
    n_off = max(n * (n - 1), 1)
    mean_off = d.sum() / n_off
    dev = jnp.where(np.eye(n, dtype=bool), 0.0, d - mean_off)
    return {
        "mu_div": d.mean(),
        "mu_dist_mean": mean_off,
        "mu_dist_std": jnp.sqrt((dev * dev).sum() / max(n_off - 1, 1)),
    }


def _k_phi(phi: Array) -> dict[str, Array]:
    return {"phi_std": jnp.std(phi, axis=0, ddof=1).mean()}


def _k_sigma(sd: Array) -> dict[str, Array]:
    flat = sd.reshape(-1)
    return {
        "sigma_mean": flat.mean(),
        "sigma_std": jnp.std(flat, ddof=1),
        "sigma_min": flat.min(),
        "sigma_max": flat.max(),
    }


# ------------------------------------------------------------------------------------------------
# Public single-purpose functions (rank-polymorphic over leading axes, jitted)
# ------------------------------------------------------------------------------------------------


def _row_std_rows(beta: Array, mask: Array | None, mode: str, include_diag: bool | None):
    n, m = beta.shape[-2:]
    inc = _default_include_diag(mode, include_diag)
    sel = _Sel(_row_selection(_resolve_mask(mask, n, m), mode, inc).astype(beta.dtype))

    def one(b):
        std = _std_from(_row_reduce(_std_terms(b, sel, "r")), "r", sel.cnt)
        return std, _head_level(std, sel.cnt, mode)

    std, head = _lift(one, beta.ndim - 2)(beta)
    return std, head, sel.cnt


@functools.partial(jax.jit, static_argnames=("mode", "include_diag"))
def row_std_per_row(
    beta: Array,  # [..., N, M]
    mask: Array | None = None,  # [N, M] bool
    *,
    mode: Mode = "legacy",
    include_diag: bool | None = None,
) -> tuple[Array, Array]:
    """Per-row population std of attention weights.

    Args:
        beta: attention ``[..., N, M]``.
        mask: key-validity mask ``[N, M]`` (causal if ``None``); used by ``mode="valid"``.
        mode: ``"legacy"`` = all keys except the diagonal, masked keys included (ref §2.1);
            ``"valid"`` = only keys allowed by ``mask``.
        include_diag: keep the diagonal key. Defaults to ``False`` for legacy (the reference) and
            ``True`` for valid (self is a valid key of causal attention). A diagonal cleared in
            ``mask`` is never included in valid mode.

    Returns:
        ``(std [..., N], n_keys [N])``: per-row std (0 where a row has fewer than two keys) and
        the number of keys each row's std runs over.
    """
    std, _, cnt = _row_std_rows(beta, mask, mode, include_diag)
    return std, cnt.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("mode", "include_diag"))
def row_std(
    beta: Array,  # [..., N, M]
    mask: Array | None = None,  # [N, M] bool
    *,
    mode: Mode = "legacy",
    include_diag: bool | None = None,
) -> Array:  # [...]
    """Head-level row_std: the mean of :func:`row_std_per_row` over rows.

    Legacy averages over all N rows, row 0 included, exactly as the reference
    (``(1/N) sum_i std_{j != i} beta_ij``). Valid averages over rows with at least two keys.

    Args:
        beta: attention ``[..., N, M]``.
        mask: key-validity mask ``[N, M]`` (causal if ``None``).
        mode: ``"legacy"`` or ``"valid"``.
        include_diag: see :func:`row_std_per_row`.

    Returns:
        ``[...]`` one value per leading index (e.g. ``[L, B, H]``).

    >>> b = jnp.tril(jnp.ones((4, 4))) / jnp.arange(1, 5)[:, None]
    >>> float(row_std(b, mode="valid"))
    0.0
    """
    return _row_std_rows(beta, mask, mode, include_diag)[1]


@jax.jit
def row_sums(
    beta: Array,  # [..., N, M]
    mask: Array | None = None,  # [N, M] bool
) -> tuple[Array, Array]:
    """Row sums over all keys and over valid keys.

    With the reference's ε-clamp every masked key contributes 1e-8, so the all-keys sum of row
    ``i`` is ``1 + (#masked keys)·1e-8`` while the valid-keys sum is 1.

    Returns:
        ``(sum_all [..., N], sum_valid [..., N])``.
    """
    n, m = beta.shape[-2:]
    mk = _resolve_mask(mask, n, m).astype(beta.dtype)
    return _lift(lambda b: (b.sum(-1), (b * mk).sum(-1)), beta.ndim - 2)(beta)


@functools.partial(jax.jit, static_argnames=("special_ids", "include_diag", "query_var_batches"))
def _all_metrics_jit(
    beta, kl, mask, tokens, mu, phi, sigma_diag, *, special_ids, include_diag, query_var_batches
):
    n_layers, n_batch, _, n, m = beta.shape
    if n != m:
        raise ValueError(f"all_metrics needs square attention, got N={n}, M={m}")
    g = _Geom(mask, include_diag, beta.dtype)
    kl = None if kl is None else kl.astype(beta.dtype)
    with_kl = kl is not None
    with_tok = tokens is not None

    # per head, O(N*M): one pass per head in the loop, reductions over rows outside it
    args = (beta, kl) if with_kl else (beta,)
    rows = _map_lead(lambda b, k=None: _k_head_rows(b, k, g), args, 3)
    out = _lift(lambda r: _finish_head(r, g), 3)(rows)
    out.update(_lift(lambda b: _k_query_sub(b, g), 3)(beta))

    # per head, O(N^3) / transposes, on the first Bq batch elements: [L, Bq, H]
    bq = max(1, min(query_var_batches, n_batch))
    args = (beta[:, :bq], kl[:, :bq]) if with_kl else (beta[:, :bq],)
    out.update(_map_lead(lambda b, k=None: _k_pairwise(b, k, g), args, 3))

    # per (layer, batch) on head means: [L, B, ...]
    bm = beta.mean(axis=2)
    km = kl.mean(axis=2) if with_kl else None
    tok = jnp.asarray(tokens) if with_tok else None
    args = [bm]
    if with_tok:
        args.append(jnp.broadcast_to(tok, (n_layers,) + tok.shape))
    if with_kl:
        args.append(km)

    def mean_kernel(x, *rest):
        rest = list(rest)
        t = rest.pop(0) if with_tok else None
        k = rest.pop(0) if with_kl else None
        return _k_mean_rows(x, t, k, g)

    rows = _map_lead(mean_kernel, tuple(args), 2)

    def finish_mean(r, x, *rest):
        rest = list(rest)
        t = rest.pop(0) if with_tok else None
        k = rest.pop(0) if with_kl else None
        return _finish_mean(r, x, t, k, g, special_ids)

    out.update(_lift(finish_mean, 2)(rows, *args))
    out["pos_count_valid"] = g.cnt_valid

    for x, kern in ((mu, _k_mu), (phi, _k_phi), (sigma_diag, _k_sigma)):
        if x is None:
            continue
        x = jnp.asarray(x, beta.dtype)
        res = _lift(kern, x.ndim - 2)(x)
        out.update({k: jnp.broadcast_to(v, (n_layers, n_batch)) for k, v in res.items()})
    return out


def all_metrics(
    beta: Array,  # [L, B, H, N, N] (or [B, H, N, N] for a single layer)
    kl: Array | None = None,  # [L, B, H, N, N]
    mask: Array | None = None,  # [N, N] bool
    tokens: Array | None = None,  # [B, N] int
    *,
    mu: Array | None = None,  # [B, N, K] or [L, B, N, K]
    phi: Array | None = None,  # [B, N, 3] or [L, B, N, 3]
    sigma_diag: Array | None = None,  # [B, N, K] or [L, B, N, K]
    special_ids: tuple[int, ...] = (),
    include_diag: bool = True,
    query_var_batches: int = 1,
) -> dict[str, Array]:
    """Every metric the validation report needs, in one compiled call.

    The compiled function is cached per input shapes, the presence of the optional inputs and
    the static arguments; calling again with the same shapes does not recompile (``mask`` and
    ``tokens`` are traced, so changing them is free).

    Args:
        beta: attention weights ``[L, B, H, N, N]``; rows are queries, columns keys.
        kl: per-head divergences ``[L, B, H, N, N]``; KL metrics are skipped if ``None``.
        mask: key-validity mask ``[N, N]`` (causal lower triangle if ``None``).
        tokens: token ids ``[B, N]``; token-pattern metrics are skipped if ``None``.
        mu: beliefs for the diversity metrics, shared ``[B, N, K]`` or per layer ``[L, B, N, K]``
            (the validator's part 7 uses the evolved final beliefs; the training-time μ_dist of
            seed 001 uses embedding beliefs -- the caller chooses).
        phi: gauge frames ``[B, N, 3]`` (or per layer) for φ_std.
        sigma_diag: covariance diagonals ``[B, N, K]`` (or per layer) for the σ range.
        special_ids: token ids counted as special (static), e.g. ``(50256,)`` for GPT-2.
        include_diag: whether valid-mode row_std keeps the diagonal key (static).
        query_var_batches: query variation is O(N^3) per head, so it runs on the first
            ``query_var_batches`` batch elements only (the reference uses batch 0) (static).

    Returns:
        ``dict[str, Array]``; see :data:`METRIC_KEYS` for every key and its shape. Per-(L, B)
        diversity values are broadcast over layers when the inputs are shared.
    """
    beta = jnp.asarray(beta)
    if not jnp.issubdtype(beta.dtype, jnp.floating):
        beta = beta.astype(jnp.float32)
    if beta.ndim == 4:
        beta = beta[None]
        kl = None if kl is None else jnp.asarray(kl)[None]
    if beta.ndim != 5:
        raise ValueError(f"beta must be [L,B,H,N,N] or [B,H,N,N], got shape {beta.shape}")
    n = beta.shape[-1]
    mask = causal_mask(n) if mask is None else jnp.asarray(mask, bool)
    return _all_metrics_jit(
        beta,
        kl,
        mask,
        tokens,
        mu,
        phi,
        sigma_diag,
        special_ids=tuple(int(s) for s in special_ids),
        include_diag=bool(include_diag),
        query_var_batches=int(query_var_batches),
    )
