"""Pure, jittable attention metrics over stacked per-layer attention tensors.

Axis vocabulary (shared with the rest of gaugeformer): ``L`` layers, ``B`` batch, ``H`` heads,
``N`` queries (index ``i``), ``M`` keys (index ``j``; ``M == N`` for self-attention), ``K`` belief
dimension. Attention ``beta`` and divergences ``kl`` are ``[L, B, H, N, M]``; ``mask`` is the
``[N, M]`` boolean key-validity mask (``True`` = the key may be attended; lower-triangular for
causal attention, diagonal cleared except row 0 for ``mask_self_attention``).

Every metric is a small per-head kernel on one ``[N, M]`` matrix, lifted over the leading axes
with :func:`jax.vmap`, so any number of leading axes works. Nothing here touches the host, imports
flax, or keeps state; every public function is jitted at module level (compiles are cached per
shape and static arguments).

Two families of numbers are produced (see ref-diagnostics §2-§3):

* ``legacy``: bug-compatible with the PyTorch reference. Statistics run over *all* keys,
  causally masked ones (≈1e-8) included, with the reference's baselines (``1/N``, ``ln N``).
* ``valid``: only causally valid keys. Row ``i`` has ``n_i`` valid keys (``i + 1`` for a causal
  mask); baselines become ``1/n_i`` and ``ln n_i``. Rows with fewer than two valid keys carry no
  information about sharpness and are left out of row means in this mode. A uniform causal row
  scores exactly "uniform" (row_std 0, deviation 0, normalised entropy 1, positional ratio 1).

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

SHARP_THRESHOLD = 0.1  # row_std > 0.1 -> SHARP (ref §2.2)
MEDIUM_THRESHOLD = 0.05  # row_std > 0.05 -> MEDIUM, else UNIFORM
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
    # positional bias (§3.4); profiles are per head, ratios pooled over heads
    "pos_profile_legacy": ("L B H D", "mean beta_{i,i-d} over rows i >= d (all j < i)"),
    "pos_profile_valid": ("L B H D", "mean n_i*beta_{i,i-d} over valid pairs (nan if none)"),
    "pos_near_legacy": ("L B", "mean of the pooled legacy profile over d = 1..5"),
    "pos_far_legacy": ("L B", "mean of the pooled legacy profile over d = N-5..N-1"),
    "pos_ratio_legacy": ("L B", "near / (far + 1e-10); nan if N - 1 < 10"),
    "pos_all_legacy": ("L B", "mean of the pooled legacy profile over d = 1..N-1"),
    "pos_near_valid": ("L B", "as pos_near_legacy on the mask-corrected profile"),
    "pos_far_valid": ("L B", "as pos_far_legacy on the mask-corrected profile"),
    "pos_ratio_valid": ("L B", "near / (far + 1e-10) on the mask-corrected profile"),
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
    "query_distant_legacy": ("L B H", "mean ||row_i - row_{i-10}|| over i = 10..min(N,20)-1"),
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
    "special_mean_legacy": ("L B", "mean over special columns of the all-rows column mean"),
    "regular_mean_legacy": ("L B", "mean over regular columns of the all-rows column mean"),
    "special_mean_valid": ("L B", "as above with n_i-weighted column means over valid rows"),
    "regular_mean_valid": ("L B", "as above for regular columns"),
    "special_count": ("L B", "number of positions holding a special id"),
    # KL properties (§3.3) and KL spread (§6.3) -- present only when kl is given
    "kl_min": ("L B H", "min over all entries"),
    "kl_neg_frac": ("L B H", "fraction of entries < 0"),
    "kl_diag_max": ("L B H", "max of KL_ii"),
    "kl_diag_mean": ("L B H", "mean of KL_ii"),
    "kl_asym": ("L B H", "mean over i != j of |KL_ij - KL_ji|"),
    "kl_asym_rel": ("L B H", "kl_asym / mean over i != j of |KL_ij|"),
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
    """Sums along sub-diagonals: ``out[d] = sum_i x[i, i-d]``, d = 0..N-1. ``x [N, N]``.

    ``x`` must be zero above the diagonal. Uses a reshape "skew" (flat index ``i(N+1) - d``
    lands in column ``N+1-d`` of an ``[N, N+1]`` view) instead of a gather.
    """
    n = x.shape[0]
    y = jnp.concatenate([x.reshape(-1), jnp.zeros((n,), x.dtype)]).reshape(n, n + 1).sum(0)
    return jnp.concatenate([y[:1], y[:0:-1][: n - 1]])


# ------------------------------------------------------------------------------------------------
# Per-head kernels: one [N, M] matrix in, scalars / rows out. Masks are float 0/1 multipliers
# (XLA CPU vectorises multiply-reduce far better than select-reduce).
# ------------------------------------------------------------------------------------------------


def _k_row_std(b: Array, sel: Array) -> Array:
    """Population std of each row over the selected keys (two-pass), 0 if < 2 keys. -> [N].

    ``sel`` is the float 0/1 key selection ``[N, M]``.
    """
    cnt = sel.sum(-1)
    mean = _safe_div((b * sel).sum(-1), cnt)
    dev = (b - mean[:, None]) * sel
    var = _safe_div((dev * dev).sum(-1), cnt)
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
        f = lambda x: jnp.asarray(x, dtype)  # noqa: E731
        self.mask = f(mask)  # valid keys
        self.sel_valid = f(_row_selection(mask, "valid", include_diag))  # valid row_std keys
        self.off = f(~np.eye(n, m, dtype=bool))  # legacy row_std keys
        self.future = f(np.triu(np.ones((n, m), bool), k=1))  # j > i
        self.lower = f(np.tri(n, m, dtype=bool))  # j <= i
        self.n_valid = self.mask.sum(-1)  # [N]
        self.inv_n = 1.0 / jnp.maximum(self.n_valid, 1.0)
        self.has2 = f(self.n_valid >= 2)
        self.u = self.mask * self.inv_n[:, None]  # uniform over valid keys
        if n == m:  # positional tables: weight n_i on valid past pairs, pair counts per distance
            self.w_pos = self.mask * self.lower * self.n_valid[:, None]
            self.cnt_legacy = f(n - np.arange(n))
            self.cnt_valid = _diag_sums(self.mask * self.lower)


def _k_head(b: Array, g: _Geom) -> dict[str, Array]:
    """All O(N*M) single-head statistics of one attention matrix ``b [N, M]``."""
    n, m = b.shape
    out = {}
    has2, n_has2 = g.has2, jnp.maximum(g.has2.sum(), 1.0)
    # row_std
    out["row_std_legacy"] = _k_row_std(b, g.off).mean()
    out["row_std_valid"] = _head_level(_k_row_std(b, g.sel_valid), g.sel_valid.sum(-1), "valid")
    # normalisation
    out["rowsum_maxerr_all"] = jnp.abs(b.sum(-1) - 1.0).max()
    out["rowsum_maxerr_valid"] = jnp.abs((b * g.mask).sum(-1) - 1.0).max()
    # causality: strict upper triangle, whatever the mask says
    fut = b * g.future
    out["future_max"] = fut.max()
    fmass = fut.sum(-1)
    out["future_mass_max"] = fmass.max()
    out["future_mass_mean"] = fmass.mean()
    # entropy
    plogp = b * jnp.log(b + LOG_EPS)
    out["entropy_norm_legacy"] = (-plogp.sum(-1)).mean() / max(math.log(m), LOG_EPS)
    h_valid = -(plogp * g.mask).sum(-1)
    ln_n = jnp.log(jnp.maximum(g.n_valid, 2.0))
    out["entropy_norm_valid"] = (h_valid / ln_n * has2).sum() / n_has2
    # deviation from uniform
    d_legacy = jnp.sqrt(((b - 1.0 / m) ** 2).mean(-1))
    out["uniform_dev_mean_legacy"] = d_legacy.mean()
    out["uniform_dev_max_legacy"] = d_legacy.max()
    d_valid = jnp.sqrt((((b - g.u) ** 2) * g.mask).sum(-1) * g.inv_n) * has2
    out["uniform_dev_mean_valid"] = d_valid.sum() / n_has2
    out["uniform_dev_max_valid"] = d_valid.max()
    # positional profiles (ref §3.4)
    if n == m:
        out["pos_profile_legacy"] = _diag_sums(b * g.lower) / g.cnt_legacy
        prof_v = _diag_sums(b * g.w_pos) / jnp.maximum(g.cnt_valid, 1.0)
        out["pos_profile_valid"] = jnp.where(g.cnt_valid > 0, prof_v, jnp.nan)
    # query-side sub-analysis on the first rows (full-length rows, ref §3.8)
    nq = min(n, N_QUERY_SUB)
    nan = jnp.asarray(jnp.nan, b.dtype)
    for tag, rows in (("legacy", b[:nq]), ("valid", (b - g.u)[:nq])):
        adj = jnp.linalg.norm(rows[1:] - rows[:-1], axis=-1).mean() if nq > 1 else nan
        out[f"query_adjacent_{tag}"] = adj
        lag = DISTANT_LAG
        dist = jnp.linalg.norm(rows[lag:] - rows[:-lag], axis=-1).mean() if nq > lag else nan
        out[f"query_distant_{tag}"] = dist
    return out


def _k_query_var(b: Array, u: Array) -> tuple[Array, Array]:
    """Mean pairwise L2 distance between query rows, raw and minus the valid-uniform rows."""
    n = b.shape[0]
    iu = jnp.asarray(np.triu(np.ones((n, n)), k=1), b.dtype)
    n_pairs = max(n * (n - 1) // 2, 1)

    def mean_pair_dist(x):
        x = x - x.mean(0, keepdims=True)  # distances are shift-invariant; centring limits round-off
        gram = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
        sq = jnp.diagonal(gram)
        d2 = sq[:, None] + sq[None, :] - 2.0 * gram
        return (jnp.sqrt(jnp.maximum(d2, 0.0)) * iu).sum() / n_pairs

    return mean_pair_dist(b), mean_pair_dist(b - u)


def _k_mean_head(bm: Array, g: _Geom) -> dict[str, Array]:
    """Statistics of the head-mean attention of one (layer, batch) element."""
    n, m = bm.shape
    out = {
        "row_std_avg_legacy": _k_row_std(bm, g.off).mean(),
        "row_std_avg_valid": _head_level(
            _k_row_std(bm, g.sel_valid), g.sel_valid.sum(-1), "valid"
        ),
    }
    sel = jnp.maximum(g.mask, jnp.eye(n, m, dtype=bm.dtype))  # valid keys plus the diagonal
    std = _k_row_std(bm, sel)
    mean = _safe_div((bm * sel).sum(-1), sel.sum(-1))
    out["row_uniformity_std"] = std
    out["row_uniformity_cv"] = jnp.where(mean > 0, std / jnp.where(mean > 0, mean, 1.0), 0.0)
    p = jnp.maximum(bm, LOG_EPS)
    out["entropy_nats"] = (-(p * jnp.log(p)).sum(-1)).mean()
    out["concentration"] = bm.max(-1).mean()
    return out


def _k_tokens(bm: Array, tok: Array, g: _Geom, special_ids: tuple[int, ...]) -> dict:
    """Repeated-token and special-token attention of one head-mean matrix (ref §3.5)."""
    n = bm.shape[0]
    dt = bm.dtype
    past = jnp.asarray(np.tri(n, n, k=-1), dt)  # j < i
    eq = (tok[:, None] == tok[None, :]).astype(dt)
    scaled = bm * g.n_valid[:, None]
    out = {}
    for tag, pairs, vals in (("legacy", past, bm), ("valid", past * g.mask, scaled)):
        same, diff = pairs * eq, pairs * (1.0 - eq)
        out[f"rep_same_{tag}"] = _safe_div((vals * same).sum(), same.sum())
        out[f"rep_diff_{tag}"] = _safe_div((vals * diff).sum(), diff.sum())
    out["rep_pairs"] = (past * eq).sum()
    is_sp = jnp.zeros((n,), bool)
    for s in special_ids:
        is_sp = is_sp | (tok == s)
    sp = is_sp.astype(dt)
    n_sp = sp.sum()
    col_legacy = bm.mean(0)
    col_valid = _safe_div((scaled * g.mask).sum(0), g.mask.sum(0))
    for tag, col in (("legacy", col_legacy), ("valid", col_valid)):
        out[f"special_mean_{tag}"] = jnp.where(n_sp > 0, _safe_div((col * sp).sum(), n_sp), jnp.nan)
        out[f"regular_mean_{tag}"] = _safe_div((col * (1.0 - sp)).sum(), n - n_sp)
    out["special_count"] = n_sp
    return out


def _k_kl_head(k: Array) -> dict[str, Array]:
    """KL properties of one head (ref §3.3)."""
    n = k.shape[0]
    off = jnp.asarray(~np.eye(n, dtype=bool), k.dtype)
    n_off = max(n * (n - 1), 1)
    diag = jnp.diagonal(k)
    asym = (jnp.abs(k - k.T) * off).sum() / n_off
    mean_abs = (jnp.abs(k) * off).sum() / n_off
    return {
        "kl_min": k.min(),
        "kl_neg_frac": (k < 0).astype(k.dtype).mean(),
        "kl_diag_max": diag.max(),
        "kl_diag_mean": diag.mean(),
        "kl_asym": asym,
        "kl_asym_rel": asym / (mean_abs + 1e-12),
    }


def _masked_moments(x: Array, sel: Array, prefix: str) -> dict[str, Array]:
    """mean / unbiased std / min / max of ``x`` over the selected entries (``sel`` bool)."""
    w = sel.astype(x.dtype)
    cnt = w.sum()
    mean = _safe_div((x * w).sum(), cnt)
    var = (((x - mean) ** 2) * w).sum() / jnp.maximum(cnt - 1.0, 1.0)
    return {
        f"{prefix}_mean": mean,
        f"{prefix}_std": jnp.sqrt(var),
        f"{prefix}_min": jnp.where(sel, x, jnp.inf).min(),
        f"{prefix}_max": jnp.where(sel, x, -jnp.inf).max(),
    }


def _k_kl_mean(km: Array, mask: Array) -> dict[str, Array]:
    """Spread of the head-mean KL of one (layer, batch) element (ref §6.3)."""
    n = km.shape[0]
    off = ~np.eye(n, dtype=bool)
    out = _masked_moments(km, jnp.asarray(off), "kl_offdiag")
    out.update(_masked_moments(km, mask & off, "kl_valid"))
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
    d = _pairwise_dist(mu)
    mom = _masked_moments(d, jnp.asarray(~np.eye(n, dtype=bool)), "mu_dist")
    return {"mu_div": d.mean(), "mu_dist_mean": mom["mu_dist_mean"], "mu_dist_std": mom["mu_dist_std"]}


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
    n, m = beta.shape[-2:]
    inc = _default_include_diag(mode, include_diag)
    sel = _row_selection(_resolve_mask(mask, n, m), mode, inc).astype(beta.dtype)
    std = _lift(lambda b: _k_row_std(b, sel), beta.ndim - 2)(beta)
    return std, sel.sum(-1).astype(jnp.int32)


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
    n, m = beta.shape[-2:]
    inc = _default_include_diag(mode, include_diag)
    sel = _row_selection(_resolve_mask(mask, n, m), mode, inc).astype(beta.dtype)
    cnt = sel.sum(-1)
    return _lift(lambda b: _head_level(_k_row_std(b, sel), cnt, mode), beta.ndim - 2)(beta)


def row_std_label(value: float) -> str:
    """SHARP / MEDIUM / UNIFORM for a row_std value (ref §2.2; host-side helper)."""
    v = float(value)
    if v > SHARP_THRESHOLD:
        return "SHARP"
    if v > MEDIUM_THRESHOLD:
        return "MEDIUM"
    return "UNIFORM"


def row_std_status(value: float) -> str:
    """The validator's decorated label: ``✓SHARP`` / ``⚠MEDIUM`` / ``❌UNIFORM``."""
    return {"SHARP": "✓SHARP", "MEDIUM": "⚠MEDIUM", "UNIFORM": "❌UNIFORM"}[row_std_label(value)]


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
    mk = _resolve_mask(mask, n, m)
    return beta.sum(-1), jnp.where(mk, beta, 0.0).sum(-1)


