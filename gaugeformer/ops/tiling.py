"""Exact row-softmax reductions over query-block × key-block tiles: no ``[B, H, N, N]`` tensor.

Every N×N interaction of the model has the same shape: per-token query features and key features give a
tile of logits (``-KL/κ``, masked), the row softmax gives β (with the reference's floor applied *after*
normalisation, to masked keys too), and β-weighted sums of per-key values are reduced over keys.
:func:`softmax_reduce` does that in tiles of ``T`` tokens:

* pass 1 over the key blocks of a query block: the row log-sum-exp (online max/sum, the max held constant for
  autodiff, so the derivative is the softmax's);
* pass 2: ``β = exp(logit - lse)``, the floor, and the caller's reduction of each tile.

With one key block the logits are computed once (and, the tile being the whole matrix, not rematerialised).  Tiles that the mask removes entirely are skipped (a
``lax.cond``, so the backward skips them too) when ``skip`` is set — valid when a masked key contributes
nothing (no floor) or when the caller adds the masked keys' floor contribution itself.  Each query block is
one ``jax.checkpoint``: the backward recomputes its tiles, so the activations kept are per-token, never
per-pair (``O(B·H·N·(d² + T))``).

The mask is :func:`gaugeformer.ops.masks.allowed` evaluated on each tile's traced indices; which tiles hold
an allowed pair is a static table computed from the same rule with numpy.
"""

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gaugeformer.ops.masks import MaskPattern, allowed

_NEG = -1e30  # running max before any key is seen (finite, so exp(m_old - m_new) never is nan)


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """Static tiling of a length-``n`` sequence into ``blocks`` blocks of ``tile`` tokens.

    Attributes:
      n: real sequence length (the mask depends on it).
      tile: block size T; the token axis is padded to ``blocks * tile``.
      blocks: number of query (and key) blocks.
      pattern / window / mask_self: the mask (see :mod:`gaugeformer.ops.masks`).
      live: ``[blocks, blocks]`` True where a tile holds an allowed pair.
      visit: ``[blocks, blocks]`` tiles that are computed (``live`` when skipping, else all).
    """

    n: int
    tile: int
    blocks: int
    pattern: MaskPattern
    window: int
    mask_self: bool
    live: np.ndarray = dataclasses.field(compare=False)
    visit: np.ndarray = dataclasses.field(compare=False)

    @property
    def padded(self) -> int:
        return self.blocks * self.tile

    def mask(self, i, j):
        """Allowed pairs for index arrays (numpy or traced).  Padding keys ``j >= n`` are never allowed; a
        padding query ``i >= n`` sees key 0, so its (discarded) row is never empty and its softmax finite."""
        return _mask(i, j, self.n, self.pattern, self.window, self.mask_self)

    def skipped_keys(self) -> np.ndarray:
        """``[padded]`` per query row: how many real keys lie in tiles that are not visited."""
        t = self.tile
        real = np.clip(self.n - np.arange(self.blocks) * t, 0, t)  # real keys per key block
        per_block = (~self.visit) @ real
        return np.repeat(per_block, t)


def _mask(i, j, n, pattern, window, mask_self):
    return (allowed(i, j, n, pattern, window, mask_self) & (j < n)) | ((i >= n) & (j == 0))


@functools.cache
def make_plan(n: int, tile: int | None, pattern: MaskPattern = "full", window: int = 24,
              mask_self: bool = False, skip: bool = True) -> TilePlan:
    """Tile plan for length ``n``; ``tile=None`` (or ``tile >= n``) is one tile."""
    if tile is not None and tile < 1:
        raise ValueError(f"attention_tile must be a positive int or None, got {tile}")
    t = n if tile is None or tile >= n else int(tile)
    blocks = math.ceil(n / t)
    idx = np.arange(blocks * t)
    ok = _mask(idx[:, None], idx[None, :], n, pattern, window, mask_self)
    live = ok.reshape(blocks, t, blocks, t).any(axis=(1, 3))
    visit = live if skip else np.ones_like(live)
    return TilePlan(n, t, blocks, pattern, window, mask_self, live, visit)


def pad_tokens(tree, plan: TilePlan, axis: int = 1):
    """Pad the token axis of every leaf to ``plan.padded`` by repeating the last token (finite, SPD)."""
    extra = plan.padded - plan.n
    if extra == 0:
        return tree

    def pad(x):
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, extra)
        return jnp.pad(x, widths, mode="edge")

    return jax.tree.map(pad, tree)


