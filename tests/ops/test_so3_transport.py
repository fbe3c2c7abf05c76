"""Group-theory identities of the generators, the change of basis, and the exponentials."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg as sl

from gaugeformer.ops import so3, transport
from gaugeformer.ops.gaussian import taylor4_logabsdet
from gaugeformer.ops.positional import compose, hat, so3_log

DIMS = (1, 3, 5, 7, 9, 11)


@pytest.mark.parametrize("basis", so3.BASES)
@pytest.mark.parametrize("d", DIMS)
def test_generators_are_an_so3_irrep(basis, d):
    g = so3.generators(d, basis)
    l = (d - 1) // 2
    np.testing.assert_allclose(g, -np.swapaxes(g, -1, -2), atol=1e-12)
    for a in range(3):  # [G_a, G_b] = G_c cyclically
        b, c = (a + 1) % 3, (a + 2) % 3
        np.testing.assert_allclose(g[a] @ g[b] - g[b] @ g[a], g[c], atol=1e-12)
    np.testing.assert_allclose(sum(x @ x for x in g), -l * (l + 1) * np.eye(d), atol=1e-12)


def test_reference_basis_matches_spec_values():
    # ref-architecture §2.1: l=1 G_x = [[0,0,-1],[0,0,0],[1,0,0]], G_z acts on (c1, s1); l=2 G_z entries
    g1 = so3.generators(3, "reference")
    np.testing.assert_allclose(g1[0], [[0, 0, -1], [0, 0, 0], [1, 0, 0]], atol=1e-12)
    np.testing.assert_allclose(g1[2], [[0, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-12)
    g2 = so3.generators(5, "reference")
    assert g2[2][1, 2] == pytest.approx(-1) and g2[2][3, 4] == pytest.approx(-2)
    assert g2[0][0, 2] == pytest.approx(-np.sqrt(3))


@pytest.mark.parametrize("d", DIMS)
def test_change_of_basis_intertwines(d):
    q = so3.change_of_basis(d)
    np.testing.assert_allclose(q @ q.T, np.eye(d), atol=1e-12)
    for a in range(3):
        np.testing.assert_allclose(q @ so3.generators(d, "reference")[a] @ q.T, so3.generators(d, "e3nn")[a],
                                   atol=1e-12)


def test_change_of_basis_known_values():
    np.testing.assert_allclose(so3.change_of_basis(3), [[0, 1, 0], [0, 0, 1], [-1, 0, 0]], atol=1e-12)
    q2 = so3.change_of_basis(5)
    assert q2[2, 0] == pytest.approx(0.5) and q2[2, 3] == pytest.approx(np.sqrt(3) / 2)


def test_irreps_parsing_and_layout():
    assert so3.parse_irreps("5x0e+3x1e+1x2e") == so3.parse_irreps([("ℓ0", 5, 1), ["ℓ1", 3, 3], ("ℓ2", 1, 5)])
    lay = so3.head_layout("5x0e+3x1e+1x2e", 19)
    assert lay.dims == (1,) * 5 + (3,) * 3 + (5,) and lay.offsets[-1] == 14
    assert so3.head_layout("1x1e", 5, pad=True).labels == ("ℓ1", "ℓ0_pad", "ℓ0_pad")
    with pytest.raises(ValueError, match="odd dimension"):
        so3.parse_irreps([("ℓ?", 1, 4)])
    with pytest.raises(ValueError, match="sum to embed_dim"):
        so3.head_layout("1x1e", 5)


@pytest.mark.parametrize("d", (3, 5, 9, 11))
@pytest.mark.parametrize("norm", (0.01, 0.5, 1.0, 3.14159))
def test_expm_matches_scipy(d, norm):
    rng = np.random.default_rng(d)
    phi = rng.normal(size=3)
    phi *= norm / np.linalg.norm(phi)
    a = np.einsum("a,aij->ij", phi, so3.generators(d))
    got = np.asarray(transport.expm(jnp.asarray(a, jnp.float32)))
    np.testing.assert_allclose(got, sl.expm(a), atol=2e-6)
    np.testing.assert_allclose(got @ got.T, np.eye(d), atol=4e-6)


def test_taylor4_error_table():
    """ref-architecture §3.3: ‖T4 - exp‖ for l=2 is ~6e-3 at |φ|=0.5 and ~0.13 at |φ|=1."""
    g = so3.generators(5)
    phi = np.array([0.3, -0.2, 0.5])
    for norm, expected in ((0.5, 6e-3), (1.0, 0.13)):
        a = np.einsum("a,aij->ij", phi / np.linalg.norm(phi) * norm, g)
        err = np.abs(np.asarray(transport.taylor4(jnp.asarray(a))) - sl.expm(a)).max()
        assert expected / 3 < err < expected * 3


@pytest.mark.parametrize("d", (3, 5, 11))
def test_taylor4_logabsdet_closed_form(d):
    rng = np.random.default_rng(0)
    for norm in (0.1, 1.0, 2.5):
        phi = rng.normal(size=3)
        phi *= norm / np.linalg.norm(phi)
        t4 = np.asarray(transport.taylor4(jnp.asarray(np.einsum("a,aij->ij", phi, so3.generators(d)))))
        want = np.linalg.slogdet(t4.astype(np.float64))[1]
        assert float(taylor4_logabsdet(jnp.asarray(norm), (d - 1) // 2)) == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_exact_composition_is_group_product():
    rng = np.random.default_rng(1)
    phi = jnp.asarray(rng.normal(size=(1, 4, 3)) * 0.7, jnp.float32)
    pos = jnp.asarray(rng.normal(size=(4, 3)) * 0.7, jnp.float32)
    for log_map in ("reference", "stable"):
        out = compose(phi, pos, "exact", log_map)
        r = sl.expm(np.asarray(hat(out[0, 2]), np.float64))
        want = sl.expm(np.asarray(hat(phi[0, 2]), np.float64)) @ sl.expm(np.asarray(hat(pos[2]), np.float64))
        np.testing.assert_allclose(r, want, atol=2e-5)
    # the stable log is exact at the identity, where the reference's acos log loses precision
    assert np.allclose(so3_log(jnp.eye(3)[None], "stable"), 0.0)


# ----------------------------------------------------------------------------------------------
# the closed-form irrep exponential (transport.so3_exp)
# ----------------------------------------------------------------------------------------------


def _unit_directions(rng, n, norms):
    phi = rng.normal(size=(n, 3))
    return phi * (np.asarray(norms)[:, None] / np.linalg.norm(phi, axis=-1, keepdims=True))


@pytest.mark.parametrize("basis", ["e3nn", "reference"])
@pytest.mark.parametrize("d", [1, 3, 5, 7, 11])
def test_so3_exp_closed_form_matches_scipy_in_float64(basis, d):
    """The closed form itself, every degree (so3_exp dispatches only l ≤ 2 in float32 to it), exact in
    float64 for exact generators (φ = 0 and tiny φ included, where it switches to its series)."""
    g = so3.generators(d, basis)
    degrees = transport.irrep_degrees(g)
    assert int(degrees) == (d - 1) // 2
    rng = np.random.default_rng(d)
    phi = _unit_directions(rng, 24, np.r_[0.0, 1e-9, 1e-4, np.linspace(0.05, 2 * np.pi, 21)])
    with jax.enable_x64(True):
        e, f = transport.closed_form_exp(jnp.asarray(phi), g, degrees, signs=(1, -1))
    want = np.stack([sl.expm(np.einsum("a,aij->ij", p, g)) for p in phi])
    np.testing.assert_allclose(np.asarray(e), want, atol=1e-12)
    np.testing.assert_allclose(np.asarray(f), np.linalg.inv(want), atol=1e-12)


def test_so3_exp_float32_accuracy_and_padded_heads():
    dims = [1, 1, 3, 3, 3, 5, 5]  # per-head generators, zero-padded to D = 5
    gens = np.zeros((len(dims), 3, 5, 5), np.float32)
    for head, d in enumerate(dims):
        gens[head, :, :d, :d] = so3.generators(d, "reference")
    assert list(transport.irrep_degrees(gens)) == [0, 0, 1, 1, 1, 2, 2]
    rng = np.random.default_rng(0)
    phi = _unit_directions(rng, 64, np.linspace(0.0, 2 * np.pi, 64))
    got = np.asarray(transport.so3_exp(jnp.asarray(phi, jnp.float32), gens)[0])
    want = np.stack([[sl.expm(m) for m in row]
                     for row in np.einsum("na,haij->nhij", phi, gens.astype(np.float64))])
    np.testing.assert_allclose(got, want, atol=3e-6)  # measured 1.7e-6 for l = 2 (expm: 1.1e-6)


@pytest.mark.slow  # float64 Hessians of both exponentials at four points: ~15 s of compiles
def test_so3_exp_derivatives_are_smooth_at_zero_and_match_expm():
    g = so3.generators(5, "e3nn")
    w = jnp.asarray(np.random.default_rng(1).normal(size=(5, 5)))
    with jax.enable_x64(True):
        for p in ([0.0, 0.0, 0.0], [1e-9, 0.0, 0.0], [0.05, -0.02, 0.01], [0.3, 1.2, -2.0]):
            p = jnp.asarray(p)
            ours = lambda q: jnp.sum(w * transport.closed_form_exp(q, g, np.asarray(2))[0])  # noqa: E731
            ref = lambda q: jnp.sum(w * transport.expm(jnp.einsum("a,aij->ij", q, g)))  # noqa: E731
            np.testing.assert_allclose(jax.grad(ours)(p), jax.grad(ref)(p), atol=1e-12)
            np.testing.assert_allclose(jax.hessian(ours)(p), jax.hessian(ref)(p), atol=1e-11)


def test_so3_exp_uses_expm_in_float64_for_rounded_generators():
    """float32-rounded generators (as the model holds them): in float64 so3_exp must equal expm of the
    rounded matrix, which the closed form misses by ~1e-7 (the spectrum is no longer exactly i m)."""
    g = so3.generators(5, "reference").astype(np.float32)
    phi = _unit_directions(np.random.default_rng(3), 8, np.linspace(0.5, 3.0, 8))
    with jax.enable_x64(True):
        p = jnp.asarray(phi)
        got = np.asarray(transport.so3_exp(p, g)[0])
        closed = np.asarray(transport.closed_form_exp(p, g, transport.irrep_degrees(g))[0])
    want = np.stack([sl.expm(np.einsum("a,aij->ij", x, g.astype(np.float64))) for x in phi])
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert np.abs(closed - want).max() > 1e-9  # the reason for the dispatch


def test_so3_exp_falls_back_for_matrices_that_are_not_a_representation():
    rng = np.random.default_rng(2)
    skew = rng.normal(size=(3, 4, 4))
    skew = skew - skew.transpose(0, 2, 1)  # antisymmetric, but no so(3) commutation relations
    assert transport.irrep_degrees(skew) is None
    assert transport.irrep_degrees(jnp.asarray(skew)) is None  # a jax array: not inspected
    phi = jnp.asarray(rng.normal(size=(2, 3)))
    with jax.enable_x64(True):
        got = transport.so3_exp(phi, skew)[0]
    want = np.stack([sl.expm(np.einsum("a,aij->ij", p, skew)) for p in np.asarray(phi)])
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-10)
