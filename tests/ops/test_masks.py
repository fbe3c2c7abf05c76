"""The one mask definition: every pattern against a brute-force rule, numpy and traced evaluation agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaugeformer.ops.masks import PATTERNS, allowed, valid_keys


def brute_force(n, pattern, window, mask_self):
    m = np.zeros((n, n), bool)
    stride = max(1, n // window)
    for i in range(n):
        for j in range(i + 1):
            if pattern == "full":
                m[i, j] = True
            elif pattern == "local":
                m[i, j] = j >= i - window // 2
            else:
                m[i, j] = abs(i - j) <= 8 or j % stride == 0
    if mask_self:
        for i in range(n):
            if m[i].sum() > 1:  # the diagonal goes only where another key remains
                m[i, i] = False
    return m


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("window", [1, 2, 4, 24])
@pytest.mark.parametrize("mask_self", [False, True])
@pytest.mark.parametrize("n", [1, 5, 33])
def test_every_pattern_matches_the_rule(pattern, window, mask_self, n):
    expected = brute_force(n, pattern, window, mask_self)
    np.testing.assert_array_equal(valid_keys(n, pattern, window, mask_self), expected)
    assert valid_keys(n, pattern, window, mask_self).sum(-1).min() >= 1  # no empty row


@pytest.mark.parametrize("pattern", PATTERNS)
def test_tiles_of_traced_indices_equal_the_full_mask(pattern):
    n, tile = 40, 8
    full = valid_keys(n, pattern, 8, True)

    @jax.jit
    def tile_mask(q0, k0):
        i = q0 + jnp.arange(tile)[:, None]
        j = k0 + jnp.arange(tile)[None, :]
        return allowed(i, j, n, pattern, 8, True)

    for q0 in range(0, n, tile):
        for k0 in range(0, n, tile):
            np.testing.assert_array_equal(tile_mask(q0, k0), full[q0:q0 + tile, k0:k0 + tile])


def test_hand_checked_cases_and_errors():
    assert valid_keys(6, "local", window=4)[5].tolist() == [False, False, False, True, True, True]
    assert not valid_keys(6)[0, 1] and valid_keys(6)[5, 0]
    strided = valid_keys(32, "strided", window=8)
    assert strided[31, 0] and strided[31, 4] and not strided[31, 5] and strided[31, 23]
    assert valid_keys(3, mask_self=True).tolist() == [[True, False, False], [True, False, False],
                                                      [True, True, False]]
    with pytest.raises(ValueError, match="attention_pattern"):
        valid_keys(4, "dilated")
