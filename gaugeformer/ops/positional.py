"""Positional gauge frames: the sinusoidal table and composition of token and positional frames.

``compose(φ, φ_pos, "exact")`` is ``log(exp([φ]×) exp([φ_pos]×))``; because every irrep is a homomorphism with
the same coordinates, the composed φ is valid for all heads (ref-architecture §1.3, §2.1).
"""

from typing import Literal

import jax.numpy as jnp
import numpy as np

from gaugeformer.axes import Array, Float
from gaugeformer.ops.precision import matmul
from gaugeformer.ops.transport import so3_exp

Composition = Literal["none", "add", "exact"]
LogMap = Literal["reference", "stable"]


def sinusoidal_table(max_len: int, dim: int, scale: float) -> np.ndarray:
    """``scale·sin(p·10000^(-c/dim))`` for even c, ``scale·cos(…)`` for odd c (exponent uses c itself)."""
    p = np.arange(max_len, dtype=np.float32)[:, None]
    c = np.arange(dim, dtype=np.float32)[None, :]
    ang = p * np.power(np.float32(10000.0), -c / np.float32(dim))
    return (scale * np.where(np.arange(dim) % 2 == 0, np.sin(ang), np.cos(ang))).astype(np.float32)


# hat(v) = Σ_a v_a L_a: the so(3) generators of the defining representation, [L_0, L_1] = L_2
HAT_GENERATORS = np.array([[[0, 0, 0], [0, 0, -1], [0, 1, 0]],
                           [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],
                           [[0, -1, 0], [1, 0, 0], [0, 0, 0]]], np.float32)


def hat(v: Float[Array, "*b 3"]) -> Float[Array, "*b 3 3"]:
    """``[v]× = [[0, -v2, v1], [v2, 0, -v0], [-v1, v0, 0]]``."""
    z = jnp.zeros_like(v[..., 0])
    return jnp.stack(
        [
            jnp.stack([z, -v[..., 2], v[..., 1]], -1),
            jnp.stack([v[..., 2], z, -v[..., 0]], -1),
            jnp.stack([-v[..., 1], v[..., 0], z], -1),
        ],
        -2,
    )


def so3_log(r: Float[Array, "*b 3 3"], kind: LogMap = "stable") -> Float[Array, "*b 3"]:
    """Rotation matrix -> rotation vector.

    * ``"reference"``: ``θ = acos(clamp((tr R - 1)/2, -1+1e-8, 1-1e-8))`` and ``θ/(2 sin θ + 1e-8)``, exactly as
      the reference; in float32 the upper clamp is 1.0, so its gradient is NaN at the identity.
    * ``"stable"``: ``θ = atan2(|v|/2, (tr R - 1)/2)`` with a series for ``θ/(2 sin θ)`` near 0; finite
      gradients everywhere except θ = π.
    """
    v = jnp.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1)
    cos = (jnp.trace(r, axis1=-2, axis2=-1) - 1.0) / 2.0
    if kind == "reference":
        theta = jnp.arccos(jnp.clip(cos, -1.0 + 1e-8, 1.0 - 1e-8))
        coeff = jnp.where(theta < 1e-8, 0.5 + theta**2 / 12.0, theta / (2.0 * jnp.sin(theta) + 1e-8))
        return coeff[..., None] * v
    if kind == "stable":
        sin2 = jnp.sum(v * v, -1)  # (2 sin θ)^2
        small = (sin2 < 1e-8) & (cos > 0)  # near θ = 0; θ ≈ π is ill-conditioned for any log map
        sin = 0.5 * jnp.sqrt(jnp.where(small, 1.0, sin2))
        theta = jnp.arctan2(sin, cos)
        coeff = jnp.where(small, 0.5 + (1.0 - cos) / 6.0, theta / (2.0 * sin))
        return coeff[..., None] * v
    raise ValueError(f"unknown so3 log map {kind!r}; expected 'reference' or 'stable'")


def compose(
    phi: Float[Array, "B N 3"],
    phi_pos: Float[Array, "N 3"],
    mode: Composition,
    log_map: LogMap = "stable",
) -> Float[Array, "B N 3"]:
    """Compose token frames with positional frames (``none`` returns φ unchanged)."""
    if mode == "none":
        return phi
    if mode == "add":
        return phi + phi_pos
    if mode == "exact":
        rot = matmul(so3_exp(phi, HAT_GENERATORS)[0], so3_exp(phi_pos, HAT_GENERATORS)[0][None])
        return so3_log(rot, log_map)
    raise ValueError(f"unknown composition {mode!r}; expected 'none', 'add' or 'exact'")
