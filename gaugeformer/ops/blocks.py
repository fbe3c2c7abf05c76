"""Moving beliefs between the flat K-channel layout and a padded per-head layout.

Every covariance in the model is block-diagonal over heads (embedding, attention output and the VFE update
all preserve that, ref-architecture §4.1/§5), so the model carries beliefs per head, padded to the largest
head dimension ``D``:

* ``mu``    ``[B, N, K]``     <->  ``[B, N, H, D]``     (padding slots hold 0)
* ``sigma`` ``[B, N, K, K]``  <->  ``[B, N, H, D, D]``  (padding block holds the identity)

Padding is exact, not approximate: a padding coordinate has zero generator (so every transport is the
identity on it), zero mean and unit variance in *every* token, so its contribution to any KL between two
beliefs is ``KL(N(0,1) ‖ N(0,1)) = 0`` and it never mixes with real coordinates.

The padded layout is what the modules carry and hooks see.  The sublayers compute on **head groups**
(:func:`head_groups`: consecutive heads, ``[B, N, h, d(, d)]`` padded only to the group's own dimension):
config A's l = 2 head then costs 125 multiply-adds per per-token product and its eight other heads 27, not
all nine 125; a group whose heads have one dimension shares one transport (it depends on the degree only).
:func:`group_vectors` / :func:`group_matrices` cut the padded tensors into groups;
:func:`ungroup_vectors` / :func:`ungroup_matrices` put them back.
"""

import dataclasses
import functools

import jax
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
    """

    dim: int
    index: np.ndarray
    valid: np.ndarray
    flat: np.ndarray


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
    return Padding(d, index, valid, flat)


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


# ----------------------------------------------------------------------------------------------
# head groups
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HeadGroup:
    """Heads ``start .. stop-1`` (consecutive), padded to the group's largest dimension ``dim``.

    ``dims`` are the heads' own dimensions; a group is *uniform* when they are all ``dim``: its heads then
    share one transport (it depends on the degree only)."""

    start: int
    stop: int
    dims: tuple[int, ...]

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def dim(self) -> int:
        return max(self.dims)

    @property
    def uniform(self) -> bool:
        return min(self.dims) == self.dim

    @property
    def degrees(self) -> np.ndarray:
        return (np.asarray(self.dims) - 1) // 2

    @property
    def valid(self) -> np.ndarray:
        """``(h, dim)`` True on real slots."""
        return np.arange(self.dim)[None, :] < np.asarray(self.dims)[:, None]


@functools.cache
def head_groups(layout: HeadLayout) -> tuple[HeadGroup, ...]:
    """Runs of consecutive equal-dimension heads, with runs of scalar heads joined to the next run (or, at
    the end, the previous one), in head order: concatenating per-group ``[..., h, ...]`` results along the
    head axis gives head order.

    Each group is one copy of the per-token code in the compiled program (XLA's compile time grows with it),
    and a scalar head padded to dimension d costs d³ instead of 1 per product: joining the scalars keeps
    config A at two groups (5 scalar + 3 vector heads at d = 3, the l = 2 head at d = 5; per-token products
    341 multiply-adds against 1,125 padded to 5 and 211 in three groups) and a model of scalars and vectors
    at one.
    """
    runs, start = [], 0
    for h in range(1, layout.n_heads + 1):
        if h == layout.n_heads or layout.dims[h] != layout.dims[start]:
            runs.append(list(layout.dims[start:h]))
            start = h
    merged: list[list[int]] = []
    carry: list[int] = []
    for run in runs:
        if run[0] == 1 and run is not runs[-1]:
            carry += run
            continue
        if run[0] == 1 and merged:
            merged[-1] += run
        else:
            merged.append(carry + run)
        carry = []
    groups, start = [], 0
    for dims in merged:
        groups.append(HeadGroup(start, start + len(dims), tuple(dims)))
        start += len(dims)
    return tuple(groups)


def group_vectors(x: Float[Array, "*b H D"], layout: HeadLayout) -> list[Array]:
    """Padded ``[*b, H, D]`` -> per group ``[*b, h, d]`` (``d`` the group's dimension)."""
    return [x[..., g.start:g.stop, :g.dim] for g in head_groups(layout)]


def group_matrices(x: Float[Array, "*b H D D"], layout: HeadLayout) -> list[Array]:
    """Padded ``[*b, H, D, D]`` -> per group ``[*b, h, d, d]``."""
    return [x[..., g.start:g.stop, :g.dim, :g.dim] for g in head_groups(layout)]


def group_heads(x: Float[Array, "*b H"], layout: HeadLayout, axis: int = -1) -> list[Array]:
    """A per-head axis (``axis``) cut into groups."""
    return [jax.lax.slice_in_dim(x, g.start, g.stop, axis=axis) for g in head_groups(layout)]


def impose_groups(parts, layout: HeadLayout) -> list[Array]:
    """Reset the padding blocks of per-group covariances to the identity (uniform groups unchanged)."""
    out = []
    for x, g in zip(parts, head_groups(layout)):
        if not g.uniform:
            pair = g.valid[:, :, None] & g.valid[:, None, :]
            x = jnp.where(pair, x, np.eye(g.dim, dtype=np.float32))
        out.append(x)
    return out


def ungroup_vectors(parts, layout: HeadLayout) -> Float[Array, "*b H D"]:
    """Inverse of :func:`group_vectors` (padding slots are dropped by :func:`merge_mu`)."""
    d = padding(layout).dim
    return jnp.concatenate([_pad_last(x, d, 1) for x in parts], axis=-2)


def ungroup_matrices(parts, layout: HeadLayout) -> Float[Array, "*b H D D"]:
    """Inverse of :func:`group_matrices`: padding blocks hold the identity."""
    d = padding(layout).dim
    out = jnp.concatenate([_pad_last(x, d, 2) for x in parts], axis=-3)
    return out if padding(layout).valid.all() else impose(out, layout)


def _pad_last(x, d: int, n_axes: int):
    if x.shape[-1] == d:
        return x
    return jnp.pad(x, [(0, 0)] * (x.ndim - n_axes) + [(0, d - x.shape[-1])] * n_axes)


@functools.cache
def _group_generators(layout: HeadLayout, basis: str) -> tuple[np.ndarray, ...]:
    out = []
    for g in head_groups(layout):
        if g.uniform:
            out.append(so3.generators(g.dim, basis).astype(np.float32))
            continue
        gens = np.zeros((g.size, 3, g.dim, g.dim), np.float32)
        for head, d in enumerate(g.dims):
            gens[head, :, :d, :d] = so3.generators(d, basis)
        out.append(gens)
    return tuple(out)


def group_generators(layout: HeadLayout, basis: str) -> list[np.ndarray]:
    """Per head group: one ``(3, d, d)`` float32 generator triple shared by its heads (uniform group), or
    ``(h, 3, d, d)`` per head, zero on padding slots."""
    return [g.copy() for g in _group_generators(layout, basis)]
