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

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from gaugeformer.axes import Array, Bool, Float
from gaugeformer.ops import gaussian as gs
from gaugeformer.ops import precision as pr
from gaugeformer.ops import small as sm

# ----------------------------------------------------------------------------------------------
# KL
# ----------------------------------------------------------------------------------------------


def kl_factorized(
    mu: Float[Array, "B N h d"],
    sigma: Float[Array, "B N h d d"],
    e: Float[Array, "B N h d d"],
    f: Float[Array, "B N h d d"],
    e_logabsdet: Float[Array, "B N h"] | None,
    eps: float,
    eps_log: float,
) -> Float[Array, "B h N M"]:
    """``KL(q_i ‖ Ω_ij q_j)`` for all pairs, factorized.

    ``e_logabsdet`` is ``log|det E_i|`` (None: E is orthogonal, so ``E⁻¹ = F`` and the term is 0).
    The quadratic form is expanded around the first key ``c`` (per batch and head) so the three GEMM terms stay
    small when all beliefs are close (the trained regime, KL ~ 1e-3).
    """
    d = mu.shape[-1]
    # key side
    s = sm.sandwich(f, sigma)  # [B,M,h,d,d]
    chol_s = jnp.linalg.cholesky(gs.add_eye(s, eps))
    p = gs.spd_inverse(chol_s)
    ld_key = gs.chol_logdet(chol_s, eps_log)  # [B,M,h]
    b = sm.mv(f, mu)
    # query side
    q = gs.add_eye(sigma, eps)
    ld_query = gs.chol_logdet(jnp.linalg.cholesky(q), eps_log)  # [B,N,h]
    einv = f if e_logabsdet is None else jnp.linalg.inv(e)
    a = sm.mv(einv, mu)
    sigma_hat = sm.sandwich(einv, q)
    # expanded Mahalanobis term, centred on the first key (visible to every query, so causality holds
    # exactly; a constant for autodiff, the value does not depend on it)
    c = jax.lax.stop_gradient(b[:, :1])
    a, b = a - c, b - c
    pb = sm.mv(p, b)
    quad_a = pr.einsum("bnhkl,bmhkl->bhnm", a[..., :, None] * a[..., None, :], p)
    cross = pr.einsum("bnhk,bmhk->bhnm", a, pb)
    quad_b = pr.einsum("bmhk,bmhk->bhm", b, pb)[:, :, None, :]
    trace = pr.einsum("bnhkl,bmhkl->bhnm", sigma_hat, p)
    logdet = ld_key.transpose(0, 2, 1)[:, :, None, :] - ld_query.transpose(0, 2, 1)[..., None]
    if e_logabsdet is not None:
        logdet = logdet + 2.0 * e_logabsdet.transpose(0, 2, 1)[..., None]
    kl = 0.5 * (trace + quad_a - 2.0 * cross + quad_b - d + logdet)
    return jnp.maximum(kl, 0.0)


def kl_direct(
    mu: Float[Array, "B N h d"],
    sigma: Float[Array, "B N h d d"],
    e: Float[Array, "B N h d d"],
    f: Float[Array, "B N h d d"],
    eps: float,
    eps_log: float,
) -> Float[Array, "B h N M"]:
    """The reference's per-pair KL (ref-architecture §4.2): materialises Ω_ij and a Cholesky per pair."""
    d = mu.shape[-1]
    omega = pr.einsum("bnhkl,bmhlp->bhnmkp", e, f)
    mu_t = pr.einsum("bhnmkl,bmhl->bhnmk", omega, mu)
    sig_t = pr.einsum("bhnmkl,bmhlp,bhnmqp->bhnmkq", omega, sigma, omega)
    chol_a = jnp.linalg.cholesky(gs.add_eye(sig_t, eps))
    chol_q = jnp.linalg.cholesky(gs.add_eye(sigma, eps)).transpose(0, 2, 1, 3, 4)[:, :, :, None]
    chol_q = jnp.broadcast_to(chol_q, chol_a.shape)
    x = solve_triangular(chol_a, chol_q, lower=True)
    trace = jnp.sum(x * x, axis=(-2, -1))
    diff = mu_t - mu.transpose(0, 2, 1, 3)[:, :, :, None, :]
    y = solve_triangular(chol_a, diff[..., None], lower=True)[..., 0]
    mahal = jnp.sum(y * y, axis=-1)
    logdet = gs.chol_logdet(chol_a, eps_log) - gs.chol_logdet(chol_q, eps_log)
    return jnp.maximum(0.5 * (trace + mahal - d + logdet), 0.0)


def transported_variances(
    sigma: Float[Array, "B M h d"], e: Float[Array, "B N h d d"], f: Float[Array, "B M h d d"]
) -> Float[Array, "B h N M d"]:
    """``diag(Ω_ij diag(σ_j) Ω_ijᵀ)`` for every pair, as ``diag(E_i S_j E_iᵀ)`` (no Ω materialised)."""
    s = sm.mm(f * sigma[..., None, :], sm.t(f))
    return pr.einsum("bnhkx,bnhky,bmhxy->bhnmk", e, e, s)