def _block(tree, k, t: int, axis: int = 1):
    return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, k * t, t, axis=axis), tree)


def unblock(x, plan: TilePlan, axis: int):
    """``[blocks, ..., T (at axis), ...]`` stacked by query block -> the token axis, padding dropped."""
    x = jnp.moveaxis(x, 0, axis)  # [..., blocks, T, ...]
    shape = x.shape[:axis] + (plan.padded,) + x.shape[axis + 2:]
    return jax.lax.slice_in_dim(x.reshape(shape), 0, plan.n, axis=axis)


def softmax_reduce(
    plan: TilePlan,
    queries,
    keys,
    logits_fn: Callable,
    reduce_fn: Callable,
    init_fn: Callable,
    floor: float | None,
):
    """Per query block, the row softmax over all key blocks and a caller-defined reduction of β.

    Args:
      plan: the tiling (:func:`make_plan`).
      queries / keys: pytrees of per-token arrays with the token axis at 1, already padded
        (:func:`pad_tokens`).
      logits_fn: ``(q_block, k_block, i, j, ok) -> (logits [..., T, T] with -inf where not ok, aux)``
        where ``i [T, 1]`` / ``j [1, T]`` are the token indices and ``ok [T, T]`` the mask.
      reduce_fn: ``(acc, beta [..., T, T], aux, q_block, k_block, i, j, ok) -> acc``; β already carries the
        floor (masked real keys of visited tiles get ``floor``; padding keys ``j >= n`` get 0).
      init_fn: ``q_block -> acc`` (zeros of the per-query accumulators).
      floor: the β floor, or None.

    Returns:
      the accumulators stacked over query blocks (leading axis ``blocks``); see :func:`unblock`.
    """
    t, nb = plan.tile, plan.blocks
    visit = jnp.asarray(plan.visit)

    def tile_beta(logits, lse, ok, j):
        p = jnp.exp(logits - lse[..., None])
        if floor is None:
            return p
        return jnp.where(ok, jnp.maximum(p, floor), jnp.where(j < plan.n, floor, 0.0))

    def one_block(qi):
        qb = _block(queries, qi, t)
        i = (qi * t + jnp.arange(t))[:, None]
        acc0 = init_fn(qb)

        def at(kj):
            j = (kj * t + jnp.arange(t))[None, :]
            return _block(keys, kj, t), j, plan.mask(i, j)

        if nb == 1:
            kb, j, ok = at(0)
            logits, aux = logits_fn(qb, kb, i, j, ok)
            lse = jax.nn.logsumexp(logits, axis=-1)
            return reduce_fn(acc0, tile_beta(logits, lse, ok, j), aux, qb, kb, i, j, ok)

        def lse_step(carry, kj):
            def live(carry):
                m, s = carry
                kb, j, ok = at(kj)
                logits, _ = logits_fn(qb, kb, i, j, ok)
                m_new = jax.lax.stop_gradient(jnp.maximum(m, jnp.max(logits, axis=-1)))
                s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(logits - m_new[..., None]), axis=-1)
                return m_new, s

            return jax.lax.cond(visit[qi, kj], live, lambda c: c, carry), None

        kb0, j0, ok0 = at(0)
        rows = jax.eval_shape(lambda: logits_fn(qb, kb0, i, j0, ok0)[0]).shape[:-1]
        dtype = jax.tree.leaves(queries)[0].dtype
        carry0 = (jnp.full(rows, _NEG, dtype), jnp.zeros(rows, dtype))
        (m, s), _ = jax.lax.scan(lse_step, carry0, jnp.arange(nb))
        lse = m + jnp.log(s)

        def acc_step(acc, kj):
            def live(acc):
                kb, j, ok = at(kj)
                logits, aux = logits_fn(qb, kb, i, j, ok)
                return reduce_fn(acc, tile_beta(logits, lse, ok, j), aux, qb, kb, i, j, ok)

            return jax.lax.cond(visit[qi, kj], live, lambda a: a, acc), None

        acc, _ = jax.lax.scan(acc_step, acc0, jnp.arange(nb))
        return acc

    if nb == 1:  # one tile: the pairwise tensors are the whole matrix anyway; keep residuals, no recompute
        return jax.tree.map(lambda x: x[None], one_block(0))
    return jax.lax.map(jax.checkpoint(one_block), jnp.arange(nb))
