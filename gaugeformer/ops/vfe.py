"""The VFE_dynamic feed-forward: unrolled, preconditioned descent on a free energy (ref-ffn.md §3).

Beliefs come per head group (``[B, N, h, d(, d)]`` per group of equal-dimension heads, see
:func:`gaugeformer.ops.blocks.head_groups`); the FFN's attention β is *one* ``[B, N, M]`` matrix over the
KL summed over all heads, and its trust regions couple all K channels of a token.

Transport here is the exact exponential, so ``R_i = exp(φ_i·G)`` is orthogonal and every pairwise quantity
factorizes exactly through the "pulled-back" per-token quantities (factorized-attention.md §3)::

    â_i = R_iᵀ μ_i        Σ̌_i = R_iᵀ Σ_i R_i        P̌_j = R_jᵀ (Σ_j + εI)⁻¹ R_j        b̌_j = R_jᵀ μ_j

so that ``(Ω_ij Σ_j Ω_ijᵀ + εI)⁻¹ = R_i P̌_j R_iᵀ`` and ``g_ij = R_i P̌_j (â_i - b̌_j)``.  The only
approximation is the reference's ``ε`` inside ``log(diag chol(Ω Σ_j Ωᵀ + εI))``, taken from ``chol(Σ_j + εI)``
(the determinant is exact; the ``ε`` offset differs at O(ε²)).
"""

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gaugeformer.axes import Array, Bool, Float
from gaugeformer.ops import gaussian as gs
from gaugeformer.ops import precision as pr
from gaugeformer.ops import small as sm
from gaugeformer.ops import tiling
from gaugeformer.ops.transport import group_exp
from gaugeformer.ops.attention import attention_logits, attention_weights, pair_quadratic

Groups = Sequence[Array]  # one array per head group

_RIDGE_LADDER = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1)


@dataclasses.dataclass(frozen=True)
class VFEParams:
    """Static hyper-parameters of the VFE FFN (reference names in ref-ffn §3.1).

    Attributes:
      alpha: self-coupling weight α (the loss's α in the reference).
      kappa: temperature κ of the FFN's own β.
      lam: belief-alignment weight λ.
      n_iter: unrolled iterations T.
      eps: regulariser added to covariances before inverses/Cholesky.
      eps_log: offset inside ``log(diag L)`` (reference 1e-6; clean 0).
      beta_floor: lower clamp of β (reference 1e-6 lets future keys leak; None = strict causality).
      coupling_sign: +1 as the reference writes the softmax-coupling term; -1 is the true derivative.
      grad_clip: elementwise clamp of the μ/Σ gradients.
      mu_trust: whitened μ trust radius.
      sigma_step: Σ step = ``sigma_step * lr``.
      sigma_trust: whitened Frobenius trust radius of the Σ step.
      update_sigma: take the Σ step at all.
      phi_lr: step of the φ update.
      phi_max_norm: cap on ‖φ‖ after the φ update.
      phi_grad_query_role: differentiate the φ energy only through each token's query row (causal).
    """

    alpha: float
    kappa: float
    lam: float = 1.0
    n_iter: int = 1
    eps: float = 1e-6
    eps_log: float = 1e-6
    beta_floor: float | None = 1e-6
    coupling_sign: float = 1.0
    grad_clip: float = 1e3
    mu_trust: float = 2.0
    sigma_step: float = 0.05
    sigma_trust: float = 0.1
    update_sigma: bool = True
    phi_lr: float = 0.05
    phi_max_norm: float = 3.14159
    phi_grad_query_role: bool = False


