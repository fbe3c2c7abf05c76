"""SO(3) irreps: head layout, generators in two real bases, and the change of basis between them.

Everything here is numpy float64, built once per argument and cached (e3nn-jax ``so3.py`` style); public
functions return copies so callers cannot corrupt the cache.

Two real bases of the spin-l irrep are supported:

* ``"e3nn"`` — e3nn-jax's: components ordered m = -l..l with **y** as the polar axis.
* ``"reference"`` — the PyTorch reference's tesseral basis: components ordered
  ``[m0, c1, s1, c2, s2, ..., cl, sl]`` with **z** as the polar axis.

Both use the same rotation axes (x, y, z), so φ needs no conversion.  They differ by a fixed orthogonal
``Q_l`` with ``Q_l G_ref[a] Q_l^T = G_e3nn[a]`` for every a, which :func:`change_of_basis` *derives* (the
one-dimensional null space of the intertwining equations), never hard-codes.
"""

import dataclasses
import functools

import e3nn_jax as e3nn
import numpy as np

Basis = str  # "e3nn" | "reference"
BASES = ("e3nn", "reference")


# ----------------------------------------------------------------------------------------------
# irreps specs
# ----------------------------------------------------------------------------------------------


def parse_irreps(spec) -> tuple[tuple[str, int, int], ...]:
    """Normalise an irreps description to the reference's ``((label, mult, dim), ...)`` form.

    Accepts an e3nn-jax string (``"5x0e+3x1e+1x2e"``; parity is ignored: the gauge group is SO(3)), an
    ``e3nn.Irreps``, or the reference's list ``[("ℓ0", 5, 1), ("ℓ1", 3, 3), ("ℓ2", 1, 5)]`` (lists or
    tuples; the label is informational, the dimension decides the irrep).

    >>> parse_irreps("5x0e+3x1e+1x2e")
    (('ℓ0', 5, 1), ('ℓ1', 3, 3), ('ℓ2', 1, 5))
    """
    if isinstance(spec, (str, e3nn.Irreps)):
        try:
            irreps = e3nn.Irreps(spec)
        except Exception as err:  # e3nn raises ValueError with a terse message
            raise ValueError(
                f"cannot parse irreps {spec!r}: expected e.g. '5x0e+3x1e+1x2e' ({err})"
            ) from None
        return tuple((f"ℓ{mi.ir.l}", int(mi.mul), 2 * mi.ir.l + 1) for mi in irreps if mi.mul > 0)
    out = []
    for entry in spec:
        if len(entry) != 3:
            raise ValueError(
                f"irrep_spec entry {entry!r} must be (label, multiplicity, dim), e.g. ('ℓ1', 3, 3)"
            )
        label, mult, dim = entry
        mult, dim = int(mult), int(dim)
        if dim < 1 or dim % 2 == 0:
            raise ValueError(
                f"irrep_spec entry {tuple(entry)!r}: SO(3) irreps have odd dimension 2l+1, got {dim}"
            )
        if mult < 0:
            raise ValueError(f"irrep_spec entry {tuple(entry)!r}: multiplicity must be >= 0")
        if mult:
            out.append((str(label), mult, dim))
    return tuple(out)


def irreps_string(spec) -> str:
    """``(("ℓ0",5,1), ...)`` -> ``"5x0e+3x1e+1x2e"``."""
    return "+".join(f"{m}x{(d - 1) // 2}e" for _, m, d in parse_irreps(spec))


