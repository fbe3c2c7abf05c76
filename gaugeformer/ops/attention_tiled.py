"""KL attention in tiles (no ``[B, h, N, N]`` tensor), and the attention statistics the loss needs.

:func:`attention_tiled` computes exactly what :mod:`gaugeformer.ops.attention`'s untiled functions compute —
KL, logits, β (softmax, strict mask or the reference's floor) and the aggregated mean and covariance — one
query-block × key-block tile at a time (:func:`gaugeformer.ops.tiling.softmax_reduce`), with the same per-pair
formulas applied to slices of the same per-token features.  Only the order of the sums over keys differs, so
the result equals the untiled one to rounding.

It also returns :class:`AttentionStats`, the reductions of ``β`` and ``KL`` that the training loss and its
metrics use (``Σ β·KL``, ``Σ β``, ``Σ KL`` over *all* pairs including masked ones, and the entropy and
maximum of the head-mean β per row); :func:`stats_full` computes the same from full tensors.

Tiles that the mask removes entirely are skipped only where that is exact without extra terms: with strict
causality (no floor, so masked keys have β = 0) and the factorized KL, whose ``Σ_j KL_ij`` over the skipped
keys is linear in their features (:func:`~gaugeformer.ops.attention.kl_key_sums`).  With the reference's
floor every masked key carries ``floor`` weight, so every tile is visited.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from gaugeformer.axes import Array, Float
from gaugeformer.ops import attention as att
from gaugeformer.ops import precision as pr
from gaugeformer.ops import tiling

_ENTROPY_CLAMP = 1e-10  # the reference clamps the head-mean β before its entropy and concentration


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class AttentionStats:
    """Reductions of one layer's attention over all ``N × N`` pairs (masked ones included)."""

    beta_kl: Array  # Σ_ij β_ij KL_ij                                   [B,H]
    beta_sum: Array  # Σ_ij β_ij                                         [B,H]
    kl_sum: Array  # Σ_ij KL_ij                                          [B,H]
    entropy: Array  # Σ_i -Σ_j m_ij log m_ij,  m = max(mean_h β, 1e-10)  [B]
    concentration: Array  # Σ_i max_j m_ij                              [B]


def _head_mean_terms(beta, real):
    m = jnp.maximum(jnp.mean(beta, axis=1), _ENTROPY_CLAMP)  # [B,N,M]
    ent = -jnp.sum(jnp.where(real, m * jnp.log(m), 0.0), axis=-1)
    conc = jnp.max(jnp.where(real, m, 0.0), axis=-1)
    return ent, conc


def stats_full(beta: Float[Array, "B h N M"], kl: Float[Array, "B h N M"]) -> AttentionStats:
    ent, conc = _head_mean_terms(beta, True)
    return AttentionStats(
        beta_kl=jnp.sum(beta * kl, axis=(-2, -1)),
        beta_sum=jnp.sum(beta, axis=(-2, -1)),
        kl_sum=jnp.sum(kl, axis=(-2, -1)),
        entropy=jnp.sum(ent, axis=-1),
        concentration=jnp.sum(conc, axis=-1),
    )


def _tile_stats(acc, beta, kl, real):
    ent, conc = _head_mean_terms(beta, real)
    klr = jnp.where(real, kl, 0.0)
    return {
        "beta_kl": acc["beta_kl"] + jnp.sum(beta * klr, axis=-1),
        "beta_sum": acc["beta_sum"] + jnp.sum(beta, axis=-1),
        "kl_sum": acc["kl_sum"] + jnp.sum(klr, axis=-1),
        "entropy": acc["entropy"] + ent,
        "concentration": jnp.maximum(acc["concentration"], conc),
    }


def _stats_init(b, h, t, dtype):
    z = jnp.zeros((b, h, t), dtype)
    return {"beta_kl": z, "beta_sum": z, "kl_sum": z, "entropy": z[:, 0], "concentration": z[:, 0]}


def _finish_stats(st: dict, plan: tiling.TilePlan, kl_skipped) -> AttentionStats:
    """Sum the per-row partials; add the skipped tiles' keys (β = 0 there, so m = 1e-10 after the clamp)."""
    rows = {k: tiling.unblock(v, plan, axis=v.ndim - 2) for k, v in st.items()}
    count = plan.skipped_keys()[: plan.n]
    c = _ENTROPY_CLAMP
    ent = rows["entropy"] + jnp.asarray(count * (-c * np.log(c)), rows["entropy"].dtype)
    conc = jnp.where(count > 0, jnp.maximum(rows["concentration"], c), rows["concentration"])
    kl_sum = rows["kl_sum"].sum(-1)
    if kl_skipped is not None:
        kl_sum = kl_sum + kl_skipped.sum(-1)
    return AttentionStats(rows["beta_kl"].sum(-1), rows["beta_sum"].sum(-1), kl_sum,
                          ent.sum(-1), conc.sum(-1))


