"""Moving beliefs between the flat K-channel layout and per-irrep head groups.

Every covariance in the model is block-diagonal over heads (embedding, attention output and the VFE update
all preserve that, ref-architecture §4.1/§5), so the model carries Σ as per-group blocks and assembles the
full ``(B, N, K, K)`` matrix only for output.  Heads of equal dimension form one *group* and are processed
together with an explicit head axis:

* ``mu``   ``[B, N, K]``       <->  per group ``[B, N, h, d]``
* ``sigma`` ``[B, N, K, K]``   <->  per group ``[B, N, h, d, d]``
"""

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from gaugeformer.axes import Array, Float
from gaugeformer.ops.so3 import HeadLayout


@dataclasses.dataclass(frozen=True)
class Group:
    """Heads of one dimension ``d``: ``heads`` (indices into the layout) and their channel ``index``."""

    dim: int
    heads: tuple[int, ...]
    index: np.ndarray  # (h, d) int channel indices

    @property
    def size(self) -> int:
        return len(self.heads)


@functools.cache
def groups(layout: HeadLayout) -> tuple[Group, ...]:
    out = []
    for d, hs in layout.groups().items():
        idx = np.array([[layout.offsets[h] + k for k in range(d)] for h in hs], dtype=np.int32)
        out.append(Group(d, hs, idx))
    return tuple(out)


@functools.cache
def head_order(layout: HeadLayout) -> np.ndarray:
    """Permutation taking group-concatenated heads back to layout (channel) order."""
    cat = [h for g in groups(layout) for h in g.heads]
    return np.argsort(np.array(cat))


def split_mu(mu: Float[Array, "*b K"], layout: HeadLayout) -> list[Float[Array, "*b h d"]]:
    return [mu[..., g.index] for g in groups(layout)]


def merge_mu(parts: list[Float[Array, "*b h d"]], layout: HeadLayout) -> Float[Array, "*b K"]:
    flat = jnp.concatenate([p.reshape(*p.shape[:-2], -1) for p in parts], axis=-1)
    cat = np.concatenate([g.index.ravel() for g in groups(layout)])
    return flat[..., np.argsort(cat)]


def split_sigma(sigma: Float[Array, "*b K K"], layout: HeadLayout) -> list[Float[Array, "*b h d d"]]:
    return [sigma[..., g.index[:, :, None], g.index[:, None, :]] for g in groups(layout)]


def merge_sigma(parts: list[Float[Array, "*b h d d"]], layout: HeadLayout) -> Float[Array, "*b K K"]:
    k = layout.embed_dim
    batch = parts[0].shape[:-3]
    out = jnp.zeros((*batch, k, k), parts[0].dtype)
    for g, p in zip(groups(layout), parts):
        out = out.at[..., g.index[:, :, None], g.index[:, None, :]].set(p)
    return out


def split_gens(gens: np.ndarray, layout: HeadLayout) -> list[np.ndarray]:
    """Per-group generators ``(3, d, d)`` (all heads of a group share them).  ``gens`` is ``(3, K, K)``."""
    out = []
    for g in groups(layout):
        i = g.index[0]
        out.append(gens[:, i[:, None], i[None, :]])
    return out


def heads_to_layout(per_group: list[Float[Array, "B h ..."]], layout: HeadLayout, axis: int = 1):
    """Concatenate per-group head tensors along ``axis`` and restore layout head order."""
    cat = jnp.concatenate(per_group, axis=axis)
    return jnp.take(cat, head_order(layout), axis=axis)
