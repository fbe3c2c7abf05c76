"""The unrolled per-token factors (ops/small.py) and the chunked vocabulary cross-entropy (ops/vocab.py),
against LAPACK / optax in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gaugeformer.loss import belief_cross_entropy, cross_entropy
from gaugeformer.ops import small as sm
from gaugeformer.ops import vocab


def _spd(rng, n, d, shift=0.1):
    x = rng.normal(size=(n, d, d))
    return x @ x.transpose(0, 2, 1) + shift * np.eye(d)


@pytest.mark.parametrize("d", [1, 2, 3, 5, 7, 11])
def test_cholesky_and_triangular_inverse_match_lapack(d):
    rng = np.random.default_rng(d)
    a = _spd(rng, 6, d)
    with jax.enable_x64(True):
        chol = np.asarray(sm.cholesky(jnp.asarray(a)))
        np.testing.assert_allclose(chol, np.linalg.cholesky(a), rtol=0, atol=1e-12 * np.abs(a).max())
        np.testing.assert_allclose(np.asarray(sm.tri_inverse(jnp.asarray(chol))), np.linalg.inv(chol),
                                   rtol=0, atol=1e-10 * np.abs(np.linalg.inv(chol)).max())
        # an asymmetric input is symmetrised, as jnp.linalg.cholesky does
        skew = rng.normal(size=a.shape) * 1e-3
        skew = skew - skew.transpose(0, 2, 1)
        np.testing.assert_allclose(np.asarray(sm.cholesky(jnp.asarray(a + skew))), np.linalg.cholesky(a),
                                   atol=1e-12 * np.abs(a).max())


def test_not_positive_definite_gives_nan():
    a = np.diag([1.0, -1.0, 2.0])[None]
    assert not np.all(np.isfinite(np.asarray(sm.cholesky(jnp.asarray(a, jnp.float32)))))


@pytest.mark.parametrize("d", [pytest.param(1, marks=pytest.mark.slow), pytest.param(3, marks=pytest.mark.slow), 5])
def test_derivatives_match_jax_linalg_to_second_order(d):
    rng = np.random.default_rng(10 + d)
    a, w = _spd(rng, 4, d), rng.normal(size=(4, d, d))

    def ours(x):
        chol = sm.cholesky(x)
        return jnp.sum(w * jnp.sin(chol)) + jnp.sum(w * sm.tri_inverse(chol))

    def lapack(x):
        chol = jnp.linalg.cholesky(x)
        return jnp.sum(w * jnp.sin(chol)) + jnp.sum(w * jnp.linalg.inv(chol))

    with jax.enable_x64(True):
        x = jnp.asarray(a)
        np.testing.assert_allclose(jax.grad(ours)(x), jax.grad(lapack)(x), atol=1e-11)
        np.testing.assert_allclose(jax.hessian(ours)(x[:1]), jax.hessian(lapack)(x[:1]), atol=1e-10)


@pytest.mark.parametrize("v,chunk", [(300, 64), (300, 300), (257, 1000), (1000, 128)])
def test_chunked_cross_entropy_equals_optax(v, chunk):
    rng = np.random.default_rng(v + chunk)
    with jax.enable_x64(True):
        mu, w = jnp.asarray(rng.normal(size=(37, 6))), jnp.asarray(rng.normal(size=(v, 6)))
        y, g = jnp.asarray(rng.integers(0, v, 37)), jnp.asarray(rng.normal(size=37))

        def ours(mu, w):
            return jnp.sum(g * vocab.cross_entropy(mu, w, y, "highest", chunk))

        def ref(mu, w):
            return jnp.sum(g * optax.softmax_cross_entropy_with_integer_labels(mu @ w.T, y))

        np.testing.assert_allclose(ours(mu, w), ref(mu, w), rtol=1e-13)
        for a, b in zip(jax.grad(ours, (0, 1))(mu, w), jax.grad(ref, (0, 1))(mu, w)):
            np.testing.assert_allclose(a, b, atol=1e-13)


def test_belief_cross_entropy_ignores_targets_like_the_logits_version():
    rng = np.random.default_rng(0)
    mu, w = jnp.asarray(rng.normal(size=(2, 9, 5)), jnp.float32), jnp.asarray(rng.normal(size=(70, 5)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 70, (2, 9))).at[0, 3].set(-100).at[1, -1].set(-100)
    ours = jax.value_and_grad(lambda m: belief_cross_entropy(m, w, targets))(mu)
    ref = jax.value_and_grad(lambda m: cross_entropy(m @ w.T, targets))(mu)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-6)
    np.testing.assert_allclose(ours[1], ref[1], atol=1e-6)
    assert np.all(np.asarray(ours[1])[0, 3] == 0) and np.all(np.asarray(ours[1])[1, -1] == 0)
