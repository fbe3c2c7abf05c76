"""Contractions at full float32 precision on every backend.

A ``dot_general`` left at ``Precision.DEFAULT`` runs as one bf16 pass on TPU and as TF32 on A100/H100 GPUs
(8 and 10 mantissa bits).  The factorized KL sums O(1) terms that cancel down to ~1e-3 in trained models,
so rounding its operands to TF32 / bf16 turns attention into noise (README, "Precision").  Every
contraction of the model therefore goes through :func:`einsum` / :func:`matmul` here, which pin
``Precision.HIGHEST`` (six bf16 passes on TPU, no TF32 on GPU) explicitly, so no global
``jax_default_matmul_precision`` setting can lower it.  On CPU XLA ignores the setting and nothing changes.

The only exception is the output projection, whose precision is the model's ``logits_precision`` option
(``"highest"`` by default; ``"default"`` trades the vocabulary GEMM's precision for speed).
"""

from typing import Literal

import jax
import jax.numpy as jnp

from gaugeformer.axes import Array

HIGHEST = jax.lax.Precision.HIGHEST
LogitsPrecision = Literal["highest", "default"]


def einsum(subscripts: str, *operands: Array) -> jax.Array:
    """``jnp.einsum`` at ``Precision.HIGHEST``."""
    return jnp.einsum(subscripts, *operands, precision=HIGHEST)


def matmul(a: Array, b: Array) -> jax.Array:
    """``a @ b`` at ``Precision.HIGHEST``."""
    return jnp.matmul(a, b, precision=HIGHEST)


def logits_matmul(mu: Array, weight: Array, precision: LogitsPrecision) -> jax.Array:
    """The output projection ``mu @ weightᵀ`` (``[..., K] × [V, K] → [..., V]``) at the chosen precision.

    Runs under the name scope ``output_projection`` so jaxpr checks can tell it from the model's other dots.
    """
    if precision not in ("highest", "default"):
        raise ValueError(f"logits_precision={precision!r}; expected 'highest' or 'default'")
    with jax.named_scope("output_projection"):
        return jnp.matmul(mu, weight.T, precision=HIGHEST if precision == "highest" else None)