def kl_diagonal(
    mu: Float[Array, "B N h d"],
    var: Float[Array, "B N h d"],
    e: Float[Array, "B N h d d"],
    f: Float[Array, "B N h d d"],
    floor: float = 1e-6,
) -> tuple[Float[Array, "B h N M"], Float[Array, "B h N M d"], Float[Array, "B h N M d"]]:
    """Diagonal-covariance KL (ref-architecture §4.2, diagonal path): returns ``(KL, μ̃, σ̃)``."""
    var = jnp.maximum(var, floor)
    var_t = jnp.maximum(transported_variances(var, e, f), floor)
    b = sm.mv(f, mu)
    mu_t = pr.einsum("bnhkl,bmhl->bhnmk", e, b)
    var_i = var.transpose(0, 2, 1, 3)[:, :, :, None, :]
    mu_i = mu.transpose(0, 2, 1, 3)[:, :, :, None, :]
    kl = 0.5 * jnp.sum(
        var_i / var_t + (mu_t - mu_i) ** 2 / var_t - 1.0 + jnp.log(var_t) - jnp.log(var_i), axis=-1
    )
    return jnp.maximum(kl, 0.0), mu_t, var_t


# ----------------------------------------------------------------------------------------------
# logits and weights
# ----------------------------------------------------------------------------------------------


def attention_logits(
    kl: Float[Array, "B h N M"],
    kappa: float,
    mask: Bool[Array, "N M"],
    alibi_slope: float | None = None,
) -> Float[Array, "B h N M"]:
    """``-KL/κ (+ slope·(i - j))``, ``-inf`` where ``mask`` (see :mod:`gaugeformer.ops.masks`) is False."""
    logits = -kl / kappa
    n, m = mask.shape
    if alibi_slope:
        rel = np.arange(n)[:, None] - np.arange(m)[None, :]
        logits = logits + alibi_slope * rel.astype(np.float32)
    return jnp.where(jnp.asarray(mask), logits, -jnp.inf)


def attention_weights(logits: Float[Array, "B h N M"], floor: float | None) -> Float[Array, "B h N M"]:
    """Softmax over keys; ``floor`` (the reference's 1e-8 / 1e-6) clamps every entry from below, which lets
    masked future keys leak in.  ``floor=None`` keeps masked weights exactly 0."""
    beta = jax.nn.softmax(logits, axis=-1)
    return beta if floor is None else jnp.maximum(beta, floor)


# ----------------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------------


def aggregate_factorized(
    beta: Float[Array, "B h N M"],
    mu: Float[Array, "B M h d"],
    sigma: Float[Array, "B M h d d"] | None,
    e: Float[Array, "B N h d d"],
    f: Float[Array, "B M h d d"],
) -> tuple[Float[Array, "B N h d"], Float[Array, "B N h d d"] | None]:
    """``m_i = Σ_j β_ij Ω_ij μ_j`` and the moment-matched mixture covariance (factorized-attention §2).

    ``S_i = Σ_j β_ij (Ω Σ_j Ωᵀ + μ̃ μ̃ᵀ) - m_i m_iᵀ`` is formed as ``E_i [Σ_j β_ij S_j + C_i] E_iᵀ`` where the
    scatter ``C_i = Σ_j β_ij b_j b_jᵀ - (Σ_j β_ij b_j)(Σ_j β_ij b_j)ᵀ`` is computed around the mean key ``c``
    (``b_j - c`` with ``c`` the first key, which every query sees), so large common means do not cancel.  The row sum ``r_i = Σ_j β_ij``
    (``1 + #masked·floor`` in the reference) is accounted for exactly.
    """
    b = sm.mv(f, mu)
    beta_b = pr.einsum("bhnm,bmhk->bnhk", beta, b)
    mean = sm.mv(e, beta_b)
    if sigma is None:
        return mean, None
    s = sm.sandwich(f, sigma)
    c = jax.lax.stop_gradient(b[:, :1])
    bc = b - c
    r = jnp.sum(beta, axis=-1).transpose(0, 2, 1)[..., None, None]  # [B,N,h,1,1]
    u = pr.einsum("bhnm,bmhk->bnhk", beta, bc)
    inner = (
        pr.einsum("bhnm,bmhkl->bnhkl", beta, s + bc[..., :, None] * bc[..., None, :])
        - u[..., :, None] * u[..., None, :] / r
        + (1.0 - r) / r * beta_b[..., :, None] * beta_b[..., None, :]
    )
    cov = sm.sandwich(e, inner)
    return mean, cov


def aggregate_direct(
    beta: Float[Array, "B h N M"],
    mu: Float[Array, "B M h d"],
    sigma: Float[Array, "B M h d d"] | None,
    e: Float[Array, "B N h d d"],
    f: Float[Array, "B M h d d"],
) -> tuple[Float[Array, "B N h d"], Float[Array, "B N h d d"] | None]:
    """The reference's per-pair aggregation (ref-architecture §5), for tests."""
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