@functools.partial(jax.jit, static_argnames=("special_ids", "include_diag", "query_var_batches"))
def _all_metrics_jit(
    beta, kl, mask, tokens, mu, phi, sigma_diag, *, special_ids, include_diag, query_var_batches
):
    if not jnp.issubdtype(beta.dtype, jnp.floating):
        beta = beta.astype(jnp.float32)
    n_layers, n_batch, _, n, m = beta.shape
    if n != m:
        raise ValueError(f"all_metrics needs square attention, got N={n}, M={m}")
    g = _Geom(mask, include_diag, beta.dtype)

    # per head: [L, B, H, ...]
    out = _map_lead(lambda b: _k_head(b, g), (beta,), 3)
    for tag in ("legacy", "valid"):
        pooled = jnp.nanmean(out[f"pos_profile_{tag}"], axis=2)  # equal pair counts per head
        near = jnp.nanmean(pooled[..., 1 : 1 + POS_BUCKETS], -1)
        far = jnp.nanmean(pooled[..., max(n - POS_BUCKETS, 1) :], -1)
        out[f"pos_near_{tag}"], out[f"pos_far_{tag}"] = near, far
        enough = n - 1 >= 2 * POS_BUCKETS  # the reference needs >= 10 distances
        out[f"pos_ratio_{tag}"] = near / (far + RATIO_EPS) if enough else jnp.full_like(near, jnp.nan)
        out[f"pos_all_{tag}"] = jnp.nanmean(pooled[..., 1:], -1)

    # query variation on the first Bq batch elements (O(N^3) per head)
    bq = max(1, min(query_var_batches, n_batch))
    qv = _map_lead(lambda b: _k_query_var(b, g.u), (beta[:, :bq],), 3)
    out["query_var_legacy"], out["query_var_valid"] = qv

    # head-mean attention: [L, B, ...]
    bm = beta.mean(axis=2)
    out.update(_map_lead(lambda x: _k_mean_head(x, g), (bm,), 2))
    if tokens is not None:
        tok = jnp.broadcast_to(jnp.asarray(tokens), (n_layers,) + tokens.shape)
        out.update(_map_lead(lambda x, t: _k_tokens(x, t, g, special_ids), (bm, tok), 2))

    if kl is not None:
        kl = kl.astype(beta.dtype)
        out.update(_map_lead(_k_kl_head, (kl,), 3))
        out.update(_map_lead(lambda x: _k_kl_mean(x, mask), (kl.mean(axis=2),), 2))

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
