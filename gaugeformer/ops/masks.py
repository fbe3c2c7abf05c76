"""Which keys a query may attend: the one definition used by the model, the metrics, the figures and tools.

Every attention pattern is causal (key ``j <= query i``):

* ``full``: every earlier key.
* ``local``: the ``window // 2`` keys before ``i``, and ``i`` itself.
* ``strided``: keys within 8 positions, and every ``stride``-th key (``stride = max(1, N // window)``).

``mask_self`` removes the diagonal from every row that keeps another key (row 0 keeps its self-key, as in the
reference), so no row is ever empty.

The rule is written once, on broadcastable index arrays, in :func:`allowed`: :func:`valid_keys` evaluates it
on the full ``[N, M]`` grid with numpy (a compile-time constant), and tiled attention evaluates it on a
query-block × key-block of traced indices, so long sequences never build an ``N × N`` mask.
"""

from typing import Literal

import jax.numpy as jnp
import numpy as np

MaskPattern = Literal["full", "local", "strided"]
PATTERNS = ("full", "local", "strided")


def allowed(i, j, n: int, pattern: str = "full", window: int = 24, mask_self: bool = False):
    """True where query ``i`` may attend key ``j`` (index arrays that broadcast; numpy or jax).

    ``n`` is the sequence length (the strided pattern's stride depends on it).
    """
    xp = jnp if isinstance(i, jnp.ndarray) or isinstance(j, jnp.ndarray) else np
    ok = j <= i
    if pattern == "local":
        ok = ok & (j >= i - window // 2)
    elif pattern == "strided":
        stride = max(1, n // window)
        ok = ok & ((xp.abs(i - j) <= 8) | (j % stride == 0))
    elif pattern != "full":
        raise ValueError(f"unknown attention_pattern {pattern!r}; expected one of {PATTERNS}")
    if mask_self:
        # a row keeps another key iff i > 0 (its predecessor is allowed), except a local window of 0
        has_other = (i > 0) & (pattern != "local" or window // 2 >= 1)
        ok = ok & ~((i == j) & has_other)
    return ok


def valid_keys(n: int, pattern: str = "full", window: int = 24, mask_self: bool = False,
               m: int | None = None) -> np.ndarray:
    """Boolean ``[N, M]`` (``M = N`` by default): True where query i may attend key j."""
    m = n if m is None else m
    return allowed(np.arange(n)[:, None], np.arange(m)[None, :], n, pattern, window, mask_self)
