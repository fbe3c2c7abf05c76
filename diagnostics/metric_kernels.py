"""The kernels of :func:`diagnostics.metrics.all_metrics`: one ``[N, M]`` matrix in, scalars or
rows out, lifted over ``(layer, batch, head)`` by :func:`lift` / :func:`map_lead`.

Row statistics go through ONE variadic ``lax.reduce`` over the key axis (XLA CPU emits a single
vectorised loop for it; separate reductions sharing a producer get materialised instead). Masks are
float 0/1 multipliers. row_std is :mod:`gaugeformer.stats`' (its keys, its one-pass summands, its
per-row and per-head rules); other standard deviations use sums shifted by a value inside the data
range, so one pass is as accurate as two.  Axis letters and the ``legacy`` / ``valid`` families:
:mod:`diagnostics.metrics`.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from gaugeformer import stats

Array = jax.Array

LOG_EPS = 1e-10  # additive epsilon inside log(beta + eps) (ref §3.6)
RATIO_EPS = 1e-10  # denominator epsilon of the reference's ratios
N_QUERY_SUB = 20  # query-variation sub-analysis looks at the first 20 queries (ref §3.8)
DISTANT_LAG = 10  # ... and compares rows 10 apart
POS_BUCKETS = 5  # positional bias: distances 1..5 vs the last 5 distances (ref §3.4)
KL_SAMPLE = 5  # top-left KL block printed by the diversity tracker (ref §6.3)
MAP_CHUNK = 8  # heads per lax.map step in all_metrics: keeps every temporary cache-sized


def lift(fn, n_lead: int):
    """vmap ``fn`` over ``n_lead`` leading axes of every argument."""
    for _ in range(n_lead):
        fn = jax.vmap(fn)
    return fn


def map_lead(fn, args: tuple, n_lead: int, chunk: int = MAP_CHUNK):
    """Apply a per-item kernel over ``n_lead`` leading axes with ``lax.map`` in vmapped chunks.

    Equivalent to ``lift(fn, n_lead)(*args)`` but the loop keeps XLA's temporaries at
    ``chunk`` items instead of materialising full ``[L, B, H, N, M]`` intermediates.
    """
    lead = args[0].shape[:n_lead]
    size = math.prod(lead)
    flat = tuple(a.reshape((size,) + a.shape[n_lead:]) for a in args)
    out = jax.lax.map(lambda xs: fn(*xs), flat, batch_size=min(chunk, size))
    return jax.tree.map(lambda o: o.reshape(lead + o.shape[1:]), out)


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
# One pass over the keys
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


def _std_terms(b: Array, s: _Sel, tag: str) -> dict[str, tuple[Array, str]]:
    """Row-reduce terms of row_std (:func:`gaugeformer.stats.row_std_terms`) over ``s``'s keys."""
    x, xx = stats.row_std_terms(b, s.sel, s.cnt, s.diag)
    return {f"{tag}_s1": (x, "sum"), f"{tag}_s2": (xx, "sum")}


def _std_from(r: dict[str, Array], tag: str, cnt: Array) -> Array:
    """Per-row row_std from :func:`_std_terms`' sums (:func:`gaugeformer.stats.std_from_sums`)."""
    return stats.std_from_sums(r[f"{tag}_s1"], r[f"{tag}_s2"], cnt)


def _head_std(rows: Array, s: _Sel, legacy: bool) -> Array:
    """A head's row_std from its rows (:func:`gaugeformer.stats.head_row_std`)."""
    return stats.head_row_std(rows, s.cnt, legacy=legacy)


def head_row_std(beta: Array, keys, legacy: bool) -> Array:
    """row_std per head of ``beta [..., N, M]`` over ``keys [N, M]`` (one pass per head, as in
    :func:`head_rows` / :func:`finish_head`): ``[...]``."""
    sel = _Sel(jnp.asarray(keys, beta.dtype))

    def one(b):
        return _head_std(_std_from(_row_reduce(_std_terms(b, sel, "r")), "r", sel.cnt), sel, legacy)

    return lift(one, beta.ndim - 2)(beta)