# ----------------------------------------------------------------------------------------------
# per-token pull-back and the head-summed KL
# ----------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _Pulled:
    """Per-token quantities of one head group (all ``[B, N, h, ...]``; ``r`` has one head when shared)."""

    r: Array  # rotations R_i                      [B,N,h or 1,d,d]
    a: Array  # R_iᵀ μ_i                           [B,N,h,d]
    sig: Array  # R_iᵀ Σ_i R_i                     [B,N,h,d,d]
    p: Array  # R_iᵀ (Σ_i + εI)⁻¹ R_i              [B,N,h,d,d]
    inv: Array  # (Σ_i + εI)⁻¹                      [B,N,h,d,d]
    ld: Array  # 2 Σ log(diag chol(Σ_i + εI) + eps_log)   [B,N,h]
    ok: Array  # per head: all Cholesky factors finite, broadcast over tokens (so it tiles like the rest) [B,N,h]


def _pull_back(mu, sigma, r, eps, eps_log) -> _Pulled:
    rt = jnp.swapaxes(r, -1, -2)
    chol = sm.cholesky(gs.add_eye(sigma, eps))
    ok = jnp.broadcast_to(jnp.all(jnp.isfinite(chol), axis=(0, 1, 3, 4)), chol.shape[:3])
    inv = gs.spd_inverse(chol)
    return _Pulled(
        r=r,
        a=sm.mtv(r, mu),
        sig=sm.mm(sm.mm(rt, sigma), r),
        p=sm.mm(sm.mm(rt, inv), r),
        inv=inv,
        ld=gs.chol_logdet(chol, eps_log),
        ok=ok,
    )


def pull_back(mu: Groups, sigma: Groups, rots: Groups, eps: float, eps_log: float) -> list[_Pulled]:
    """:class:`_Pulled` of every head group."""
    return [_pull_back(m, s, r, eps, eps_log) for m, s, r in zip(mu, sigma, rots)]


def _centre(t: _Pulled) -> Array:
    """Expansion centre: the first token's pulled-back mean (seen by every query; constant for autodiff).

    Pulled-back means of nearby beliefs are nearly equal, so expanding around one of them avoids the
    cancellation of ``a_iᵀPa_i - 2a_iᵀPb_j + b_jᵀPb_j`` (factorized-attention §1).
    """
    return jax.lax.stop_gradient(t.a[:, :1])


def _pair_kls(tq: _Pulled, tk: _Pulled, eps: float, c: Array) -> tuple[Array, Array]:
    """Per-head ``(KL_β, K̂)`` of one group, ``[B, h, N, M]`` before clamping.

    Query-side quantities come from ``tq`` and key-side ones from ``tk`` (the same object except in the
    causal φ step).  ``KL_β`` regularises Σ_i in the trace (the β path); ``K̂`` does not (the coupling path,
    ref-ffn §3.3).
    """
    d = tq.a.shape[-1]
    a, b = tq.a - c, tk.a - c
    pb = sm.mv(tk.p, b)
    quad_b = pr.einsum("bmhk,bmhk->bhm", b, pb)[:, :, None, :]
    trace_p = jnp.trace(tk.p, axis1=-2, axis2=-1).transpose(0, 2, 1)[:, :, None, :]
    ld_k, ld_q = tk.ld.transpose(0, 2, 1), tq.ld.transpose(0, 2, 1)
    base = pair_quadratic(tq.sig, a, tk.p, pb) + quad_b - d + ld_k[:, :, None, :] - ld_q[..., None]
    return 0.5 * (base + eps * trace_p), 0.5 * base


def block_kl(pulled: list[_Pulled], eps: float, n_pad: Sequence[np.ndarray], keys: list[_Pulled] | None = None,
             c: list[Array] | None = None) -> tuple[Float[Array, "B N M"], Float[Array, "B N M"]]:
    """Head-summed ``(KL_β, K̂)``: each head's KL is clamped at 0, then all heads of all groups are summed.

    ``n_pad`` counts each head's padding slots (per group, ``[h]``); ``keys`` (default: ``pulled``) supplies
    the key-side quantities; ``c`` is the expansion centre per group (default :func:`_centre` of the keys;
    tiles pass the global one).  A head whose Cholesky failed anywhere contributes ``eps`` everywhere (the
    reference's fallback).
    """
    keys = pulled if keys is None else keys
    c = [_centre(k) for k in keys] if c is None else c
    kl_beta = kl_hat = 0.0
    for tq, tk, cg, pad in zip(pulled, keys, c, n_pad):
        kb, kh = _pair_kls(tq, tk, eps, cg)
        if pad.any():  # a padding slot adds 1/(1+ε) - 1 to K̂'s unregularised trace term (0 to KL_β)
            kh = kh + (0.5 * eps * pad / (1.0 + eps)).astype(np.float32)[None, :, None, None]
        ok = tq.ok[0, 0][None, :, None, None]
        kl_beta = kl_beta + jnp.where(ok, jnp.maximum(kb, 0.0), eps).sum(1)
        kl_hat = kl_hat + jnp.where(ok, jnp.maximum(kh, 0.0), 0.0).sum(1)
    return kl_beta, kl_hat