def _skipped_key_sums(keys: att.KLKeys, plan: tiling.TilePlan) -> att.KLKeys:
    """Per query token, the sums of the key features over the keys of its skipped tiles."""
    skip = jnp.asarray(~plan.visit, keys.ld.dtype)  # [q blocks, k blocks]

    def per_query(x):
        pad = [(0, 0)] * x.ndim
        pad[1] = (0, plan.padded - plan.n)
        blocks = jnp.pad(x, pad).reshape(x.shape[0], plan.blocks, plan.tile, *x.shape[2:]).sum(2)
        per_block = pr.einsum("qk,bk...->bq...", skip, blocks)
        return jnp.repeat(per_block, plan.tile, axis=1)[:, : plan.n]

    return jax.tree.map(per_query, keys)


def attention_tiled(
    mu: Float[Array, "B N h d"],
    sigma: Float[Array, "B N h d d"] | Float[Array, "B N h d"],
    e: Float[Array, "B N h d d"],
    f: Float[Array, "B N h d d"],
    e_logabsdet: Float[Array, "B N h"] | None,
    *,
    kappa: float,
    alibi_slope: float | None,
    floor: float | None,
    eps: float,
    eps_log: float,
    evolve_sigma: bool,
    tile: int | None,
    pattern: str,
    window: int,
    mask_self: bool,
):
    """Tiled attention of one head group: ``(mean [B,N,h,d], cov or None, AttentionStats)``.

    ``sigma`` of rank 4 is the diagonal-covariance path (``cov`` are then variances).  Equals
    ``kl_factorized`` / ``kl_diagonal`` → ``attention_logits`` → ``attention_weights`` →
    ``aggregate_factorized`` / ``aggregate_diagonal`` to rounding.
    """
    bsz, n, h, d = mu.shape
    diag = sigma.ndim == 4
    plan = tiling.make_plan(n, tile, pattern, window, mask_self, skip=floor is None and not diag)

    def logits_of(kl, i, j, ok):
        return att.attention_logits(kl, kappa, ok, alibi_slope, rel=(i - j).astype(kl.dtype))

    if diag:
        queries, keys = (mu, sigma, e), (mu, sigma, f)

        def logits_fn(qb, kb, i, j, ok):
            kl, mu_t, var_t = att.kl_diagonal_pairs(*qb, *kb, eps)
            return logits_of(kl, i, j, ok), (kl, mu_t, var_t)

        def reduce_fn(acc, beta, aux, qb, kb, i, j, ok):
            kl, mu_t, var_t = aux
            agg = {"mean": acc["agg"]["mean"] + pr.einsum("bhnm,bhnmk->bnhk", beta, mu_t),
                   "second": acc["agg"]["second"] + pr.einsum("bhnm,bhnmk->bnhk", beta, var_t + mu_t**2)}
            return {"agg": agg, "stats": _tile_stats(acc["stats"], beta, kl, j < n)}

        def agg_init(t):
            z = jnp.zeros((bsz, t, h, d), mu.dtype)
            return {"mean": z, "second": z}
    else:
        q, k = att.kl_features(mu, sigma, e, f, e_logabsdet, eps, eps_log)
        values = att.aggregate_values(mu, sigma if evolve_sigma else None, f)
        queries, keys = q, (k, values)

        def logits_fn(qb, kb, i, j, ok):
            kl = jnp.maximum(att.kl_pairs(qb, kb[0]), 0.0)
            return logits_of(kl, i, j, ok), kl

        def reduce_fn(acc, beta, kl, qb, kb, i, j, ok):
            sums = att.aggregate_sums(beta, kb[1])
            agg = jax.tree.map(jnp.add, acc["agg"], sums)
            return {"agg": agg, "stats": _tile_stats(acc["stats"], beta, kl, j < n)}

        def agg_init(t):
            shapes = jax.eval_shape(lambda: att.aggregate_sums(
                jnp.zeros((bsz, h, t, 1), mu.dtype), jax.tree.map(lambda x: x[:, :1], values)))
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    t = plan.tile
    out = tiling.softmax_reduce(
        plan, tiling.pad_tokens(queries, plan), tiling.pad_tokens(keys, plan), logits_fn, reduce_fn,
        lambda qb: {"agg": agg_init(t), "stats": _stats_init(bsz, h, t, mu.dtype)}, floor,
    )
    agg = jax.tree.map(lambda x: tiling.unblock(x, plan, axis=1), out["agg"])
    kl_skipped = None
    if not plan.visit.all():  # only the factorized path skips (see the module docstring)
        kl_skipped = att.kl_key_sums(q, _skipped_key_sums(k, plan), plan.skipped_keys()[:n])
    stats = _finish_stats(out["stats"], plan, kl_skipped)
    if diag:
        mean, second = agg["mean"], agg["second"]
        return mean, second - mean**2, stats
    mean, cov = att.aggregate_finish(agg, e)
    return mean, cov, stats