class Geom:
    """Float masks and per-row constants derived once from ``mask`` (traced values)."""

    def __init__(self, mask: Array, include_diag: bool, dtype=jnp.float32):
        n, m = mask.shape
        self.n, self.m = n, m

        def f(x):
            return jnp.asarray(x, dtype)

        eye = np.eye(n, m, dtype=bool)
        self.mask = f(mask)  # valid keys
        self.off = f(stats.row_std_keys(mask, legacy=True))  # every key but the diagonal
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
        self.s_valid = _Sel(f(stats.row_std_keys(mask, include_diag=include_diag)))
        self.s_bars = _Sel(jnp.maximum(self.mask, f(eye)))  # §2.4: valid keys plus the diagonal
        if n == m:  # positional tables: weight n_i on valid past pairs, pair counts per distance
            self.w_pos = self.mask * self.lower * self.n_valid[:, None]
            self.cnt_legacy = f(n - np.arange(n))
            self.cnt_valid = _diag_sums(self.mask * self.lower)


def head_rows(b: Array, k: Array | None, g: Geom) -> dict[str, Array]:
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


def finish_head(r: dict[str, Array], g: Geom) -> dict[str, Array]:
    """Head-level scalars from one head's per-row accumulators ``[N]`` (vmapped outside the
    loop, so the final reductions run once over all heads)."""
    n, m = g.n, g.m
    has2 = g.has2
    n_has2 = jnp.maximum(has2.sum(), 1.0)
    d_legacy = jnp.sqrt(r["a2"] / m)
    d_valid = jnp.sqrt(r["v2"] * g.inv_n[:, 0]) * has2
    ln_n = jnp.log(jnp.maximum(g.n_valid, 2.0))
    out = {
        "row_std_legacy": _head_std(_std_from(r, "rl", g.s_legacy.cnt), g.s_legacy, legacy=True),
        "row_std_valid": _head_std(_std_from(r, "rv", g.s_valid.cnt), g.s_valid, legacy=False),
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


def query_sub(b: Array, g: Geom) -> dict[str, Array]:
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
    """Mean over pairs i < i' of ||x_i - x_i'||_2 for the rows of ``x [N, M]``.

    From the differences themselves, in blocks of rows (``O(N·M)`` memory per block): the Gram form
    ``|x_i|² + |x_i'|² - 2 x_i·x_i'`` cancels for nearly equal rows, and the square root turns that float32
    cancellation into errors of ~1e-5 on attention rows."""
    n, m = x.shape
    rows = jnp.arange(n)

    def row(args):
        xi, i = args
        return jnp.sum(jnp.where(rows > i, jnp.sqrt(jnp.sum((x - xi) ** 2, axis=-1)), 0.0))

    per_row = jax.lax.map(row, (x, rows), batch_size=max(1, min(n, 2**22 // max(n * m, 1))))
    return per_row.sum() / max(n * (n - 1) // 2, 1)


def pairwise(b: Array, k: Array | None, g: Geom) -> dict[str, Array]:
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


def mean_rows(
    bm: Array,  # [N, N] head-mean attention
    tok: Array | None,  # [N]
    km: Array | None,  # [N, N] head-mean KL
    g: Geom,
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


def finish_mean(
    r: dict[str, Array],  # [N] rows from mean_rows
    bm: Array,  # [N, N] head-mean attention
    tok: Array | None,  # [N]
    km: Array | None,  # [N, N] head-mean KL
    g: Geom,
    special_ids: tuple[int, ...],
) -> dict[str, Array]:
    """Head-mean metrics of one (layer, batch) element from :func:`mean_rows` rows
    (vmapped outside the loop)."""
    n = g.n
    dt = bm.dtype
    bar_std = _std_from(r, "bar", g.s_bars.cnt)
    bar_mean = _safe_div(r["bar_sum"], g.s_bars.cnt)
    out = {
        "row_std_avg_legacy": _head_std(_std_from(r, "rl", g.s_legacy.cnt), g.s_legacy,
                                        legacy=True),
        "row_std_avg_valid": _head_std(_std_from(r, "rv", g.s_valid.cnt), g.s_valid,
                                       legacy=False),
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


def mu_stats(mu: Array) -> dict[str, Array]:
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


def phi_stats(phi: Array) -> dict[str, Array]:
    return {"phi_std": jnp.std(phi, axis=0, ddof=1).mean()}


def sigma_stats(sd: Array) -> dict[str, Array]:
    flat = sd.reshape(-1)
    return {
        "sigma_mean": flat.mean(),
        "sigma_std": jnp.std(flat, ddof=1),
        "sigma_min": flat.min(),
        "sigma_max": flat.max(),
    }
