"""Exponential maps so(3) -> GL(d) and the factorised transport Ω_ij = E_i F_j.

Two exponentials, both LAPACK-free (ecosystem §0.1: batched LU inside XLA can deadlock on CPU):

* :func:`taylor4` — the reference attention's 4th-order Taylor polynomial, accumulated in the reference's
  order (``t = t @ A / n; R = R + t``).  Needed for parity; *not* orthogonal for ``l·|φ| ≳ 1``.
* :func:`so3_exp` — ``exp(φ·G)`` for so(3) irrep generators in closed form (Curtright–Fairlie–Zachos): a
  polynomial of degree 2l in ``φ·G`` with coefficients that are powers of ``sin(θ/2)``, ``θ = |φ|``.  Three
  small products for l ≤ 2, no loop, and ``exp(-φ·G)`` from the same products.  The model's exact
  exponential.
* :func:`expm` — scaling and squaring with a degree-14 Taylor core and a per-matrix number of squarings
  (so small matrices are not squared at all), for matrices that are not so(3) irrep generators.  Agrees with
  float64 ``scipy.linalg.expm`` to ~1e-6 in float32 up to ``l·|φ| = 16``; differentiable everywhere.

The transport between query i and key j is never materialised per pair: ``Ω_ij = E_i F_j`` with
``E_i = exp(φ_i·G)`` and ``F_j = exp(-φ_j·G)`` (factorized-attention.md §1).
"""

from typing import Literal

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

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


def so3_exp(phi: Float[Array, "*batch 3"], gens: np.ndarray | Array, signs: tuple[int, ...] = (1,)
            ) -> tuple[Array, ...]:
    """``exp(s φ·G)`` for each sign ``s`` in ``signs``, for so(3) generators ``gens`` (``[3, d, d]`` or per head
    ``[H, 3, D, D]``, zero-padded), in closed form; falls back to :func:`expm` for other matrices.

    With ``θ = |φ|`` and ``Â = φ·G / θ`` (eigenvalues ``i m``, ``|m| ≤ l``), the exponential is the
    interpolating polynomial on the Newton-like basis ``Â^k Π_{j<m}(Â² + j²)`` (Curtright, Fairlie & Zachos,
    SIGMA 10 (2014) 084)::

        exp(θÂ) = I + Σ_{m=1..l} (2 sin(θ/2))^{2m-1} cos(θ/2) / (2m-1)! · Â Q_{m-1}
                    + (2 sin(θ/2))^{2m} / (2m)! · Â² Q_{m-1},      Q_m = Π_{j=1..m} (Â² + j²).

    Written in ``A = φ·G`` and ``θ²`` (``σ = sin(θ/2)/(θ/2)``, a series near 0) nothing is divided by θ, so
    the value and its derivatives are smooth at φ = 0.  Terms with m above a head's degree vanish exactly and
    are masked.  In float64 it agrees with ``scipy.linalg.expm`` to ~1e-13 for every l.  In float32 the
    products ``Â² + j²`` cancel: measured over θ ∈ (0, 2π], the largest error is 6.5e-7 (l = 1), 1.7e-6
    (l = 2), against 5.6e-7 and 1.1e-6 for :func:`expm`, but 7.5e-6 … 3.8e-4 for l = 3 … 5; so heads of
    degree above ``CLOSED_FORM_MAX_DEGREE`` (2) use :func:`expm` (the whole tensor, one code path), and so
    does a float64 evaluation (see :func:`closed_form_exp`).
    """
    degrees = irrep_degrees(gens)
    if (degrees is None or degrees.max() > CLOSED_FORM_MAX_DEGREE
            or jnp.finfo(jnp.result_type(phi, gens)).bits > 32):
        a = algebra_to_matrix(phi, gens)
        return tuple(expm(s * a) for s in signs)
    return closed_form_exp(phi, gens, degrees, signs)