@dataclasses.dataclass(frozen=True)
class HeadLayout:
    """Which channels of the K-dim belief each head owns.

    Attributes:
      dims: head dimensions in channel order (one head per irrep copy, then scalar padding heads).
      labels: ``"ℓ{l}"`` per head; padding heads are ``"ℓ0_pad"``.
      offsets: first channel of each head.
      embed_dim: K.
    """

    dims: tuple[int, ...]
    labels: tuple[str, ...]
    offsets: tuple[int, ...]
    embed_dim: int

    @property
    def n_heads(self) -> int:
        return len(self.dims)

    @property
    def ls(self) -> tuple[int, ...]:
        return tuple((d - 1) // 2 for d in self.dims)


@functools.cache
def _head_layout(spec: tuple, embed_dim: int, pad: bool) -> HeadLayout:
    dims, labels = [], []
    for label, mult, dim in spec:
        dims += [dim] * mult
        labels += [f"ℓ{(dim - 1) // 2}"] * mult
    total = sum(dims)
    if total > embed_dim:
        raise ValueError(
            f"irreps {irreps_string(spec)} have total dimension {total} > embed_dim {embed_dim}; "
            f"make the irrep dimensions sum to embed_dim"
        )
    if total < embed_dim:
        if not pad:
            raise ValueError(
                f"irreps {irreps_string(spec)} have total dimension {total} != embed_dim {embed_dim}; "
                f"make them sum to embed_dim (or allow scalar padding heads)"
            )
        dims += [1] * (embed_dim - total)
        labels += ["ℓ0_pad"] * (embed_dim - total)
    offsets = tuple(int(x) for x in np.cumsum([0] + dims[:-1]))
    return HeadLayout(tuple(dims), tuple(labels), offsets, embed_dim)


def head_layout(spec, embed_dim: int, pad: bool = False) -> HeadLayout:
    """Head layout of ``spec`` inside a K = ``embed_dim`` belief (see :class:`HeadLayout`)."""
    return _head_layout(parse_irreps(spec), int(embed_dim), bool(pad))


# ----------------------------------------------------------------------------------------------
# generators
# ----------------------------------------------------------------------------------------------


@functools.cache
def _reference_generators(dim: int) -> np.ndarray:
    """Spin-l generators in the reference's tesseral basis, float64 (3, d, d).

    Built as in ref-architecture §2.1: complex spherical J_a in the m = -l..l basis, conjugated by the
    tesseral transform S (rows [m0, c1, s1, ...]), then the antisymmetric real part of S (i J_a) S^†.
    """
    if dim % 2 == 0:
        raise ValueError(f"SO(3) irreps have odd dimension, got {dim}")
    l = (dim - 1) // 2
    m = np.arange(-l, l + 1)
    jz = np.diag(m).astype(np.complex128)
    jp = np.zeros((dim, dim), np.complex128)  # the reference's "J_plus"
    jm = np.zeros((dim, dim), np.complex128)
    for i, mi in enumerate(m):
        if mi < l:
            jp[i, i + 1] = np.sqrt((l - mi) * (l + mi + 1))
        if mi > -l:
            jm[i, i - 1] = np.sqrt((l + mi) * (l - mi + 1))
    jx = (jp + jm) / 2
    jy = (jp - jm) / 2j
    s = np.zeros((dim, dim), np.complex128)
    s[0, l] = 1.0
    r2 = 1 / np.sqrt(2)
    for mm in range(1, l + 1):
        s[2 * mm - 1, l + mm] = r2
        s[2 * mm - 1, l - mm] = (-1) ** mm * r2
        s[2 * mm, l + mm] = -1j * r2
        s[2 * mm, l - mm] = 1j * (-1) ** mm * r2
    gens = []
    for j in (jx, jy, jz):
        g = np.real(s @ (1j * j) @ s.conj().T)
        gens.append((g - g.T) / 2)
    return np.stack(gens)


@functools.cache
def _e3nn_generators(dim: int) -> np.ndarray:
    return np.asarray(e3nn.generators((dim - 1) // 2), np.float64)


def generators(dim: int, basis: Basis = "e3nn") -> np.ndarray:
    """Real antisymmetric so(3) generators of the irrep of dimension ``dim``: float64 (3, d, d).

    ``[G_x, G_y] = G_z`` and ``sum_a G_a^2 = -l(l+1) I`` in both bases.
    """
    if basis == "e3nn":
        return _e3nn_generators(dim).copy()
    if basis == "reference":
        return _reference_generators(dim).copy()
    raise ValueError(f"unknown basis {basis!r}; expected one of {BASES}")


@functools.cache
def _change_of_basis(dim: int) -> np.ndarray:
    g_ref, g_e3 = _reference_generators(dim), _e3nn_generators(dim)
    eye = np.eye(dim)
    # Q G_ref[a] - G_e3[a] Q = 0  <=>  (G_ref[a]^T (x) I - I (x) G_e3[a]) vec_F(Q) = 0 (column-major vec)
    rows = [np.kron(g_ref[a].T, eye) - np.kron(eye, g_e3[a]) for a in range(3)]
    _, sv, vt = np.linalg.svd(np.concatenate(rows))
    if dim > 1 and not (sv[-1] < 1e-9 < sv[-2]):
        raise AssertionError(f"intertwiner for d={dim} is not unique (singular values {sv[-3:]})")
    q = vt[-1].reshape(dim, dim, order="F")
    q *= np.sqrt(dim) / np.linalg.norm(q)
    first = q.ravel()[np.argmax(np.abs(q.ravel()) > 1e-6)]
    return q * np.sign(first)  # convention: first non-zero entry (row-major) positive


def change_of_basis(dim: int) -> np.ndarray:
    """Orthogonal ``Q`` (d, d) with ``Q @ G_ref[a] @ Q.T == G_e3nn[a]``; vectors map as ``v_e3nn = Q v_ref``.

    >>> np.round(change_of_basis(3)).astype(int).tolist()
    [[0, 1, 0], [0, 0, 1], [-1, 0, 0]]
    """
    return _change_of_basis(dim).copy()


def block_generators(layout: HeadLayout, basis: Basis = "e3nn") -> np.ndarray:
    """Block-diagonal (3, K, K) float64 generators: one irrep block per head, zeros for scalars."""
    k = layout.embed_dim
    out = np.zeros((3, k, k))
    for off, d in zip(layout.offsets, layout.dims):
        out[:, off : off + d, off : off + d] = generators(d, basis)
    return out


def block_change_of_basis(layout: HeadLayout) -> np.ndarray:
    """Block-diagonal (K, K) ``Q`` mapping a reference-basis belief to the e3nn basis."""
    k = layout.embed_dim
    out = np.zeros((k, k))
    for off, d in zip(layout.offsets, layout.dims):
        out[off : off + d, off : off + d] = change_of_basis(d)
    return out
