"""Axis vocabulary shared by every op, module and diagnostic.

=====  ==========================================================
``B``  batch
``N``  query positions (tokens, "agents")
``M``  key positions (``M == N`` for self-attention)
``H``  attention heads, one per irrep copy (plus scalar padding heads)
``K``  belief dimension, ``K = sum_h d_h`` (``embed_dim``)
``d``  dimension of one irrep block, ``d = 2l + 1``
``A``  so(3) algebra axis, ``A = 3``
``L``  layers
``V``  vocabulary
``T``  VFE iterations inside one FFN
=====  ==========================================================

Attention tensors are always ``[B, H, N, M]`` with the query first: ``beta[b, h, i, j]`` is how much query
``i`` attends to key ``j``.  Stacked over layers they are ``[L, B, H, N, M]``.
"""

import jax
import numpy as np
from jaxtyping import Bool, Float, Int

# Ops take jax arrays and the numpy constants they are built from (generators, masks, index tables) alike.
# The tests check every annotation at run time (jaxtyping + beartype, tests/conftest.py).
Array = jax.Array | np.ndarray

__all__ = ["Array", "Bool", "Float", "Int"]