def ffn_kl(mu: Groups, sigma: Groups, rots: Groups, hp: VFEParams, valid: Sequence[np.ndarray]
           ) -> Float[Array, "B N M"]:
    """The head-summed ``KL_β`` of :func:`vfe_iteration` as a full ``[B, N, M]`` matrix (for hooks)."""
    return block_kl(pull_back(mu, sigma, rots, hp.eps, hp.eps_log), hp.eps, _n_pad(valid))[0]


def _n_pad(valid: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [(~v).sum(-1) for v in valid]


def ffn_beta(kl: Float[Array, "B N M"], mask: Bool[Array, "N M"], hp: VFEParams) -> Float[Array, "B N M"]:
    logits = attention_logits(kl[:, None], hp.kappa, mask)[:, 0]
    return attention_weights(logits, hp.beta_floor)


def rotations(gens: Sequence[np.ndarray], phi: Float[Array, "B N 3"]) -> list[Array]:
    """``R = exp(φ·G)`` per head group (:func:`~gaugeformer.ops.transport.group_exp`)."""
    return [group_exp(phi, g)[0] for g in gens]


# ----------------------------------------------------------------------------------------------
# one iteration
# ----------------------------------------------------------------------------------------------


def _weighted_sums(beta, w, keys: _Pulled, pa) -> dict:
    """The iteration's only pairwise reductions: ``Σ_j β P̌``, ``Σ_j β P̌ b̌``, ``Σ_j β`` and the same with w."""
    return {
        "bp": pr.einsum("bnm,bmhkl->bnhkl", beta, keys.p),
        "bpa": pr.einsum("bnm,bmhk->bnhk", beta, pa),
        "rb": beta.sum(-1),
        "wp": pr.einsum("bnm,bmhkl->bnhkl", w, keys.p),
        "wpa": pr.einsum("bnm,bmhk->bnhk", w, pa),
        "rw": w.sum(-1),
    }


def _group_sums(beta, w, keys: list[_Pulled], pa: list[Array]) -> list[dict]:
    return [_weighted_sums(beta, w, k, p) for k, p in zip(keys, pa)]


def _tiled_sums(t: list[_Pulled], pa: list[Array], n_pad, hp: VFEParams, plan: tiling.TilePlan) -> list[dict]:
    """:func:`_group_sums` of the FFN's own β (and ``w = K̂·β``) over key tiles: no ``[B,N,M]`` tensor."""
    c = [_centre(g) for g in t]

    def logits_fn(qb, kb, i, j, ok):
        kl_beta, kl_hat = block_kl(qb, hp.eps, n_pad, kb[0], c)
        return attention_logits(kl_beta[:, None], hp.kappa, ok)[:, 0], kl_hat

    def reduce_fn(acc, beta, kl_hat, qb, kb, i, j, ok):
        return jax.tree.map(jnp.add, acc, _group_sums(beta, kl_hat * beta, kb[0], kb[1]))

    def init_fn(qb):
        z = jnp.zeros_like
        return [{"bp": z(g.p), "bpa": z(g.a), "rb": z(g.ld[..., 0]), "wp": z(g.p), "wpa": z(g.a),
                 "rw": z(g.ld[..., 0])} for g in qb]

    out = tiling.softmax_reduce(plan, tiling.pad_tokens(t, plan), tiling.pad_tokens((t, pa), plan),
                                logits_fn, reduce_fn, init_fn, hp.beta_floor)
    return jax.tree.map(lambda x: tiling.unblock(x, plan, axis=1), out)


def ffn_plan(n: int, tile: int | None, pattern: str, window: int, mask_self: bool, hp: VFEParams
             ) -> tiling.TilePlan:
    """The FFN's tiling: masked tiles are skipped only without a floor (then masked keys weigh exactly 0)."""
    return tiling.make_plan(n, tile, pattern, window, mask_self, skip=hp.beta_floor is None)


def vfe_iteration(mu: Groups, sigma: Groups, rots: Groups, mu_p: Groups, sigma_p: Groups,
                  mask: Bool[Array, "N N"], lr: Float[Array, ""] | float, hp: VFEParams, valid: Sequence[np.ndarray],
                  beta_override: Float[Array, "B N N"] | None = None, plan: tiling.TilePlan | None = None):
    """One VFE step on head groups (beliefs ``[B, N, h, d(, d)]`` per group, rotations ``[B, N, h or 1, d, d]``,
    ``valid [h, d]`` per group marking real slots).

    With a tile ``plan`` (and no ``beta_override``) the pairwise sums run in tiles and no ``[B,N,M]`` tensor
    exists; otherwise ``mask [N,M]`` is used and the full matrices are built.

    Returns ``(mu, sigma, beta [B,N,M] or None, kl [B,N,M] or None)`` (None when tiled); padding blocks of
    ``sigma`` are not reset (:func:`gaugeformer.ops.blocks.impose_groups`).
    """
    t = pull_back(mu, sigma, rots, hp.eps, hp.eps_log)
    a = [g.a - _centre(g) for g in t]
    pa = [sm.mv(g.p, x) for g, x in zip(t, a)]
    n_pad = _n_pad(valid)
    if plan is not None and beta_override is None:
        sums = _tiled_sums(t, pa, n_pad, hp, plan)
        beta = kl_beta = None
    else:
        kl_beta, kl_hat = block_kl(t, hp.eps, n_pad)
        beta = ffn_beta(kl_beta, mask, hp) if beta_override is None else beta_override
        sums = _group_sums(beta, kl_hat * beta, t, pa)
    g_mu, g_sig = zip(*(_gradients(*args, hp) for args in zip(t, a, sums, mu, mu_p, sigma_p)))

    # "natural" gradient and the whitened μ trust region (all K channels of a token together)
    delta = [-lr * sm.mv(s, g) for s, g in zip(sigma, g_mu)]
    diag = [jnp.diagonal(s, axis1=-2, axis2=-1) for s in sigma]
    wnorm2 = sum(jnp.sum((x / jnp.sqrt(jnp.maximum(dg, hp.eps))) ** 2, axis=(-2, -1)) for x, dg in zip(delta, diag))
    scale = jnp.minimum(1.0, hp.mu_trust / (jnp.sqrt(wnorm2) + hp.eps))[..., None, None]
    mu = [m + scale * x for m, x in zip(mu, delta)]

    if hp.update_sigma:
        nat = [-0.5 * (dg[..., :, None] * dg[..., None, :]) * g for dg, g in zip(diag, g_sig)]
        sigma = retract_spd(sigma, nat, hp.sigma_step * lr, hp.sigma_trust, hp.eps, valid)
    return mu, sigma, beta, kl_beta


def _gradients(t: _Pulled, a, sums: dict, mu, mu_p, sigma_p, hp: VFEParams):
    """One group's clipped ``(∂F/∂μ, ∂F/∂Σ)`` from its weighted sums (ref-ffn §3.3)."""
    row_beta = sums["rb"][:, :, None, None, None]  # [B,N,1,1,1]
    row_w = sums["rw"][:, :, None, None]  # [B,N,1,1]
    g_bar = sm.mv(t.r, sm.mv(sums["bp"], a) - sums["bpa"])
    g_w = sm.mv(t.r, sm.mv(sums["wp"], a) - sums["wpa"])
    coup = (hp.lam / hp.kappa) * (g_w - row_w * g_bar)
    inv_p = gs.spd_inverse(sm.cholesky(gs.add_eye(sigma_p, hp.eps)))
    g_self = hp.alpha * sm.mv(inv_p, mu - mu_p)
    h_self = 0.5 * hp.alpha * (inv_p - t.inv)
    h_align = 0.5 * hp.lam * (sm.sandwich(t.r, sums["bp"]) - row_beta * t.inv)
    g_mu = jnp.clip(g_self + hp.lam * g_bar + hp.coupling_sign * coup, -hp.grad_clip, hp.grad_clip)
    g_sig = jnp.clip(h_self + h_align, -hp.grad_clip, hp.grad_clip)
    return g_mu, g_sig


def retract_spd(sigma: Groups, direction: Groups, step, trust: float, eps: float, valid: Sequence[np.ndarray]
                ) -> list[Array]:
    """The reference's SPD retraction (ref-ffn §3.3 step 6), per token over all heads of all groups.

    Diagonally whitened step capped at Frobenius norm ``trust``, then the smallest ridge ``c·r·I`` from the
    ladder for which *every* matrix of the call has a Cholesky factor (the reference's batch-global test);
    if none does, the old Σ plus ``0.1·r·I``.  ``r`` is the mean |diagonal| over the K real channels
    (``valid``, per group ``[h, d]``); the ridge goes on real channels only.
    """
    sigma = [gs.sym(s) for s in sigma]
    direction = [gs.sym(x) for x in direction]
    dg = [jnp.maximum(jnp.diagonal(s, axis1=-2, axis2=-1), eps) for s in sigma]
    outer = [jnp.sqrt(x[..., :, None] * x[..., None, :]) for x in dg]
    bw = [x / o for x, o in zip(direction, outer)]
    fro = jnp.sqrt(sum(jnp.sum(x * x, axis=(-3, -2, -1)) for x in bw))
    shrink = jnp.minimum(1.0, trust / (fro + eps))[..., None, None, None]
    new = [gs.sym(s + step * o * (shrink * x)) for s, o, x in zip(sigma, outer, bw)]
    real = [jnp.asarray(v, x.dtype) for v, x in zip(valid, new)]
    channels = sum(int(v.sum()) for v in valid)
    ridge = jnp.maximum(sum(jnp.sum(jnp.abs(jnp.diagonal(x, axis1=-2, axis2=-1)) * r, axis=(-2, -1))
                            for x, r in zip(new, real)) / channels, eps)[..., None, None, None]
    eye = [jnp.eye(x.shape[-1], dtype=x.dtype) * r[..., :, None] for x, r in zip(new, real)]
    coeff, found = _ridge_coefficient(jax.lax.stop_gradient(new), jax.lax.stop_gradient(ridge), eye)
    return [jnp.where(found, x + coeff * ridge * i, s + 0.1 * ridge * i) for x, s, i in zip(new, sigma, eye)]


def _ridge_coefficient(new: list[Array], ridge: Array, eye: list[Array]) -> tuple[Array, Array]:
    """First ladder entry c whose ``Σ' + c·r·I`` factorises for every matrix; ``(c, found)``.

    A while loop (not differentiated: the choice is a constant for backprop) so the common case costs one
    Cholesky per group and the compiled graph holds one.
    """
    ladder = jnp.asarray(_RIDGE_LADDER, ridge.dtype)

    def cond(state):
        i, ok = state
        return (i < len(_RIDGE_LADDER)) & ~ok

    def body(state):
        i, _ = state
        ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(sm.cholesky(x + ladder[i] * ridge * e)))
                                for x, e in zip(new, eye)]))
        return jnp.where(ok, i, i + 1), ok

    i, found = jax.lax.while_loop(cond, body, (jnp.asarray(0), jnp.asarray(False)))
    return ladder[jnp.minimum(i, len(_RIDGE_LADDER) - 1)], found


