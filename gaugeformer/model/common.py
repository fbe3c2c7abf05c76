"""Small shared pieces of the modules: the non-trainable buffer type, torch-style LayerNorm, hook helpers."""

import jax
import jax.numpy as jnp
from flax import nnx


class Buffer(nnx.Variable):
    """Non-trainable state (the optimizer updates only ``nnx.Param``)."""


class LayerNorm(nnx.Module):
    """torch ``nn.LayerNorm(K)``: eps 1e-5, affine ``weight``/``bias`` (flax's default eps is 1e-6)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        self.weight = nnx.Param(jnp.ones((dim,)))
        self.bias = nnx.Param(jnp.zeros((dim,)))
        self.eps = eps

    def __call__(self, x):
        mean = jnp.mean(x, -1, keepdims=True)
        var = jnp.mean((x - mean) ** 2, -1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + self.eps) * self.weight[...] + self.bias[...]


def maybe_norm(module, x):
    return x if module is None else module(x)


def records(module: nnx.Module, names, sow) -> bool:
    """True when one of the hooks ``names`` of ``module`` must be materialised: a forward hook patches it,
    or it is recorded (``sow`` captures it and the call runs inside ``nnx.capture``; outside it a hook
    records nothing).  Modules build their full ``[B,H,N,N]`` tensors only then; otherwise they run tiled."""
    if any(sow.intervenes(n) for n in names):
        return True
    captures = getattr(module, "__captures__", ())
    return any(type(v) is nnx.Intermediate for v in captures) and any(sow.captures(n) for n in names)


def remat_if_tiled(fn, n: int, tile: int | None):
    """``jax.checkpoint(fn)`` when the sequence spans several tiles: the backward then keeps only the
    sublayer's inputs and recomputes its per-token work (whose ``[B,N,H,D,D,D]`` broadcast-and-sum residuals
    otherwise dominate memory at long N).  With one tile the residuals are kept (no recompute)."""
    return fn if tile is None or n <= tile else jax.checkpoint(fn)
