"""KL attention for one group of equal-dimension heads: KL matrix, logits, β and aggregation.

Shapes (one group of ``h`` heads of dimension ``d``):

* beliefs ``mu [B, N, h, d]``, full covariance ``sigma [B, N, h, d, d]`` (or variances ``[B, N, h, d]``)
* transport factors ``E, F [B, N, h, d, d]`` with ``Ω_ij = E_i F_j``
* attention tensors ``[B, h, N, M]`` (query i, key j)

Two implementations of the full-covariance KL exist, with one purpose each:

* :func:`kl_factorized` — the model's path.  Per-token work ``O(N d³)`` plus ``O(N² d²)`` GEMMs; no
  ``(N, N, d, d)`` tensor, no per-pair Cholesky (factorized-attention.md §1).  It moves the reference's
  ``εI`` from ``E_i S_j E_iᵀ + εI`` to ``E_i (S_j + εI) E_iᵀ`` (exact when ``E`` is orthogonal, O(ε·‖E⁻¹E⁻ᵀ - I‖)
  otherwise) and approximates the reference's ``ε``-inside-``log(diag L)`` of the transported covariance with
  the key's own Cholesky diagonal (exact for isotropic covariances).
* :func:`kl_direct` — the reference's per-pair formula, kept for tests at small N.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from gaugeformer.axes import Array, Bool, Float
from gaugeformer.ops import gaussian as gs
from gaugeformer.ops import precision as pr
from gaugeformer.ops import small as sm

# ----------------------------------------------------------------------------------------------
# KL
# ----------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KLQueries:
    """Query-side features of the factorized KL (all ``[B, N, h, ...]``; ``a`` centred on the first key)."""

    sig: Array  # Σ̂_i = E_i⁻¹ (Σ_i + εI) E_i⁻ᵀ      [B,N,h,d,d]
    a: Array  # E_i⁻¹ μ_i - c                        [B,N,h,d]
    ld: Array  # log det(Σ_i + εI) (eps_log inside)  [B,N,h]
    lde: Array  # 2 log|det E_i| (0 when orthogonal) [B,N,h]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KLKeys:
    """Key-side features of the factorized KL (all ``[B, M, h, ...]``)."""

    p: Array  # P_j = (F_j Σ_j F_jᵀ + εI)⁻¹            [B,M,h,d,d]
    pb: Array  # P_j (b_j - c)                         [B,M,h,d]
    quad_b: Array  # (b_j - c)ᵀ P_j (b_j - c)            [B,M,h]
    ld: Array  # log det(F_j Σ_j F_jᵀ + εI)              [B,M,h]


def kl_features(
    mu: Float[Array, "B N h d"],
    sigma: Float[Array, "B N h d d"],
    e: Float[Array, "B N #h d d"],
    f: Float[Array, "B N #h d d"],
    e_logabsdet: Float[Array, "B N #h"] | None,
    eps: float,
    eps_log: float,
) -> tuple[KLQueries, KLKeys]:
    """Per-token features of :func:`kl_factorized` (``O(N d³)``); :func:`kl_pairs` combines any tile of them.

    The frames may have one head (``#h = 1``): a head group shares its transport (it depends on the degree).

    The quadratic form is expanded around the first key ``c`` (per batch and head) so the three GEMM terms
    stay small when all beliefs are close (the trained regime, KL ~ 1e-3); ``c`` is visible to every query,
    so causality holds exactly, and it is a constant for autodiff (the value does not depend on it).
    """
    s = sm.sandwich(f, sigma)  # [B,M,h,d,d]
    chol_s = sm.cholesky(gs.add_eye(s, eps))
    p = gs.spd_inverse(chol_s)
    b = sm.mv(f, mu)
    q = gs.add_eye(sigma, eps)
    einv = f if e_logabsdet is None else sm.inverse(e)
    c = jax.lax.stop_gradient(b[:, :1])
    a, b = sm.mv(einv, mu) - c, b - c
    pb = sm.mv(p, b)
    ld_query = gs.chol_logdet(sm.cholesky(q), eps_log)
    lde = jnp.zeros_like(ld_query) if e_logabsdet is None else jnp.broadcast_to(2.0 * e_logabsdet, ld_query.shape)
    queries = KLQueries(sig=sm.sandwich(einv, q), a=a, ld=ld_query, lde=lde)
    keys = KLKeys(p=p, pb=pb, quad_b=pr.einsum("bmhk,bmhk->bmh", b, pb), ld=gs.chol_logdet(chol_s, eps_log))
    return queries, keys


def _pair_parts(q: KLQueries, k: KLKeys):
    """``(trace, quad_a, cross, quad_b, logdet)`` of every query-key pair, each ``[B, h, N, M]``."""
    quad_a = pr.einsum("bnhkl,bmhkl->bhnm", q.a[..., :, None] * q.a[..., None, :], k.p)
    cross = pr.einsum("bnhk,bmhk->bhnm", q.a, k.pb)
    trace = pr.einsum("bnhkl,bmhkl->bhnm", q.sig, k.p)
    return (trace, quad_a, cross) + _pair_constants(q, k)


def _pair_constants(q: KLQueries, k: KLKeys):
    """``(quad_b, logdet)`` broadcast to ``[B, h, N, M]``: the per-key and per-query terms."""
    logdet = (k.ld.transpose(0, 2, 1)[:, :, None, :] - q.ld.transpose(0, 2, 1)[..., None]
              + q.lde.transpose(0, 2, 1)[..., None])
    return k.quad_b.transpose(0, 2, 1)[:, :, None, :], logdet


def pair_quadratic(
    sig: Float[Array, "B N h d d"], a: Float[Array, "B N h d"], p: Float[Array, "B M h d d"],
    pb: Float[Array, "B M h d"],
) -> Float[Array, "B h N M"]:
    """``tr(Σ̂_i P_j) + a_iᵀ P_j a_i - 2 a_iᵀ P_j b_j`` for every pair as one GEMM of depth ``d² + d``, over
    the features ``[vec(Σ̂_i + a_i a_iᵀ), a_i]`` and ``[vec(P_j), -2 P_j b_j]`` (factorized-attention §1)."""
    qf = jnp.concatenate([(sig + a[..., :, None] * a[..., None, :]).reshape(*a.shape[:-1], -1), a], axis=-1)
    kf = jnp.concatenate([p.reshape(*pb.shape[:-1], -1), -2.0 * pb], axis=-1)
    return pr.einsum("bnhf,bmhf->bhnm", qf, kf)


def kl_pairs(q: KLQueries, k: KLKeys) -> Float[Array, "B h N M"]:
    """``KL_ij`` (before clamping) for every query of ``q`` and key of ``k``: one GEMM (:func:`pair_quadratic`)."""
    d = q.a.shape[-1]
    quad_b, logdet = _pair_constants(q, k)
    return 0.5 * (pair_quadratic(q.sig, q.a, k.p, k.pb) + quad_b - d + logdet)


def kl_pair_terms(q: KLQueries, k: KLKeys) -> dict[str, Float[Array, "B h N M"]]:
    """:func:`kl_pairs` split into its ``trace`` (``½(tr - d)``), ``mahalanobis`` and ``logdet`` terms."""
    d = q.a.shape[-1]
    trace, quad_a, cross, quad_b, logdet = _pair_parts(q, k)
    return {"trace": 0.5 * (trace - d), "mahalanobis": 0.5 * (quad_a - 2.0 * cross + quad_b),
            "logdet": 0.5 * logdet}


def kl_key_sums(q: KLQueries, ksum: KLKeys, count) -> Float[Array, "B h N"]:
    """``Σ_j KL_ij`` (unclamped) over a set of keys, from the sums of their features ``ksum`` (``[B,N,h,...]``,
    per query) and their number ``count`` (``[N]``): every key feature enters :func:`kl_pairs` linearly."""
    d = q.a.shape[-1]
    quad_a = pr.einsum("bnhkl,bnhkl->bnh", q.a[..., :, None] * q.a[..., None, :], ksum.p)
    cross = pr.einsum("bnhk,bnhk->bnh", q.a, ksum.pb)
    trace = pr.einsum("bnhkl,bnhkl->bnh", q.sig, ksum.p)
    cnt = jnp.asarray(count, q.ld.dtype)[None, :, None]
    total = trace + quad_a - 2.0 * cross + ksum.quad_b + ksum.ld + cnt * (q.lde - q.ld - d)
    return 0.5 * total.transpose(0, 2, 1)


def kl_factorized(
    mu: Float[Array, "B N h d"],
    sigma: Float[Array, "B N h d d"],
    e: Float[Array, "B N #h d d"],
    f: Float[Array, "B N #h d d"],
    e_logabsdet: Float[Array, "B N #h"] | None,
    eps: float,
    eps_log: float,
) -> Float[Array, "B h N M"]:
    """``KL(q_i ‖ Ω_ij q_j)`` for all pairs, factorized (:func:`kl_features`, :func:`kl_pairs`).

    ``e_logabsdet`` is ``log|det E_i|`` (None: E is orthogonal, so ``E⁻¹ = F`` and the term is 0).
    """
    q, k = kl_features(mu, sigma, e, f, e_logabsdet, eps, eps_log)
    return jnp.maximum(kl_pairs(q, k), 0.0)


def kl_direct(
    mu: Float[Array, "B N h d"],
    sigma: Float[Array, "B N h d d"],
    e: Float[Array, "B N #h d d"],
    f: Float[Array, "B N #h d d"],
    eps: float,
    eps_log: float,
) -> Float[Array, "B h N M"]:
    """The reference's per-pair KL (ref-architecture §4.2): materialises Ω_ij and a Cholesky per pair."""
    d = mu.shape[-1]
    e, f = (jnp.broadcast_to(x, sigma.shape) for x in (e, f))
    omega = pr.einsum("bnhkl,bmhlp->bhnmkp", e, f)
    mu_t = pr.einsum("bhnmkl,bmhl->bhnmk", omega, mu)
    sig_t = pr.einsum("bhnmkl,bmhlp,bhnmqp->bhnmkq", omega, sigma, omega)
    chol_a = sm.cholesky(gs.add_eye(sig_t, eps))
    chol_q = sm.cholesky(gs.add_eye(sigma, eps)).transpose(0, 2, 1, 3, 4)[:, :, :, None]
    chol_q = jnp.broadcast_to(chol_q, chol_a.shape)
    linv_a = sm.tri_inverse(chol_a)
    x = sm.mm(linv_a, chol_q)
    trace = jnp.sum(x * x, axis=(-2, -1))
    diff = mu_t - mu.transpose(0, 2, 1, 3)[:, :, :, None, :]
    y = sm.mv(linv_a, diff)
    mahal = jnp.sum(y * y, axis=-1)
    logdet = gs.chol_logdet(chol_a, eps_log) - gs.chol_logdet(chol_q, eps_log)
    return jnp.maximum(0.5 * (trace + mahal - d + logdet), 0.0)


def transported_variances(
    sigma: Float[Array, "B M h d"], e: Float[Array, "B N h d d"], f: Float[Array, "B M #h d d"]
) -> Float[Array, "B h N M d"]:
    """``diag(Ω_ij diag(σ_j) Ω_ijᵀ)`` for every pair, as ``diag(E_i S_j E_iᵀ)`` (no Ω materialised)."""
    s = sm.mm(f * sigma[..., None, :], sm.t(f))
    return pr.einsum("bnhkx,bnhky,bmhxy->bhnmk", e, e, s)


def kl_diagonal_pairs(
    mu_q: Float[Array, "B N h d"],
    var_q: Float[Array, "B N h d"],
    e_q: Float[Array, "B N #h d d"],
    mu_k: Float[Array, "B M h d"],
    var_k: Float[Array, "B M h d"],
    f_k: Float[Array, "B M #h d d"],
    floor: float = 1e-6,
) -> tuple[Float[Array, "B h N M"], Float[Array, "B h N M d"], Float[Array, "B h N M d"]]:
    """:func:`kl_diagonal` between the queries ``(μ, σ², E)_q`` and the keys ``(μ, σ², F)_k`` (any tile)."""
    e_q = jnp.broadcast_to(e_q, (*mu_q.shape, mu_q.shape[-1]))  # the einsums below name the head axis
    var_q, var_k = jnp.maximum(var_q, floor), jnp.maximum(var_k, floor)
    var_t = jnp.maximum(transported_variances(var_k, e_q, f_k), floor)
    mu_t = pr.einsum("bnhkl,bmhl->bhnmk", e_q, sm.mv(f_k, mu_k))
    var_i = var_q.transpose(0, 2, 1, 3)[:, :, :, None, :]
    mu_i = mu_q.transpose(0, 2, 1, 3)[:, :, :, None, :]
    kl = 0.5 * jnp.sum(
        var_i / var_t + (mu_t - mu_i) ** 2 / var_t - 1.0 + jnp.log(var_t) - jnp.log(var_i), axis=-1
    )
    return jnp.maximum(kl, 0.0), mu_t, var_t


def kl_diagonal(
    mu: Float[Array, "B N h d"],
    var: Float[Array, "B N h d"],
    e: Float[Array, "B N #h d d"],
    f: Float[Array, "B N #h d d"],
    floor: float = 1e-6,
) -> tuple[Float[Array, "B h N M"], Float[Array, "B h N M d"], Float[Array, "B h N M d"]]:
    """Diagonal-covariance KL (ref-architecture §4.2, diagonal path): returns ``(KL, μ̃, σ̃)``."""
    return kl_diagonal_pairs(mu, var, e, mu, var, f, floor)


# ----------------------------------------------------------------------------------------------
# logits and weights
# ----------------------------------------------------------------------------------------------


def attention_logits(
    kl: Float[Array, "*b N M"],
    kappa: float | Float[Array, "..."],  # a scalar, or per row of a κ sweep (broadcasting)
    mask: Bool[Array, "N M"],
    alibi_slope: float | None = None,
    rel: Float[Array, "N M"] | None = None,
) -> Float[Array, "*b N M"]:
    """``-KL/κ (+ slope·(i - j))``, ``-inf`` where ``mask`` (see :mod:`gaugeformer.ops.masks`) is False.

    ``rel`` is ``i - j`` for the tile (default: the ``[N, M]`` grid from 0, i.e. the whole matrix).
    """
    logits = -kl / kappa
    if alibi_slope:
        if rel is None:
            n, m = mask.shape
            rel = np.arange(n)[:, None] - np.arange(m)[None, :]
        logits = logits + alibi_slope * jnp.asarray(rel, logits.dtype)
    return jnp.where(jnp.asarray(mask), logits, -jnp.inf)


def attention_weights(logits: Float[Array, "*b N M"], floor: float | None) -> Float[Array, "*b N M"]:
    """Softmax over keys; ``floor`` (the reference's 1e-8 / 1e-6) clamps every entry from below, which lets
    masked future keys leak in.  ``floor=None`` keeps masked weights exactly 0."""
    beta = jax.nn.softmax(logits, axis=-1)
    return beta if floor is None else jnp.maximum(beta, floor)


# ----------------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class AggValues:
    """Per-key values whose β-weighted sums give the aggregation (``[B, M, h, ...]``)."""

    b: Array  # b_j = F_j μ_j                               [B,M,h,d]
    bc: Array  # b_j - c (c the first key)                   [B,M,h,d]
    second: Array | None  # S_j + (b_j - c)(b_j - c)ᵀ, or None   [B,M,h,d,d]


def aggregate_values(mu: Float[Array, "B M h d"], sigma: Float[Array, "B M h d d"] | None,
                     f: Float[Array, "B M #h d d"]) -> AggValues:
    b = sm.mv(f, mu)
    if sigma is None:
        return AggValues(b, b, None)
    c = jax.lax.stop_gradient(b[:, :1])
    bc = b - c
    return AggValues(b, bc, sm.sandwich(f, sigma) + bc[..., :, None] * bc[..., None, :])


def aggregate_sums(beta: Float[Array, "B h N M"], v: AggValues) -> dict:
    """``Σ_j β_ij`` of every value (and of 1): the only pairwise work of the aggregation (GEMMs)."""
    out = {"b": pr.einsum("bhnm,bmhk->bnhk", beta, v.b)}
    if v.second is not None:
        out["r"] = jnp.sum(beta, axis=-1).transpose(0, 2, 1)
        out["bc"] = pr.einsum("bhnm,bmhk->bnhk", beta, v.bc)
        out["second"] = pr.einsum("bhnm,bmhkl->bnhkl", beta, v.second)
    return out


def aggregate_finish(sums: dict, e: Float[Array, "B N #h d d"]
                     ) -> tuple[Float[Array, "B N h d"], Float[Array, "B N h d d"] | None]:
    """Mean and moment-matched covariance from :func:`aggregate_sums` (see :func:`aggregate_factorized`)."""
    beta_b = sums["b"]
    mean = sm.mv(e, beta_b)
    if "second" not in sums:
        return mean, None
    r = sums["r"][..., None, None]  # [B,N,h,1,1]
    u = sums["bc"]
    inner = (
        sums["second"]
        - u[..., :, None] * u[..., None, :] / r
        + (1.0 - r) / r * beta_b[..., :, None] * beta_b[..., None, :]
    )
    return mean, sm.sandwich(e, inner)


def aggregate_factorized(
    beta: Float[Array, "B h N M"],
    mu: Float[Array, "B M h d"],
    sigma: Float[Array, "B M h d d"] | None,
    e: Float[Array, "B N #h d d"],
    f: Float[Array, "B M #h d d"],
) -> tuple[Float[Array, "B N h d"], Float[Array, "B N h d d"] | None]:
    """``m_i = Σ_j β_ij Ω_ij μ_j`` and the moment-matched mixture covariance (factorized-attention §2).

    ``S_i = Σ_j β_ij (Ω Σ_j Ωᵀ + μ̃ μ̃ᵀ) - m_i m_iᵀ`` is formed as ``E_i [Σ_j β_ij S_j + C_i] E_iᵀ`` where the
    scatter ``C_i = Σ_j β_ij b_j b_jᵀ - (Σ_j β_ij b_j)(Σ_j β_ij b_j)ᵀ`` is computed around the first key ``c``
    (``b_j - c``, which every query sees), so large common means do not cancel.  The row sum ``r_i = Σ_j β_ij``
    (``1 + #masked·floor`` in the reference) is accounted for exactly.
    """
    return aggregate_finish(aggregate_sums(beta, aggregate_values(mu, sigma, f)), e)


def aggregate_direct(
    beta: Float[Array, "B h N M"],
    mu: Float[Array, "B M h d"],
    sigma: Float[Array, "B M h d d"] | None,
    e: Float[Array, "B N #h d d"],
    f: Float[Array, "B M #h d d"],
) -> tuple[Float[Array, "B N h d"], Float[Array, "B N h d d"] | None]:
    """The reference's per-pair aggregation (ref-architecture §5), for tests."""
    e, f = (jnp.broadcast_to(x, (*mu.shape, mu.shape[-1])) for x in (e, f))
    omega = pr.einsum("bnhkl,bmhlp->bhnmkp", e, f)
    mu_t = pr.einsum("bhnmkl,bmhl->bhnmk", omega, mu)
    mean = pr.einsum("bhnm,bhnmk->bnhk", beta, mu_t)
    if sigma is None:
        return mean, None
    sig_t = pr.einsum("bhnmkl,bmhlp,bhnmqp->bhnmkq", omega, sigma, omega)
    second = pr.einsum("bhnm,bhnmkl->bnhkl", beta, sig_t + mu_t[..., :, None] * mu_t[..., None, :])
    return mean, second - mean[..., :, None] * mean[..., None, :]


def aggregate_diagonal(
    beta: Float[Array, "B h N M"], mu_t: Float[Array, "B h N M d"], var_t: Float[Array, "B h N M d"]
) -> tuple[Float[Array, "B N h d"], Float[Array, "B N h d"]]:
    """Diagonal variant: ``m = Σ β μ̃`` and ``s = Σ β (σ̃ + μ̃²) - m²``."""
    mean = pr.einsum("bhnm,bhnmk->bnhk", beta, mu_t)
    second = pr.einsum("bhnm,bhnmk->bnhk", beta, var_t + mu_t**2)
    return mean, second - mean**2
