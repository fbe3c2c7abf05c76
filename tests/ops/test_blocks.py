"""Head groups: the padded layout cut into runs of equal-dimension heads and put back, and the padding
exactness that makes computing on groups equal to computing on padded heads."""

import jax
import jax.numpy as jnp
import numpy as np

from gaugeformer.ops import attention as att
from gaugeformer.ops import blocks, so3
from gaugeformer.ops.so3 import head_layout
from gaugeformer.ops.transport import frames


def _spd(rng, shape, d):
    a = rng.normal(size=(*shape, d, d)) * 0.4
    return a @ np.swapaxes(a, -1, -2) + 0.5 * np.eye(d)


def test_groups_are_runs_in_head_order_with_scalars_joined_to_the_next_run():
    layout = head_layout("1x1e+2x0e+1x1e+1x2e", 3 + 2 + 3 + 5)
    got = [(g.start, g.stop, g.dims, g.uniform) for g in blocks.head_groups(layout)]
    assert got == [(0, 1, (3,), True), (1, 4, (1, 1, 3), False), (4, 5, (5,), True)]
    gens = blocks.group_generators(layout, "reference")
    assert [g.shape for g in gens] == [(3, 3, 3), (3, 3, 3, 3), (3, 5, 5)]  # shared, per head, shared
    np.testing.assert_array_equal(gens[2], so3.generators(5, "reference").astype(np.float32))
    np.testing.assert_array_equal(gens[1][2], so3.generators(3, "reference").astype(np.float32))
    assert not gens[1][:2].any()  # scalar heads: zero generators (identity transport) in their padded block
    assert [g.dims for g in blocks.head_groups(head_layout("5x0e+3x1e+1x2e", 19))] == [(1,) * 5 + (3,) * 3, (5,)]
    assert [g.dims for g in blocks.head_groups(head_layout("2x1e+2x0e", 8))] == [(3, 3, 1, 1)]  # scalars last
    assert [g.dims for g in blocks.head_groups(head_layout("3x0e", 3))] == [(1, 1, 1)]


def test_group_and_ungroup_round_trip_exactly():
    layout = head_layout("1x1e+2x0e+1x1e+1x2e", 13)
    rng = np.random.default_rng(0)
    k = layout.embed_dim
    mu = jnp.asarray(rng.normal(size=(2, 4, k)), jnp.float32)
    sigma_k = np.zeros((2, 4, k, k))
    for off, d in zip(layout.offsets, layout.dims):
        sigma_k[..., off:off + d, off:off + d] = _spd(rng, (2, 4), d)
    sigma = blocks.split_sigma(jnp.asarray(sigma_k, jnp.float32), layout)  # padded, identity padding
    mus = blocks.split_mu(mu, layout)
    parts = blocks.group_matrices(sigma, layout)
    assert [p.shape[-3:] for p in parts] == [(1, 3, 3), (3, 3, 3), (1, 5, 5)]
    np.testing.assert_array_equal(blocks.ungroup_matrices(parts, layout), sigma)
    np.testing.assert_array_equal(blocks.ungroup_vectors(blocks.group_vectors(mus, layout), layout), mus)
    np.testing.assert_array_equal(blocks.merge_sigma(blocks.ungroup_matrices(parts, layout), layout),
                                  sigma_k.astype(np.float32))
    heads = jnp.arange(5.0)
    np.testing.assert_array_equal(jnp.concatenate(blocks.group_heads(heads, layout)), heads)


def test_a_padded_head_has_the_kl_of_the_unpadded_one():
    """Zero mean, unit variance and an identity transport on padding slots add exactly nothing to the KL:
    computing on unpadded head groups equals the padded layout (float64, to rounding)."""
    rng = np.random.default_rng(1)
    b, n, h, d, big = 2, 6, 2, 3, 5
    with jax.enable_x64(True):
        mu = jnp.asarray(rng.normal(size=(b, n, h, d)))
        sigma = jnp.asarray(_spd(rng, (b, n, h), d))
        phi = jnp.asarray(rng.normal(size=(b, n, 3)) * 0.7)
        for kind in ("exact", "taylor4"):
            e, f = frames(phi, so3.generators(d, "e3nn"), kind)
            e, f = e[:, :, None], f[:, :, None]
            small = att.kl_factorized(mu, sigma, e, f, None if kind == "exact" else jnp.zeros((b, n, 1)),
                                      1e-6, 1e-6)
            pad = [(0, 0)] * 3 + [(0, big - d)]
            mu_p = jnp.pad(mu, pad)
            eye = jnp.eye(big) - jnp.pad(jnp.eye(d), [(0, big - d)] * 2)
            sigma_p = jnp.pad(sigma, pad + [(0, big - d)]) + eye
            e_p, f_p = (jnp.pad(x, pad[:2] + [(0, 0), (0, big - d), (0, big - d)]) + eye for x in (e, f))
            padded = att.kl_factorized(mu_p, sigma_p, e_p, f_p, None if kind == "exact" else jnp.zeros((b, n, 1)),
                                       1e-6, 1e-6)
            np.testing.assert_allclose(padded, small, rtol=1e-10, atol=1e-12)
