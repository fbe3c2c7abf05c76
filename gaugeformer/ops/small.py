"""Products of many tiny matrices (d ≤ 11), written as broadcast-and-sum.

XLA's CPU backend lowers a batched ``dot_general`` of tiny matrices to a loop over the batch: ~15 ms for
9216 products of 5×5 matrices on the development CPU, against ~0.9 ms for the same products as an
elementwise multiply and a reduction, which vectorises.  Use these for per-token ``[..., d, d]`` algebra;
keep ``einsum``/``@`` for the pairwise GEMMs, where the contraction is long.

For the same reason the Cholesky factor and the triangular inverse are unrolled over their ``d(d+1)/2``
entries: elementwise ops over the whole batch, which XLA fuses into a few loops, where ``jnp.linalg.cholesky``
and ``solve_triangular`` call LAPACK once per matrix, and their derivatives are batched tiny ``dot_general``s
again.  In config A's training step that replaced ~22 % of the time (README "Performance").
"""

import jax
import jax.numpy as jnp
import numpy as np

from gaugeformer.axes import Array, Float


def mm(a: Float[Array, "*#b i k"], b: Float[Array, "*#b k j"]) -> Float[Array, "*#b i j"]:
    """``a @ b`` for batches of small matrices."""
    return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def mv(a: Float[Array, "*#b i k"], x: Float[Array, "*#b k"]) -> Float[Array, "*#b i"]:
    """``a @ x`` for batches of small matrices and vectors."""
    return jnp.sum(a * x[..., None, :], axis=-1)


def mtv(a: Float[Array, "*#b k i"], x: Float[Array, "*#b k"]) -> Float[Array, "*#b i"]:
    """``aᵀ @ x``."""
    return jnp.sum(a * x[..., :, None], axis=-2)


@jax.custom_jvp
def cholesky(a: Float[Array, "*#b d d"]) -> Float[Array, "*#b d d"]:
    """Lower Cholesky factor of ``(A + Aᵀ)/2`` (Cholesky–Banachiewicz, row by row), unrolled.

    Symmetrises its input like ``jnp.linalg.cholesky`` (so the gradient is symmetric).  A matrix that is not
    positive definite gives NaN entries from its first non-positive pivot on (``jnp.linalg.cholesky`` fills
    the whole factor with NaN).  The derivative is the closed form ``dL = L Φ(L⁻¹ dA L⁻ᵀ)`` (Φ: lower
    triangle, halved diagonal), written with these products, so the backward never transposes the unrolled
    entries (d² slices, each a full-size pad).
    """
    a = 0.5 * (a + t(a))
    d = a.shape[-1]
    rows: list[list] = []
    for i in range(d):
        row = []
        for j in range(i + 1):
            other = row if j == i else rows[j]
            s = _sum_k([a[..., i, j]] + [-(row[k] * other[k]) for k in range(j)])
            row.append(jnp.sqrt(s) if i == j else s / other[j])
        rows.append(row)
    return _assemble_lower(rows, a)


@cholesky.defjvp
def _cholesky_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    chol = cholesky(a)
    linv = tri_inverse(chol)
    x = sandwich(linv, 0.5 * (da + t(da)))
    d = a.shape[-1]
    phi = x * jnp.asarray(np.tril(np.ones((d, d))) - 0.5 * np.eye(d), a.dtype)
    return chol, mm(chol, phi)


@jax.custom_jvp
def tri_inverse(chol: Float[Array, "*#b d d"]) -> Float[Array, "*#b d d"]:
    """``L⁻¹`` of lower-triangular matrices by forward substitution, unrolled (reads the lower triangle).

    Derivative ``d(L⁻¹) = -L⁻¹ dL L⁻¹`` (lower triangle of ``dL``)."""
    d = chol.shape[-1]
    diag_inv = [1.0 / chol[..., i, i] for i in range(d)]
    cols: list[dict] = []  # cols[j][i] = (L⁻¹)_ij, i ≥ j
    for j in range(d):
        col = {j: diag_inv[j]}
        for i in range(j + 1, d):
            col[i] = -_sum_k([chol[..., i, k] * col[k] for k in range(j, i)]) * diag_inv[i]
        cols.append(col)
    return _assemble_lower([[cols[j][i] for j in range(i + 1)] for i in range(d)], chol)


@tri_inverse.defjvp
def _tri_inverse_jvp(primals, tangents):
    (chol,), (dchol,) = primals, tangents
    linv = tri_inverse(chol)
    return linv, -mm(mm(linv, jnp.tril(dchol)), linv)


@jax.custom_jvp
def inverse(a: Float[Array, "*#b d d"]) -> Float[Array, "*#b d d"]:
    """``a⁻¹`` of general small matrices (LAPACK's pivoted LU, per matrix), with the derivative
    ``-a⁻¹ da a⁻¹`` as two of these products (``jnp.linalg.inv``'s own is batched tiny ``dot_general``s)."""
    return jnp.linalg.inv(a)


@inverse.defjvp
def _inverse_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    inv = inverse(a)
    return inv, -mm(mm(inv, da), inv)


def _assemble_lower(rows: list[list], like: Array) -> Array:
    zero = jnp.zeros_like(like[..., 0, 0])
    d = len(rows)
    return jnp.stack([jnp.stack(row + [zero] * (d - len(row)), axis=-1) for row in rows], axis=-2)


def t(a: Float[Array, "*#b i j"]) -> Float[Array, "*#b j i"]:
    return jnp.swapaxes(a, -1, -2)


def sandwich(a: Float[Array, "*#b i k"], s: Float[Array, "*#b k k"]) -> Float[Array, "*#b i i"]:
    """``a s aᵀ``."""
    return mm(mm(a, s), t(a))


def _sum_k(terms):
    """Sum of a contraction's terms, left to right, as elementwise adds."""
    it = iter(terms)
    out = next(it)
    for term in it:
        out = out + term
    return out