def closed_form_exp(phi: Float[Array, "*batch 3"], gens: np.ndarray, degrees: np.ndarray,
                    signs: tuple[int, ...] = (1,)) -> tuple[Array, ...]:
    """The closed form of :func:`so3_exp` (no dispatch): exact for generators whose spectrum is exactly
    ``i m``.  The model's generators are float32 values (as the reference's checkpoints store them), whose
    spectrum is off by ~1e-7; in float32 that is below rounding, but a float64 run must exponentiate the
    rounded matrix itself (as the reference's float64 run does), which is why :func:`so3_exp` uses
    :func:`expm` there (measured: the FFN's KL then moves by 1.9e-7 relative against golden64)."""
    a = algebra_to_matrix(phi, gens)
    lmax = int(degrees.max())
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    if lmax == 0:
        return tuple(jnp.broadcast_to(eye, a.shape) for _ in signs)
    x = jnp.sum(phi * phi, axis=-1)  # θ²  [*batch]
    sigma, cos = _half_angle(x)
    if degrees.ndim:  # per head: [*batch, H]
        x, sigma, cos = (v[..., None] for v in (x, sigma, cos))
    a2 = mm(a, a)
    odd, even = a, a2  # Â Q_{m-1}, Â² Q_{m-1} times θ^(2m-1), θ^(2m)
    acc_odd, acc_even = jnp.zeros_like(a), jnp.zeros_like(a)
    for m in range(1, lmax + 1):
        if m > 1:
            shift = ((m - 1) ** 2 * x)[..., None, None]
            odd, even = mm(odd, a2) + shift * odd, mm(even, a2) + shift * even
        keep = jnp.asarray(m <= degrees, a.dtype)[..., None, None]
        c_odd = (sigma ** (2 * m - 1) * cos / math.factorial(2 * m - 1))[..., None, None]
        c_even = (sigma ** (2 * m) / math.factorial(2 * m))[..., None, None]
        acc_odd = acc_odd + keep * c_odd * odd
        acc_even = acc_even + keep * c_even * even
    return tuple(eye + s * acc_odd + acc_even for s in signs)


CLOSED_FORM_MAX_DEGREE = 2
_SMALL_THETA2 = 1e-2  # θ < 0.1: series (truncation < 1e-15); above: sin / cos of θ


def _half_angle(x: Array) -> tuple[Array, Array]:
    """``(sin(θ/2)/(θ/2), cos(θ/2))`` from ``x = θ²``, smooth in x (series below θ = 0.1)."""
    small = x < _SMALL_THETA2
    theta = jnp.sqrt(jnp.where(small, 1.0, x))
    half = theta / 2.0
    sigma = jnp.where(small, 1.0 - x / 24.0 + x * x / 1920.0 - x ** 3 / 322560.0, jnp.sin(half) / half)
    cos = jnp.where(small, 1.0 - x / 8.0 + x * x / 384.0 - x ** 3 / 46080.0, jnp.cos(half))
    return sigma, cos


def irrep_degrees(gens) -> np.ndarray | None:
    """The degree l of each head (``[H]``, or a 0-d array for ``[3, d, d]``) when ``gens`` are so(3)
    generators (antisymmetric, ``[G_x, G_y] = ±G_z`` cyclically, ``G_z`` with integer spectrum ``i m``);
    None otherwise (a traced array, or matrices that are not a representation)."""
    if not isinstance(gens, np.ndarray):
        return None
    return _irrep_degrees(gens.shape, gens.dtype.str, gens.tobytes())


@functools.lru_cache(maxsize=64)
def _irrep_degrees(shape, dtype, raw) -> np.ndarray | None:
    g = np.frombuffer(raw, dtype=dtype).reshape(shape).astype(np.float64)
    heads = g if g.ndim == 4 else g[None]
    out = []
    for gx, gy, gz in heads:
        scale = max(np.abs(heads).max(), 1.0)
        antisym = all(np.allclose(m, -m.T, atol=1e-6 * scale) for m in (gx, gy, gz))
        comm = gx @ gy - gy @ gx
        rep = any(np.allclose(s * comm, gz, atol=1e-5 * scale) and
                  np.allclose(s * (gy @ gz - gz @ gy), gx, atol=1e-5 * scale) for s in (1.0, -1.0))
        ev = np.linalg.eigvals(gz)
        integer = np.allclose(ev.real, 0, atol=1e-5) and np.allclose(ev.imag, np.round(ev.imag), atol=1e-5)
        if not (antisym and rep and integer):
            return None
        out.append(int(np.round(np.abs(ev.imag).max())) if len(ev) else 0)
    return np.asarray(out if g.ndim == 4 else out[0])


def group_exp(phi: Float[Array, "*batch 3"], gens: np.ndarray, signs: tuple[int, ...] = (1,)) -> tuple[Array, ...]:
    """:func:`so3_exp` for one head group, with a head axis: generators shared by the group's heads
    (``[3, d, d]``) give ``[*batch, 1, d, d]`` (broadcasting over them), per-head ones (``[h, 3, d, d]``)
    give ``[*batch, h, d, d]``."""
    out = so3_exp(phi, gens, signs)
    return tuple(x[..., None, :, :] for x in out) if gens.ndim == 3 else out


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
    if kind == "exact":
        return so3_exp(phi, gens, signs=(1, -1))
    a = algebra_to_matrix(phi, gens)
    return exponential(a, kind), exponential(-a, kind)
