"""Pure, jittable attention metrics over stacked per-layer attention tensors.

Axis vocabulary (shared with the rest of gaugeformer): ``L`` layers, ``B`` batch, ``H`` heads,
``N`` queries (index ``i``), ``M`` keys (index ``j``; ``M == N`` for self-attention), ``K`` belief
dimension. Attention ``beta`` and divergences ``kl`` are ``[L, B, H, N, M]``; ``mask`` is the
``[N, M]`` boolean key-validity mask (``True`` = the key may be attended; lower-triangular for
causal attention, diagonal cleared except row 0 for ``mask_self_attention``).

Every metric is a small kernel on one ``[N, M]`` matrix (a head, or the head mean of one
(layer, batch) element; :mod:`diagnostics.metric_kernels`), lifted over the leading axes with
:func:`jax.vmap` or with ``lax.map`` over vmapped chunks of heads (:func:`all_metrics`, which keeps
XLA's temporaries cache-sized). Nothing here touches the host, imports flax, or keeps state; every
public function is jitted at module level (compiles are cached per shape and static arguments).
row_std itself, its keys and its row rules, is :mod:`gaugeformer.stats`' (single heads:
:func:`gaugeformer.stats.row_std_valid` / :func:`~gaugeformer.stats.row_std_legacy`).

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

import jax
import jax.numpy as jnp

from gaugeformer.ops.masks import valid_keys
from gaugeformer.stats import row_std_keys

from diagnostics import metric_kernels as mk

Array = jax.Array

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


def _mask_or_causal(mask: Array | None, n: int, m: int | None = None) -> Array:
    """``mask`` as a bool array, or full causal attention's keys when None
    (:func:`gaugeformer.ops.masks.valid_keys`)."""
    return jnp.asarray(valid_keys(n, m=m) if mask is None else mask, dtype=bool)


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
    keys = _mask_or_causal(mask, n, m).astype(beta.dtype)
    def sums(b):  # all = valid + masked: the ~1e-8 floors are not lost in a float32 sum of ~1
        valid = (b * keys).sum(-1)
        return valid + (b * (1.0 - keys)).sum(-1), valid

    return mk.lift(sums, beta.ndim - 2)(beta)


@functools.partial(jax.jit, static_argnames=("include_diag",))
def row_std_heads(
    beta: Array,  # [..., N, N]
    mask: Array | None = None,  # [N, N] bool
    include_diag: bool = True,
) -> tuple[Array, Array]:
    """Per-head row_std of attention, legacy and valid, exactly as :func:`all_metrics` computes
    ``row_std_legacy`` / ``row_std_valid`` (one pass per head) for any leading axes: the κ sweep's
    statistic.  The definition is :mod:`gaugeformer.stats`'.

    Returns:
        ``(legacy [...], valid [...])``.
    """
    n = beta.shape[-1]
    mask = _mask_or_causal(mask, n)
    return (mk.head_row_std(beta, row_std_keys(mask, legacy=True), legacy=True),
            mk.head_row_std(beta, row_std_keys(mask, include_diag=include_diag), legacy=False))


@functools.partial(jax.jit, static_argnames=("special_ids", "include_diag", "query_var_batches"))
def _all_metrics_jit(
    beta, kl, mask, tokens, mu, phi, sigma_diag, *, special_ids, include_diag, query_var_batches
):
    n_layers, n_batch, _, n, m = beta.shape
    if n != m:
        raise ValueError(f"all_metrics needs square attention, got N={n}, M={m}")
    g = mk.Geom(mask, include_diag, beta.dtype)
    kl = None if kl is None else kl.astype(beta.dtype)
    with_kl = kl is not None
    with_tok = tokens is not None

    # per head, O(N*M): one pass per head in the loop, reductions over rows outside it
    args = (beta, kl) if with_kl else (beta,)
    rows = mk.map_lead(lambda b, k=None: mk.head_rows(b, k, g), args, 3)
    out = mk.lift(lambda r: mk.finish_head(r, g), 3)(rows)
    out.update(mk.lift(lambda b: mk.query_sub(b, g), 3)(beta))

    # per head, O(N^3) / transposes, on the first Bq batch elements: [L, Bq, H]
    bq = max(1, min(query_var_batches, n_batch))
    args = (beta[:, :bq], kl[:, :bq]) if with_kl else (beta[:, :bq],)
    out.update(mk.map_lead(lambda b, k=None: mk.pairwise(b, k, g), args, 3))

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
        return mk.mean_rows(x, t, k, g)

    rows = mk.map_lead(mean_kernel, tuple(args), 2)

    def finish_mean(r, x, *rest):
        rest = list(rest)
        t = rest.pop(0) if with_tok else None
        k = rest.pop(0) if with_kl else None
        return mk.finish_mean(r, x, t, k, g, special_ids)

    out.update(mk.lift(finish_mean, 2)(rows, *args))
    out["pos_count_valid"] = g.cnt_valid

    for x, kern in ((mu, mk.mu_stats), (phi, mk.phi_stats), (sigma_diag, mk.sigma_stats)):
        if x is None:
            continue
        x = jnp.asarray(x, beta.dtype)
        res = mk.lift(kern, x.ndim - 2)(x)
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
    mask = _mask_or_causal(mask, n)
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
