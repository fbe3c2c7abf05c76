"""Exponential maps so(3) -> GL(d) and the factorised transport Ω_ij = E_i F_j.

Two exponentials, both LAPACK-free (ecosystem §0.1: batched LU inside XLA can deadlock on CPU):

* :func:`taylor4` — the reference attention's 4th-order Taylor polynomial, accumulated in the reference's
  order (``t = t @ A / n; R = R + t``).  Needed for parity; *not* orthogonal for ``l·|φ| ≳ 1``.
* :func:`expm` — scaling and squaring with a degree-14 Taylor core and a per-matrix number of squarings
  (so small matrices are not squared at all).  Agrees with float64 ``scipy.linalg.expm`` to ~1e-6 in
  float32 up to ``l·|φ| = 16``; differentiable everywhere.

The transport between query i and key j is never materialised per pair: ``Ω_ij = E_i F_j`` with
``E_i = exp(φ_i·G)`` and ``F_j = exp(-φ_j·G)`` (factorized-attention.md §1).
"""

from typing import Literal

import jax
import jax.numpy as jnp

from gaugeformer.axes import Array, Float
from gaugeformer.ops import precision as pr
from gaugeformer.ops.small import mm

Exponential = Literal["taylor4", "exact"]

_TAYLOR_DEGREE = 14
_MAX_SQUARINGS = 12  # handles ||A||_F up to 2**12 without loss; beyond that exp() is meaningless anyway


def algebra_to_matrix(phi: Float[Array, "*batch 3"], gens: Float[Array, "*g 3 d d"]) -> Array:
    """``φ·G = Σ_a φ_a G_a``.  With per-head generators ``[H, 3, D, D]`` the result is ``[*batch, H, D, D]``."""
    if gens.ndim == 3:
        return pr.einsum("...a,aij->...ij", phi, gens)
    return pr.einsum("...a,haij->...hij", phi, gens)


def taylor4(a: Float[Array, "*batch d d"]) -> Float[Array, "*batch d d"]:
    """``I + A + A²/2 + A³/6 + A⁴/24``, summed exactly as the reference does."""
    eye = jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)
    r, t = eye, eye
    for n in range(1, 5):
        t = mm(t, a) / n
        r = r + t
    return r


def expm(a: Float[Array, "*batch d d"]) -> Float[Array, "*batch d d"]:
    """Matrix exponential by scaling and squaring (no LAPACK), for small d.

    Each matrix is scaled by ``2^-s`` with ``s = max(0, ceil(log2 ||A||_F))`` so the Taylor core sees a norm
    ≤ 1 (truncation error < 1e-12), then squared ``s`` times; matrices needing fewer squarings pass through
    the remaining iterations unchanged.
    """
    norm = jnp.sqrt(jnp.sum(a * a, axis=(-2, -1)))
    s = jnp.clip(jnp.ceil(jnp.log2(jnp.maximum(norm, 1.0))), 0, _MAX_SQUARINGS)
    scaled = a * jnp.exp2(-s)[..., None, None]
    eye = jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)
    # Horner: I + A/1 (I + A/2 (I + ...)); loops keep the compiled graph small (they lower to scans)
    x = jax.lax.fori_loop(0, _TAYLOR_DEGREE, lambda i, x: eye + mm(scaled, x) / (_TAYLOR_DEGREE - i), eye)
    sq = s[..., None, None]
    return jax.lax.fori_loop(0, _MAX_SQUARINGS, lambda k, x: jnp.where(k < sq, mm(x, x), x), x)


def exponential(a: Float[Array, "*batch d d"], kind: Exponential) -> Float[Array, "*batch d d"]:
    """Dispatch on the transport kind: ``"taylor4"`` (reference attention) or ``"exact"``."""
    if kind == "taylor4":
        return taylor4(a)
    if kind == "exact":
        return expm(a)
    raise ValueError(f"unknown exponential {kind!r}; expected 'taylor4' or 'exact'")


def frames(phi: Float[Array, "*batch 3"], gens: Array, kind: Exponential) -> tuple[Array, Array]:
    """Per-token transport factors ``(E, F) = (exp(φ·G), exp(-φ·G))`` so that ``Ω_ij = E_i F_j``.

    ``gens`` is ``[3, d, d]`` or per head ``[H, 3, D, D]`` (then E, F are ``[*batch, H, D, D]``).
    """
    a = algebra_to_matrix(phi, gens)
    return exponential(a, kind), exponential(-a, kind)
