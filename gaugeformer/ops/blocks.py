"""Moving beliefs between the flat K-channel layout and a padded per-head layout.

Every covariance in the model is block-diagonal over heads (embedding, attention output and the VFE update
all preserve that, ref-architecture §4.1/§5), so the model carries beliefs per head, padded to the largest
head dimension ``D``:

* ``mu``    ``[B, N, K]``     <->  ``[B, N, H, D]``     (padding slots hold 0)
* ``sigma`` ``[B, N, K, K]``  <->  ``[B, N, H, D, D]``  (padding block holds the identity)

Padding is exact, not approximate: a padding coordinate has zero generator (so every transport is the
identity on it), zero mean and unit variance in *every* token, so its contribution to any KL between two
beliefs is ``KL(N(0,1) ‖ N(0,1)) = 0`` and it never mixes with real coordinates.  One padded tensor instead
of one tensor per head dimension keeps the compiled program small (one code path for all heads).
"""

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from gaugeformer.axes import Array, Float
from gaugeformer.ops import so3
from gaugeformer.ops.so3 import HeadLayout


@dataclasses.dataclass(frozen=True)
class Padding:
    """Index tables of the padded layout.

    Attributes:
      dim: D, the largest head dimension.
      index: ``(H, D)`` channel of each padded slot, ``K`` (a sentinel) for padding slots.
      valid: ``(H, D)`` True on real slots.
      flat: ``(K,)`` position of channel k in the flattened ``(H*D)`` layout.
      ls: ``(H,)`` irrep degree of each head.
    """

    dim: int
    index: np.ndarray
    valid: np.ndarray
    flat: np.ndarray
    ls: np.ndarray


@functools.cache
def padding(layout: HeadLayout) -> Padding:
    d = max(layout.dims)
    h = layout.n_heads
    index = np.full((h, d), layout.embed_dim, np.int32)
    for head, (off, dim) in enumerate(zip(layout.offsets, layout.dims)):
        index[head, :dim] = np.arange(off, off + dim)
    valid = index < layout.embed_dim
    flat = np.empty(layout.embed_dim, np.int32)
    flat[index[valid]] = np.flatnonzero(valid.ravel())
    return Padding(d, index, valid, flat, np.asarray(layout.ls, np.int32))


def split_mu(mu: Float[Array, "*b K"], layout: HeadLayout) -> Float[Array, "*b H D"]:
    p = padding(layout)
    ext = jnp.concatenate([mu, jnp.zeros((*mu.shape[:-1], 1), mu.dtype)], axis=-1)
    return ext[..., p.index]


def merge_mu(x: Float[Array, "*b H D"], layout: HeadLayout) -> Float[Array, "*b K"]:
    return x.reshape(*x.shape[:-2], -1)[..., padding(layout).flat]


def split_variances(var: Float[Array, "*b K"], layout: HeadLayout) -> Float[Array, "*b H D"]:
    """Like :func:`split_mu` but padding slots hold 1 (unit variance)."""
    p = padding(layout)
    ext = jnp.concatenate([var, jnp.ones((*var.shape[:-1], 1), var.dtype)], axis=-1)
    return ext[..., p.index]


@functools.cache
def _scatter_tables(layout: HeadLayout):
    p = padding(layout)
    # int32 like every other index table: a cached int64 table indexes differently with and without x64
    hs, r, c = (x.astype(np.int32) for x in np.nonzero(p.valid[:, :, None] & p.valid[:, None, :]))
    return hs, r, c, p.index[hs, r], p.index[hs, c]


def merge_sigma(x: Float[Array, "*b H D D"], layout: HeadLayout) -> Float[Array, "*b K K"]:
    hs, r, c, rows, cols = _scatter_tables(layout)
    k = layout.embed_dim
    out = jnp.zeros((*x.shape[:-3], k, k), x.dtype)
    return out.at[..., rows, cols].set(x[..., hs, r, c])


def split_sigma(x: Float[Array, "*b K K"], layout: HeadLayout) -> Float[Array, "*b H D D"]:
    """Inverse of :func:`merge_sigma` on block-diagonal covariances (padding blocks hold the identity)."""
    p = padding(layout)
    pad = [(0, 0)] * (x.ndim - 2) + [(0, 1), (0, 1)]
    ext = jnp.pad(x, pad)
    return impose(ext[..., p.index[:, :, None], p.index[:, None, :]], layout)


def impose(sigma: Float[Array, "*b H D D"], layout: HeadLayout) -> Float[Array, "*b H D D"]:
    """Reset the padding block of covariances to the identity (real blocks untouched)."""
    p = padding(layout)
    pair = p.valid[:, :, None] & p.valid[:, None, :]
    return jnp.where(pair, sigma, np.eye(p.dim, dtype=np.float32))


def impose_variances(var: Float[Array, "*b H D"], layout: HeadLayout) -> Float[Array, "*b H D"]:
    return jnp.where(padding(layout).valid, var, 1.0)


def diag_to_full(var: Float[Array, "*b H D"]) -> Float[Array, "*b H D D"]:
    return var[..., :, None] * jnp.eye(var.shape[-1], dtype=var.dtype)


@functools.cache
def _generators(layout: HeadLayout, basis: str) -> np.ndarray:
    p = padding(layout)
    out = np.zeros((layout.n_heads, 3, p.dim, p.dim), np.float32)
    for head, dim in enumerate(layout.dims):
        out[head, :, :dim, :dim] = so3.generators(dim, basis)
    return out


def generators(layout: HeadLayout, basis: str) -> np.ndarray:
    """Per-head generators ``(H, 3, D, D)`` float32, zero on padding."""
    return _generators(layout, basis).copy()
