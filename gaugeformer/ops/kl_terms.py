"""The attention KL split into its trace, Mahalanobis and log-det terms, per head, and the spread of a head's
beliefs across tokens (issue 14: why is a head uniform?).

For one head of dimension ``d`` (factorized-attention.md §1, the model's :func:`~gaugeformer.ops.attention.
kl_factorized`), with ``P_j = (F_j (Σ_j + εI) F_jᵀ)⁻¹``, ``b_j = F_j μ_j``, ``a_i = E_i⁻¹ μ_i`` and
``Σ̂_i = E_i⁻¹ (Σ_i + εI) E_i⁻ᵀ``::

    KL_ij = ½ (tr(Σ̂_i P_j) - d)                      trace        (shape mismatch of the covariances)
          + ½ (a_i - b_j)ᵀ P_j (a_i - b_j)            mahalanobis  (mean mismatch)
          + ½ (log|Σ_j|_F - log|Σ_i| + 2 log|det E_i|) logdet      (volume mismatch)

so that ``trace + mahalanobis + logdet`` is the model's KL before its clamp at 0 (``hook_kl = max(sum, 0)``).
With exact transport (``E_i⁻¹ = F_i``) every term depends on the beliefs only through their *pulled-back*
forms ``F_i μ_i`` and ``F_i Σ_i F_iᵀ``: a head whose pulled-back beliefs are equal for every token has KL ≡ 0
whatever its raw ``μ_i`` (pure-gauge beliefs ``μ_i = R(φ_i) μ₀`` are an example).  :func:`belief_spread`
measures both spreads.

All functions are pure and per group of equal-dimension heads (``[B, N, h, d]``), like
:mod:`gaugeformer.ops.attention`; the model's padded layout (``h = H``, ``d = D``) is one such group, padding
slots contributing exactly 0 to every term.
"""

import jax.numpy as jnp

from gaugeformer.axes import Array, Bool, Float
from gaugeformer.ops import attention as att
from gaugeformer.ops import small as sm

TERMS = ("trace", "mahalanobis", "logdet")


def kl_terms(
    mu: Float[Array, "B N h d"],
    sigma: Float[Array, "B N h d d"],
    e: Float[Array, "B N h d d"],
    f: Float[Array, "B N h d d"],
    e_logabsdet: Float[Array, "B N h"] | None,
    eps: float,
    eps_log: float,
) -> dict[str, Float[Array, "B h N M"]]:
    """``{"trace", "mahalanobis", "logdet"}``, each ``[B, h, N, M]``, summing to the unclamped KL.

    Same conventions as :func:`~gaugeformer.ops.attention.kl_factorized` (``εI`` on the key's transported
    covariance taken as ``F (Σ + εI) Fᵀ``, the Mahalanobis form expanded around the first key), so the sum
    reproduces the model's ``hook_kl`` to rounding.  ``e_logabsdet`` is ``log|det E_i|`` (None: orthogonal
    ``E``, ``E⁻¹ = F``).
    """
    return att.kl_pair_terms(*att.kl_features(mu, sigma, e, f, e_logabsdet, eps, eps_log))


def kl_from_terms(terms: dict[str, Float[Array, "B h N M"]]) -> Float[Array, "B h N M"]:
    """The model's KL from its terms: ``max(trace + mahalanobis + logdet, 0)``."""
    return jnp.maximum(terms["trace"] + terms["mahalanobis"] + terms["logdet"], 0.0)


def pulled_back(
    mu: Float[Array, "B N h d"], sigma: Float[Array, "B N h d d"], f: Float[Array, "B N h d d"]
) -> tuple[Float[Array, "B N h d"], Float[Array, "B N h d d"]]:
    """``(F_i μ_i, F_i Σ_i F_iᵀ)``: each token's belief expressed in the common (identity) frame."""
    return sm.mv(f, mu), sm.sandwich(f, sigma)


def belief_spread(
    mu: Float[Array, "B N h d"], sigma: Float[Array, "B N h d d"], valid: Bool[Array, "h d"]
) -> dict[str, Float[Array, "h"]]:
    """Spread of each head's beliefs across the tokens of a sequence, averaged over the batch.

    ``mu_std = sqrt(mean_i ‖μ_i - μ̄‖²)`` (the RMS distance to the sequence mean, over the head's real
    coordinates), ``sigma_std`` the same for Σ in the Frobenius norm, and their scales ``mu_rms =
    sqrt(mean_i ‖μ_i‖²)``, ``sigma_rms`` for comparison.
    """
    w = jnp.asarray(valid, mu.dtype)
    ww = w[:, :, None] * w[:, None, :]
    dmu = (mu - mu.mean(1, keepdims=True)) * w
    dsig = (sigma - sigma.mean(1, keepdims=True)) * ww
    return {
        "mu_std": jnp.sqrt(jnp.mean(jnp.sum(dmu**2, -1), axis=1)).mean(0),
        "mu_rms": jnp.sqrt(jnp.mean(jnp.sum((mu * w) ** 2, -1), axis=1)).mean(0),
        "sigma_std": jnp.sqrt(jnp.mean(jnp.sum(dsig**2, (-2, -1)), axis=1)).mean(0),
        "sigma_rms": jnp.sqrt(jnp.mean(jnp.sum((sigma * ww) ** 2, (-2, -1)), axis=1)).mean(0),
    }