# ----------------------------------------------------------------------------------------------
# the φ step
# ----------------------------------------------------------------------------------------------


def _energy_tiled(pulled: list[_Pulled], keys: list[_Pulled], n_pad, hp: VFEParams, plan: tiling.TilePlan
                  ) -> Array:
    """``Σ_{b,i,j} β_ij KL_ij`` of the FFN's β over key tiles (the φ step's energy without ``[B,N,M]``)."""
    c = [_centre(k) for k in keys]

    def logits_fn(qb, kb, i, j, ok):
        kl, _ = block_kl(qb, hp.eps, n_pad, kb, c)
        return attention_logits(kl[:, None], hp.kappa, ok)[:, 0], kl

    def reduce_fn(acc, beta, kl, qb, kb, i, j, ok):
        return acc + jnp.sum(beta * kl, axis=-1)

    rows = tiling.softmax_reduce(plan, tiling.pad_tokens(pulled, plan), tiling.pad_tokens(keys, plan),
                                 logits_fn, reduce_fn, lambda qb: jnp.zeros(qb[0].ld.shape[:2], qb[0].ld.dtype),
                                 hp.beta_floor)
    return jnp.sum(tiling.unblock(rows, plan, axis=1))


def phi_energy(phi: Float[Array, "B N 3"], mu: Groups, sigma: Groups, gens: Sequence[np.ndarray],
               mask: Bool[Array, "N N"], hp: VFEParams, valid: Sequence[np.ndarray],
               plan: tiling.TilePlan | None = None):
    """``λ Σ_{b,i,j} β_ij KL_ij`` of the FFN's own attention, as a function of φ (μ, Σ held fixed).

    With ``hp.phi_grad_query_role`` the keys' frames are constants, so ``∂/∂φ_i`` only sees row i (its own
    attention); otherwise φ_i is also differentiated in its role as a key of every later query, which
    makes the updated φ_i depend on future tokens (the reference).  With a tile ``plan`` the energy is
    reduced in tiles and the aux ``(β, KL)`` is ``(None, None)``.
    """
    pulled = pull_back(mu, sigma, rotations(gens, phi), hp.eps, hp.eps_log)
    keys = pulled
    if hp.phi_grad_query_role:
        keys = pull_back(mu, sigma, rotations(gens, jax.lax.stop_gradient(phi)), hp.eps, hp.eps_log)
    n_pad = _n_pad(valid)
    if plan is not None:
        return hp.lam * _energy_tiled(pulled, keys, n_pad, hp, plan), (None, None)
    kl, _ = block_kl(pulled, hp.eps, n_pad, keys)
    beta = ffn_beta(kl, mask, hp)
    return hp.lam * jnp.sum(beta * kl), (beta, kl)


def phi_step(phi: Float[Array, "B N 3"], mu: Groups, sigma: Groups, gens: Sequence[np.ndarray],
             mask: Bool[Array, "N N"], hp: VFEParams, valid: Sequence[np.ndarray],
             plan: tiling.TilePlan | None = None):
    """``φ - phi_lr ∇_φ E`` with the gradient treated as a constant, then ``‖φ_i‖ ≤ phi_max_norm``.

    Returns ``(φ, β, KL)``; β and KL are None when tiled (``plan``)."""
    grad, (beta, kl) = jax.grad(phi_energy, has_aux=True)(
        jax.lax.stop_gradient(phi), jax.lax.stop_gradient(mu), jax.lax.stop_gradient(sigma), gens, mask,
        hp, valid, plan,
    )
    new = phi - hp.phi_lr * jax.lax.stop_gradient(grad)
    norm = jnp.linalg.norm(new, axis=-1, keepdims=True)
    new = jnp.where(norm > hp.phi_max_norm, new * (hp.phi_max_norm / jnp.maximum(norm, 1e-30)), new)
    return new, beta, kl
