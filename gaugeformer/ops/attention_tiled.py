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
from collections.abc import Sequence

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


def _split_heads(x, sizes, axis: int = 1) -> list:
    """Cut the head axis of ``x`` into consecutive groups of ``sizes``."""
    ends = np.cumsum(sizes)
    return [jax.lax.slice_in_dim(x, int(e - s), int(e), axis=axis) for s, e in zip(sizes, ends)]


def attention_tiled(
    mu: Sequence[Float[Array, "B N _ _"]],
    sigma: Sequence[Float[Array, "B N _ _ _"]] | Sequence[Float[Array, "B N _ _"]],
    e: Sequence[Float[Array, "B N _ _ _"]],
    f: Sequence[Float[Array, "B N _ _ _"]],
    e_logabsdet: Sequence[Float[Array, "B N _"] | None],
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
    """Tiled attention over head groups: ``(mean, cov or None, AttentionStats)``, ``mean``/``cov`` per group.

    Each argument holds one entry per head group (:func:`gaugeformer.ops.blocks.head_groups`): beliefs
    ``[B, N, h, d(, d)]`` and frames ``[B, N, h or 1, d, d]``.  The groups' logits are concatenated along the
    head axis (group order = head order), so the statistics are per head over all ``H`` heads.  ``sigma`` of
    rank 4 is the diagonal-covariance path (``cov`` are then variances).  Equals ``kl_factorized`` /
    ``kl_diagonal`` → ``attention_logits`` → ``attention_weights`` → ``aggregate_factorized`` /
    ``aggregate_diagonal`` per group to rounding.
    """
    bsz, n = mu[0].shape[:2]
    sizes = [m.shape[2] for m in mu]
    h = sum(sizes)
    diag = sigma[0].ndim == 4
    plan = tiling.make_plan(n, tile, pattern, window, mask_self, skip=floor is None and not diag)

    def logits_of(kl, i, j, ok):
        return att.attention_logits(kl, kappa, ok, alibi_slope, rel=(i - j).astype(kl.dtype))

    if diag:
        queries, keys = list(zip(mu, sigma, e)), list(zip(mu, sigma, f))

        def logits_fn(qb, kb, i, j, ok):
            parts = [att.kl_diagonal_pairs(*q, *k, eps) for q, k in zip(qb, kb)]
            kl = jnp.concatenate([p[0] for p in parts], axis=1)
            return logits_of(kl, i, j, ok), (kl, [p[1:] for p in parts])

        def reduce_fn(acc, beta, aux, qb, kb, i, j, ok):
            kl, moments = aux
            agg = [{"mean": a["mean"] + pr.einsum("bhnm,bhnmk->bnhk", b, mu_t),
                    "second": a["second"] + pr.einsum("bhnm,bhnmk->bnhk", b, var_t + mu_t**2)}
                   for a, b, (mu_t, var_t) in zip(acc["agg"], _split_heads(beta, sizes), moments)]
            return {"agg": agg, "stats": _tile_stats(acc["stats"], beta, kl, j < n)}

        def agg_init(t):
            return [{"mean": jnp.zeros((bsz, t, *m.shape[2:]), m.dtype),
                     "second": jnp.zeros((bsz, t, *m.shape[2:]), m.dtype)} for m in mu]
    else:
        q, k = zip(*(att.kl_features(*args, eps, eps_log) for args in zip(mu, sigma, e, f, e_logabsdet)))
        values = [att.aggregate_values(m, s if evolve_sigma else None, ff) for m, s, ff in zip(mu, sigma, f)]
        queries, keys = list(q), (list(k), values)

        def logits_fn(qb, kb, i, j, ok):
            kl = jnp.concatenate([jnp.maximum(att.kl_pairs(a, b), 0.0) for a, b in zip(qb, kb[0])], axis=1)
            return logits_of(kl, i, j, ok), kl

        def reduce_fn(acc, beta, kl, qb, kb, i, j, ok):
            sums = [att.aggregate_sums(b, v) for b, v in zip(_split_heads(beta, sizes), kb[1])]
            agg = jax.tree.map(jnp.add, acc["agg"], sums)
            return {"agg": agg, "stats": _tile_stats(acc["stats"], beta, kl, j < n)}

        def agg_init(t):
            shapes = jax.eval_shape(lambda: [att.aggregate_sums(
                jnp.zeros((bsz, hg, t, 1), mu[0].dtype), jax.tree.map(lambda x: x[:, :1], v))
                for hg, v in zip(sizes, values)])
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    t = plan.tile
    dtype = mu[0].dtype
    out = tiling.softmax_reduce(
        plan, tiling.pad_tokens(queries, plan), tiling.pad_tokens(keys, plan), logits_fn, reduce_fn,
        lambda qb: {"agg": agg_init(t), "stats": _stats_init(bsz, h, t, dtype)}, floor,
    )
    agg = jax.tree.map(lambda x: tiling.unblock(x, plan, axis=1), out["agg"])
    kl_skipped = None
    if not plan.visit.all():  # only the factorized path skips (see the module docstring)
        count = plan.skipped_keys()[:n]
        kl_skipped = jnp.concatenate(
            [att.kl_key_sums(a, _skipped_key_sums(b, plan), count) for a, b in zip(q, k)], axis=1)
    stats = _finish_stats(out["stats"], plan, kl_skipped)
    if diag:
        return [a["mean"] for a in agg], [a["second"] - a["mean"] ** 2 for a in agg], stats
    mean, cov = zip(*(att.aggregate_finish(a, ee) for a, ee in zip(agg, e)))
    return list(mean), list(cov) if evolve_sigma else None, stats
