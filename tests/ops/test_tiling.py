"""Tiled attention, VFE FFN and φ step equal the untiled (full-matrix) computations: forward and gradients.

Tiles of 3, 4 and 5 tokens on N = 13 (so the last block is padded, and with 3 tiles the causal skipping has
whole tiles to skip), every mask pattern, ALiBi, self-masking, diagonal covariances, both transports and both
causal modes (strict, and the reference's floor applied after normalisation to masked keys too).  Float64
checks the algebra to 1e-10 relative; float32 checks that tiling adds no more than rounding.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaugeformer.ops import attention as att
from gaugeformer.ops import blocks, tiling, vfe
from gaugeformer.ops.so3 import head_layout
from gaugeformer.ops.attention_tiled import attention_tiled, stats_full
from gaugeformer.ops.gaussian import taylor4_logabsdet
from gaugeformer.ops.masks import valid_keys
from gaugeformer.ops.transport import frames

B, N = 2, 13
LAYOUT = head_layout("1x0e+2x1e+1x2e", 12)  # two head groups, as config A: (1, 3, 3) padded to 3, and (5,)
SIZES = [g.size for g in blocks.head_groups(LAYOUT)]
VALID = [g.valid for g in blocks.head_groups(LAYOUT)]

SLOW = pytest.mark.slow
CASES = [  # (pattern, window, mask_self, alibi, floor, transport, diagonal); the default run keeps three
    pytest.param("full", 24, False, None, None, "exact", False, marks=SLOW),
    pytest.param("full", 24, False, None, 1e-8, "taylor4", False, marks=SLOW),
    pytest.param("local", 6, False, -0.1, None, "taylor4", False, marks=SLOW),
    pytest.param("local", 6, True, -0.1, 1e-8, "exact", False, marks=SLOW),
    pytest.param("strided", 4, False, 0.2, None, "exact", False, marks=SLOW),
    ("strided", 4, True, None, 1e-8, "taylor4", False),
    ("full", 24, True, -0.1, None, "exact", True),
    pytest.param("local", 6, False, None, 1e-8, "taylor4", True, marks=SLOW),
]


def beliefs(rng, dtype, mean=1.0, scale=0.4, ridge=0.5):
    """Per head group ``mu [B,N,h,d]`` and ``sigma [B,N,h,d,d]`` as the model holds them: random real blocks,
    zero mean and identity covariance on padding slots."""
    k = LAYOUT.embed_dim
    mu = rng.normal(size=(B, N, k)) * scale + mean
    sigma = np.zeros((B, N, k, k))
    for off, d in zip(LAYOUT.offsets, LAYOUT.dims):
        a = rng.normal(size=(B, N, d, d)) * scale
        sigma[..., off:off + d, off:off + d] = a @ np.swapaxes(a, -1, -2) + ridge * np.eye(d)
    mu = blocks.group_vectors(blocks.split_mu(jnp.asarray(mu, dtype), LAYOUT), LAYOUT)
    sigma = blocks.group_matrices(blocks.split_sigma(jnp.asarray(sigma, dtype), LAYOUT), LAYOUT)
    return mu, sigma


def gens_of(dtype):
    return [g.astype(np.float64 if dtype == jnp.float64 else np.float32)
            for g in blocks.group_generators(LAYOUT, "e3nn")]


def inputs(dtype, seed=0, transport="exact", diagonal=False):
    """Per head group: beliefs (:func:`beliefs`; variances when ``diagonal``), frames ``[B,N,h or 1,d,d]``
    and ``log|det E|`` (taylor4) or None, as GaugeAttention passes them."""
    rng = np.random.default_rng(seed)
    mu, sigma = beliefs(rng, dtype)
    if diagonal:
        sigma = [jnp.diagonal(s, axis1=-2, axis2=-1) for s in sigma]
    phi = jnp.asarray(rng.normal(size=(B, N, 3)) * 0.6, dtype)
    es, fs, lads = [], [], []
    for g, gens in zip(blocks.head_groups(LAYOUT), gens_of(dtype)):
        e, f = frames(phi, gens, transport)
        if g.uniform:
            e, f = e[:, :, None], f[:, :, None]
        es.append(e)
        fs.append(f)
        lads.append(None if transport != "taylor4" else
                    taylor4_logabsdet(jnp.linalg.norm(phi, axis=-1), g.degrees[:1] if g.uniform else g.degrees))
    return mu, sigma, es, fs, lads


@functools.partial(jax.jit, static_argnums=(5, 6, 7, 8, 9))
def untiled(mu, sigma, e, f, lad, pattern, window, mask_self, alibi, floor):
    """The full-matrix path of GaugeAttention (reference implementation for the tiled one)."""
    mask = valid_keys(N, pattern, window, mask_self)
    diag = sigma[0].ndim == 4
    if diag:
        parts = [att.kl_diagonal(*a, 1e-6) for a in zip(mu, sigma, e, f)]
        kl = [p[0] for p in parts]
    else:
        kl = [att.kl_factorized(*a, 1e-6, 1e-6) for a in zip(mu, sigma, e, f, lad)]
    kl = jnp.concatenate(kl, axis=1)
    beta = att.attention_weights(att.attention_logits(kl, 1.5, mask, alibi), floor)
    betas = jnp.split(beta, np.cumsum(SIZES)[:-1], axis=1)
    if diag:
        out = [att.aggregate_diagonal(b, *p[1:]) for b, p in zip(betas, parts)]
    else:
        out = [att.aggregate_factorized(b, *a) for b, a in zip(betas, zip(mu, sigma, e, f))]
    return [o[0] for o in out], [o[1] for o in out], stats_full(beta, kl)


@functools.partial(jax.jit, static_argnums=(5, 6, 7, 8, 9, 10))
def tiled(mu, sigma, e, f, lad, pattern, window, mask_self, alibi, floor, tile):
    return attention_tiled(mu, sigma, e, f, lad, kappa=1.5, alibi_slope=alibi, floor=floor, eps=1e-6,
                           eps_log=1e-6, evolve_sigma=True, tile=tile, pattern=pattern, window=window,
                           mask_self=mask_self)


def scalar(out):
    """A scalar touching every output (for gradients), weighted so no term cancels by symmetry."""
    mean, cov, st = out
    total = 1e-2 * jnp.sum(st.beta_kl) + 1e-2 * jnp.sum(st.kl_sum)
    for m, c in zip(mean, cov):
        w = jnp.arange(1, m.size + 1, dtype=m.dtype).reshape(m.shape) / m.size
        total = total + jnp.sum(w * m) + 0.1 * jnp.sum(jnp.sin(c))
    return total


def _close(a, b, rtol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, rtol=0, atol=rtol * (np.abs(y).max() + 1e-30))


@pytest.mark.parametrize("pattern,window,mask_self,alibi,floor,transport,diagonal", CASES)
def test_tiled_attention_equals_untiled(pattern, window, mask_self, alibi, floor, transport, diagonal):
    mask_args = (pattern, window, mask_self, alibi, floor)
    with jax.enable_x64(True):
        args = inputs(jnp.float64, transport=transport, diagonal=diagonal)
        ref = untiled(*args, *mask_args)
        ref_grad = jax.grad(lambda m, s: scalar(untiled(m, s, *args[2:], *mask_args)), (0, 1))(*args[:2])
        for tile in (3, None):  # 3: padded last block and skipped tiles; None: one tile
            _close(tiled(*args, *mask_args, tile), ref, 1e-10)
            grad = jax.grad(lambda m, s: scalar(tiled(m, s, *args[2:], *mask_args, tile)), (0, 1))(*args[:2])
            _close(grad, ref_grad, 1e-10)
    args = inputs(jnp.float32, transport=transport, diagonal=diagonal)
    ref = untiled(*args, *mask_args)
    _close(tiled(*args, *mask_args, 4), ref, 2e-6)
    ref_grad = jax.grad(lambda m, s: scalar(untiled(m, s, *args[2:], *mask_args)), (0, 1))(*args[:2])
    grad = jax.grad(lambda m, s: scalar(tiled(m, s, *args[2:], *mask_args, 4)), (0, 1))(*args[:2])
    _close(grad, ref_grad, 2e-5)


def test_causal_tiles_are_skipped_only_without_a_floor():
    strict = tiling.make_plan(64, 8, "full", skip=True)
    assert strict.visit.sum() == 8 * 9 // 2  # the lower triangle of 8×8 tiles
    assert tiling.make_plan(64, 8, "local", window=8, skip=True).visit.sum() == 8 + 7
    assert tiling.make_plan(64, 8, "full", skip=False).visit.all()
    # skipped keys per row: row 0 skips the 56 keys of blocks 1..7; the last block skips none
    counts = strict.skipped_keys()
    assert counts[0] == 56 and counts[63] == 0


def test_floor_reaches_masked_keys_in_tiles():
    """The reference floor: every masked key carries the floor (row sums >= 1 + #masked·floor; without the
    masked keys' floor the sum would be 1 + the lift of small allowed weights, ~N + 0.01 here)."""
    with jax.enable_x64(True):
        args = inputs(jnp.float64)
        _, _, st = tiled(*args, "full", 24, False, None, 1e-3, 4)
        _, _, ref = untiled(*args, "full", 24, False, None, 1e-3)
        masked = N * (N - 1) / 2
        assert np.all(np.asarray(st.beta_sum) >= N + 1e-3 * masked - 1e-9)  # = for a head with no lift
        np.testing.assert_allclose(st.beta_sum, ref.beta_sum, rtol=1e-12)


# ---------------------------------------------------------------------------------------------- VFE FFN

# slow (2-4 min each on the loaded 2-core machine); the default suite checks the tiled FFN through
# tests/model/test_tiled_model.py and the tiled parity cases
FFN_CASES = [pytest.param("full", 1e-6, False, marks=SLOW), pytest.param("full", None, True, marks=SLOW),
             pytest.param("local", 1e-6, False, marks=SLOW), pytest.param("strided", None, True, marks=SLOW)]


def ffn_inputs(dtype, seed=1):
    rng = np.random.default_rng(seed)
    mu, sigma = beliefs(rng, dtype, mean=0.0, scale=0.5, ridge=0.6)
    phi = jnp.asarray(rng.normal(size=(B, N, 3)) * 0.5, dtype)
    return mu, sigma, phi, gens_of(dtype)


@pytest.mark.parametrize("pattern,floor,query_role", FFN_CASES)
def test_tiled_vfe_iteration_and_phi_step_equal_untiled(pattern, floor, query_role):
    hp = vfe.VFEParams(alpha=0.5, kappa=1.3, beta_floor=floor, coupling_sign=-1.0, phi_grad_query_role=query_role)
    mask = valid_keys(N, pattern, 6)

    def prior(mu, sigma):  # padding stays zero mean and identity covariance
        return [m * 0.9 for m in mu], blocks.impose_groups([s * 1.1 for s in sigma], LAYOUT)

    with jax.enable_x64(True):
        mu, sigma, phi, gens = ffn_inputs(jnp.float64)
        mu_p, sig_p = prior(mu, sigma)  # closed over by run, late-bound

        def run(mu, sigma, phi, plan):
            m, s, _, _ = vfe.vfe_iteration(mu, sigma, vfe.rotations(gens, phi), mu_p, sig_p, mask, 0.1, hp,
                                           VALID, plan=plan)
            new_phi, _, _ = vfe.phi_step(phi, m, s, gens, mask, hp, VALID, plan=plan)
            return m, s, new_phi

        def loss(mu, sigma, phi, plan):
            m, s, p = run(mu, sigma, phi, plan)
            return sum(jnp.sum(jnp.sin(x)) for x in m) + sum(jnp.sum(x * x) for x in s) + jnp.sum(p)

        ref = run(mu, sigma, phi, None)
        ref_grad = jax.grad(loss, (0, 1, 2))(mu, sigma, phi, None)
        for tile in (3,):
            plan = vfe.ffn_plan(N, tile, pattern, 6, False, hp)
            _close(run(mu, sigma, phi, plan), ref, 1e-10)
            _close(jax.grad(loss, (0, 1, 2))(mu, sigma, phi, plan), ref_grad, 1e-10)
        # the φ step's energy gradient itself, tiled vs full
        plan = vfe.ffn_plan(N, 4, pattern, 6, False, hp)
        e_ref = jax.grad(lambda p: vfe.phi_energy(p, mu, sigma, gens, mask, hp, VALID)[0])(phi)
        e_til = jax.grad(lambda p: vfe.phi_energy(p, mu, sigma, gens, mask, hp, VALID, plan)[0])(phi)
        _close(e_til, e_ref, 1e-10)
    mu, sigma, phi, gens = ffn_inputs(jnp.float32)
    mu_p, sig_p = prior(mu, sigma)
    plan = vfe.ffn_plan(N, 4, pattern, 6, False, hp)
    _close(run(mu, sigma, phi, plan), run(mu, sigma, phi, None), 1e-5)
