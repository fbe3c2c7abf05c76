"""Gaussian pieces shared by the attention and the VFE FFN: regularised Cholesky log-dets, SPD inverses,
and the closed-form log|det| of the Taylor-4 transport.

Conventions follow the reference (ref-architecture §4.2): ``eps`` is added to a covariance before any
Cholesky, and the reference also adds ``eps_log`` *inside* ``log(diag L)`` (a biased log-det).  The clean
profile sets ``eps_log = 0``.
"""

import jax.numpy as jnp
import numpy as np

from gaugeformer.axes import Array, Float
from gaugeformer.ops.small import mm, tri_inverse


def add_eye(a: Float[Array, "*b d d"], eps: float) -> Float[Array, "*b d d"]:
    return a + eps * jnp.eye(a.shape[-1], dtype=a.dtype)


def chol_logdet(
    chol: Float[Array, "*b d d"], eps_log: float = 0.0
) -> Float[Array, "*b"]:
    """``2 Σ_k log(L_kk + eps_log)`` from a lower Cholesky factor."""
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1) + eps_log), axis=-1)


def spd_inverse(chol: Float[Array, "*b d d"]) -> Float[Array, "*b d d"]:
    """``(L Lᵀ)⁻¹ = L⁻ᵀ L⁻¹``."""
    linv = tri_inverse(chol)
    return mm(jnp.swapaxes(linv, -1, -2), linv)


def sym(a: Float[Array, "*b d d"]) -> Float[Array, "*b d d"]:
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def taylor4_logabsdet(phi_norm: Float[Array, "*b"], ls) -> Array:
    """``log|det T4(φ·G_l)|`` in closed form, for one degree ``l`` or per head (``ls`` of shape ``(H,)``,
    result ``[*b, H]``).

    ``φ·G_l`` is normal with eigenvalues ``i m |φ|`` (m = -l..l), so ``det T4 = Π_m t4(i m |φ|)`` with
    ``|t4(iθ)|² = (1 - θ²/2 + θ⁴/24)² + (θ - θ³/6)²``.  For the exact exponential the result is 0.
    """
    ls = np.asarray(ls)
    norm = phi_norm[..., None] if ls.ndim else phi_norm
    total = jnp.zeros_like(norm)
    for m in range(1, int(ls.max()) + 1 if ls.size else 1):  # ±m contribute equally; m = 0 gives 0
        t = m * norm
        t2 = t * t
        re = 1.0 - t2 / 2.0 + t2 * t2 / 24.0
        im = t - t * t2 / 6.0
        total = total + jnp.where(m <= ls, jnp.log(re * re + im * im), 0.0)
    return total
