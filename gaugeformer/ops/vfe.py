"""The VFE_dynamic feed-forward: unrolled, preconditioned descent on a free energy (ref-ffn.md §3).

Beliefs are per head, padded to a common dimension (``[B, N, H, D]``, see :mod:`gaugeformer.ops.blocks`);
the FFN's attention β is *one* ``[B, N, M]`` matrix over the head-summed KL, and its trust regions couple all
K channels of a token.

Transport here is the exact exponential, so ``R_i = exp(φ_i·G)`` is orthogonal and every pairwise quantity
factorizes exactly through the "pulled-back" per-token quantities (factorized-attention.md §3)::

    â_i = R_iᵀ μ_i        Σ̌_i = R_iᵀ Σ_i R_i        P̌_j = R_jᵀ (Σ_j + εI)⁻¹ R_j        b̌_j = R_jᵀ μ_j

so that ``(Ω_ij Σ_j Ω_ijᵀ + εI)⁻¹ = R_i P̌_j R_iᵀ`` and ``g_ij = R_i P̌_j (â_i - b̌_j)``.  The only
approximation is the reference's ``ε`` inside ``log(diag chol(Ω Σ_j Ωᵀ + εI))``, taken from ``chol(Σ_j + εI)``
(the determinant is exact; the ``ε`` offset differs at O(ε²)).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from gaugeformer.axes import Array, Bool, Float
from gaugeformer.ops import gaussian as gs
from gaugeformer.ops import precision as pr
from gaugeformer.ops import small as sm
from gaugeformer.ops import tiling
from gaugeformer.ops.transport import so3_exp
from gaugeformer.ops.attention import attention_logits, attention_weights, pair_quadratic

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
    """Per-token quantities (all ``[B, N, H, ...]``)."""

    r: Array  # rotations R_i                      [B,N,H,D,D]
    a: Array  # R_iᵀ μ_i                           [B,N,H,D]
    sig: Array  # R_iᵀ Σ_i R_i                     [B,N,H,D,D]
    p: Array  # R_iᵀ (Σ_i + εI)⁻¹ R_i              [B,N,H,D,D]
    inv: Array  # (Σ_i + εI)⁻¹                      [B,N,H,D,D]
    ld: Array  # 2 Σ log(diag chol(Σ_i + εI) + eps_log)   [B,N,H]
    ok: Array  # per head: all Cholesky factors finite, broadcast over tokens (so it tiles like the rest) [B,N,H]


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


def _centre(t: _Pulled) -> Array:
    """Expansion centre: the first token's pulled-back mean (seen by every query; constant for autodiff).

    Pulled-back means of nearby beliefs are nearly equal, so expanding around one of them avoids the
    cancellation of ``a_iᵀPa_i - 2a_iᵀPb_j + b_jᵀPb_j`` (factorized-attention §1).
    """
    return jax.lax.stop_gradient(t.a[:, :1])


def _pair_kls(tq: _Pulled, tk: _Pulled, eps: float, c: Array) -> tuple[Array, Array]:
    """Per-head ``(KL_β, K̂)``, ``[B, H, N, M]`` before clamping.

    Query-side quantities come from ``tq`` and key-side ones from ``tk`` (the same object except in the
    causal φ step).  ``KL_β`` regularises Σ_i in the trace (the β path); ``K̂`` does not (the coupling path,
    ref-ffn §3.3).  Padding slots contribute exactly 0 to both.
    """
    d = tq.a.shape[-1]
    a, b = tq.a - c, tk.a - c
    pb = sm.mv(tk.p, b)
    quad_b = pr.einsum("bmhk,bmhk->bhm", b, pb)[:, :, None, :]
    trace_p = jnp.trace(tk.p, axis1=-2, axis2=-1).transpose(0, 2, 1)[:, :, None, :]
    ld_k, ld_q = tk.ld.transpose(0, 2, 1), tq.ld.transpose(0, 2, 1)
    base = pair_quadratic(tq.sig, a, tk.p, pb) + quad_b - d + ld_k[:, :, None, :] - ld_q[..., None]
    return 0.5 * (base + eps * trace_p), 0.5 * base


def block_kl(pulled: _Pulled, eps: float, n_pad: Array, keys: _Pulled | None = None, c: Array | None = None
             ) -> tuple[Float[Array, "B N M"], Float[Array, "B N M"]]:
    """Head-summed ``(KL_β, K̂)``: each head's KL is clamped at 0, then heads are summed.

    ``keys`` (default: ``pulled``) supplies the key-side quantities; ``n_pad [H]`` counts padding slots
    per head; ``c`` is the expansion centre (default :func:`_centre` of the keys; tiles pass the global one).
    A head whose Cholesky failed anywhere contributes ``eps`` everywhere (the reference's fallback).
    """
    keys = pulled if keys is None else keys
    kb, kh = _pair_kls(pulled, keys, eps, _centre(keys) if c is None else c)
    # a padding slot adds 1/(1+ε) - 1 to K̂'s unregularised trace term (and exactly 0 to KL_β)
    kh = kh + (0.5 * eps * n_pad / (1.0 + eps))[None, :, None, None]
    ok = pulled.ok[0, 0][None, :, None, None]
    kl_beta = jnp.where(ok, jnp.maximum(kb, 0.0), eps).sum(1)
    kl_hat = jnp.where(ok, jnp.maximum(kh, 0.0), 0.0).sum(1)
    return kl_beta, kl_hat


def ffn_kl(mu: Float[Array, "B N H D"], sigma: Float[Array, "B N H D D"], rots: Float[Array, "B N H D D"],
           hp: VFEParams, valid: np.ndarray) -> Float[Array, "B N M"]:
    """The head-summed ``KL_β`` of :func:`vfe_iteration` as a full ``[B, N, M]`` matrix (for hooks)."""
    t = _pull_back(mu, sigma, rots, hp.eps, hp.eps_log)
    return block_kl(t, hp.eps, jnp.asarray((~valid).sum(-1), mu.dtype))[0]


def ffn_beta(kl: Float[Array, "B N M"], mask: Bool[Array, "N M"], hp: VFEParams) -> Float[Array, "B N M"]:
    logits = attention_logits(kl[:, None], hp.kappa, mask)[:, 0]
    return attention_weights(logits, hp.beta_floor)


def rotations(gens: Array, phi: Float[Array, "B N 3"]) -> Float[Array, "B N H D D"]:
    """``R = exp(φ·G)`` per head from per-head generators ``[H, 3, D, D]``."""
    return so3_exp(phi, gens)[0]


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


def _tiled_sums(t: _Pulled, n_pad, hp: VFEParams, plan: tiling.TilePlan) -> dict:
    """:func:`_weighted_sums` of the FFN's own β (and ``w = K̂·β``) over key tiles: no ``[B,N,M]`` tensor."""
    c = _centre(t)
    pa = sm.mv(t.p, t.a - c)

    def logits_fn(qb, kb, i, j, ok):
        kl_beta, kl_hat = block_kl(qb, hp.eps, n_pad, kb[0], c)
        return attention_logits(kl_beta[:, None], hp.kappa, ok)[:, 0], kl_hat

    def reduce_fn(acc, beta, kl_hat, qb, kb, i, j, ok):
        return jax.tree.map(jnp.add, acc, _weighted_sums(beta, kl_hat * beta, kb[0], kb[1]))

    def init_fn(qb):
        z = jnp.zeros_like
        return {"bp": z(qb.p), "bpa": z(qb.a), "rb": z(qb.ld[..., 0]), "wp": z(qb.p), "wpa": z(qb.a),
                "rw": z(qb.ld[..., 0])}

    out = tiling.softmax_reduce(plan, tiling.pad_tokens(t, plan), tiling.pad_tokens((t, pa), plan),
                                logits_fn, reduce_fn, init_fn, hp.beta_floor)
    return jax.tree.map(lambda x: tiling.unblock(x, plan, axis=1), out)


def ffn_plan(n: int, tile: int | None, pattern: str, window: int, mask_self: bool, hp: VFEParams
             ) -> tiling.TilePlan:
    """The FFN's tiling: masked tiles are skipped only without a floor (then masked keys weigh exactly 0)."""
    return tiling.make_plan(n, tile, pattern, window, mask_self, skip=hp.beta_floor is None)


def vfe_iteration(mu: Float[Array, "B N H D"], sigma: Float[Array, "B N H D D"], rots: Float[Array, "B N H D D"],
                  mu_p: Float[Array, "B N H D"], sigma_p: Float[Array, "B N H D D"], mask: Bool[Array, "N N"],
                  lr: Float[Array, ""] | float, hp: VFEParams, valid: np.ndarray,
                  beta_override: Float[Array, "B N N"] | None = None, plan: tiling.TilePlan | None = None):
    """One VFE step; all beliefs ``[B, N, H, D(, D)]``, ``valid [H, D]`` marks real slots.

    With a tile ``plan`` (and no ``beta_override``) the pairwise sums run in tiles and no ``[B,N,M]`` tensor
    exists; otherwise ``mask [N,M]`` is used and the full matrices are built.

    Returns ``(mu, sigma, beta [B,N,M] or None, kl [B,N,M] or None)`` (None when tiled).
    """
    n_pad = jnp.asarray((~valid).sum(-1), mu.dtype)
    t = _pull_back(mu, sigma, rots, hp.eps, hp.eps_log)
    c = _centre(t)
    if plan is not None and beta_override is None:
        sums = _tiled_sums(t, n_pad, hp, plan)
        beta = kl_beta = None
    else:
        kl_beta, kl_hat = block_kl(t, hp.eps, n_pad)
        beta = ffn_beta(kl_beta, mask, hp) if beta_override is None else beta_override
        sums = _weighted_sums(beta, kl_hat * beta, t, sm.mv(t.p, t.a - c))
    row_beta = sums["rb"][:, :, None, None, None]  # [B,N,1,1,1]
    row_w = sums["rw"][:, :, None, None]  # [B,N,1,1]
    a = t.a - c
    g_bar = sm.mv(t.r, sm.mv(sums["bp"], a) - sums["bpa"])
    g_w = sm.mv(t.r, sm.mv(sums["wp"], a) - sums["wpa"])
    coup = (hp.lam / hp.kappa) * (g_w - row_w * g_bar)
    inv_p = gs.spd_inverse(sm.cholesky(gs.add_eye(sigma_p, hp.eps)))
    g_self = hp.alpha * sm.mv(inv_p, mu - mu_p)
    h_self = 0.5 * hp.alpha * (inv_p - t.inv)
    h_align = 0.5 * hp.lam * (sm.sandwich(t.r, sums["bp"]) - row_beta * t.inv)
    g_mu = jnp.clip(g_self + hp.lam * g_bar + hp.coupling_sign * coup, -hp.grad_clip, hp.grad_clip)
    g_sig = jnp.clip(h_self + h_align, -hp.grad_clip, hp.grad_clip)

    # "natural" gradient and the whitened μ trust region (all K channels of a token together)
    delta = -lr * sm.mv(sigma, g_mu)
    diag = jnp.diagonal(sigma, axis1=-2, axis2=-1)
    wnorm2 = jnp.sum((delta / jnp.sqrt(jnp.maximum(diag, hp.eps))) ** 2, axis=(-2, -1))
    scale = jnp.minimum(1.0, hp.mu_trust / (jnp.sqrt(wnorm2) + hp.eps))[..., None, None]
    mu = mu + scale * delta

    if hp.update_sigma:
        nat = 0.5 * (diag[..., :, None] * diag[..., None, :]) * g_sig
        sigma = retract_spd(sigma, -nat, hp.sigma_step * lr, hp.sigma_trust, hp.eps, valid)
    return mu, sigma, beta, kl_beta


def retract_spd(sigma: Array, direction: Array, step, trust: float, eps: float, valid: np.ndarray) -> Array:
    """The reference's SPD retraction (ref-ffn §3.3 step 6), per token over all heads.

    Diagonally whitened step capped at Frobenius norm ``trust``, then the smallest ridge ``c·r·I`` from the
    ladder for which *every* matrix of the call has a Cholesky factor (the reference's batch-global test);
    if none does, the old Σ plus ``0.1·r·I``.  ``r`` is the mean |diagonal| over the K real channels; the
    padding block is reset to the identity.
    """
    sigma = gs.sym(sigma)
    direction = gs.sym(direction)
    dg = jnp.maximum(jnp.diagonal(sigma, axis1=-2, axis2=-1), eps)
    outer = jnp.sqrt(dg[..., :, None] * dg[..., None, :])
    bw = direction / outer
    fro = jnp.sqrt(jnp.sum(bw * bw, axis=(-3, -2, -1)))
    shrink = jnp.minimum(1.0, trust / (fro + eps))[..., None, None, None]
    new = gs.sym(sigma + step * outer * (shrink * bw))
    real = jnp.asarray(valid, new.dtype)
    ridge = jnp.maximum(
        jnp.sum(jnp.abs(jnp.diagonal(new, axis1=-2, axis2=-1)) * real, axis=(-2, -1)) / real.sum(), eps
    )[..., None, None, None]
    eye = jnp.eye(new.shape[-1], dtype=new.dtype) * real[..., :, None]  # ridge on real channels only
    coeff, found = _ridge_coefficient(jax.lax.stop_gradient(new), jax.lax.stop_gradient(ridge), eye)
    return jnp.where(found, new + coeff * ridge * eye, sigma + 0.1 * ridge * eye)


def _ridge_coefficient(new: Array, ridge: Array, eye: Array) -> tuple[Array, Array]:
    """First ladder entry c whose ``Σ' + c·r·I`` factorises for every matrix; ``(c, found)``.

    A while loop (not differentiated: the choice is a constant for backprop) so the common case costs one
    Cholesky and the compiled graph holds one.
    """
    ladder = jnp.asarray(_RIDGE_LADDER, new.dtype)

    def cond(state):
        i, ok = state
        return (i < len(_RIDGE_LADDER)) & ~ok

    def body(state):
        i, _ = state
        ok = jnp.all(jnp.isfinite(sm.cholesky(new + ladder[i] * ridge * eye)))
        return jnp.where(ok, i, i + 1), ok

    i, found = jax.lax.while_loop(cond, body, (jnp.asarray(0), jnp.asarray(False)))
    return ladder[jnp.minimum(i, len(_RIDGE_LADDER) - 1)], found


# ----------------------------------------------------------------------------------------------
# the φ step
# ----------------------------------------------------------------------------------------------


def _energy_tiled(pulled: _Pulled, keys: _Pulled, n_pad, hp: VFEParams, plan: tiling.TilePlan) -> Array:
    """``Σ_{b,i,j} β_ij KL_ij`` of the FFN's β over key tiles (the φ step's energy without ``[B,N,M]``)."""
    c = _centre(keys)

    def logits_fn(qb, kb, i, j, ok):
        kl, _ = block_kl(qb, hp.eps, n_pad, kb, c)
        return attention_logits(kl[:, None], hp.kappa, ok)[:, 0], kl

    def reduce_fn(acc, beta, kl, qb, kb, i, j, ok):
        return acc + jnp.sum(beta * kl, axis=-1)

    rows = tiling.softmax_reduce(plan, tiling.pad_tokens(pulled, plan), tiling.pad_tokens(keys, plan),
                                 logits_fn, reduce_fn, lambda qb: jnp.zeros(qb.ld.shape[:2], qb.ld.dtype),
                                 hp.beta_floor)
    return jnp.sum(tiling.unblock(rows, plan, axis=1))


def phi_energy(phi: Float[Array, "B N 3"], mu: Float[Array, "B N H D"], sigma: Float[Array, "B N H D D"],
               gens: Float[Array, "H 3 D D"], mask: Bool[Array, "N N"], hp: VFEParams, n_pad: Float[Array, "H"],
               plan: tiling.TilePlan | None = None):
    """``λ Σ_{b,i,j} β_ij KL_ij`` of the FFN's own attention, as a function of φ (μ, Σ held fixed).

    With ``hp.phi_grad_query_role`` the keys' frames are constants, so ``∂/∂φ_i`` only sees row i (its own
    attention); otherwise φ_i is also differentiated in its role as a key of every later query, which
    makes the updated φ_i depend on future tokens (the reference).  With a tile ``plan`` the energy is
    reduced in tiles and the aux ``(β, KL)`` is ``(None, None)``.
    """
    pulled = _pull_back(mu, sigma, rotations(gens, phi), hp.eps, hp.eps_log)
    keys = pulled
    if hp.phi_grad_query_role:
        keys = _pull_back(mu, sigma, rotations(gens, jax.lax.stop_gradient(phi)), hp.eps, hp.eps_log)
    if plan is not None:
        return hp.lam * _energy_tiled(pulled, keys, n_pad, hp, plan), (None, None)
    kl, _ = block_kl(pulled, hp.eps, n_pad, keys)
    beta = ffn_beta(kl, mask, hp)
    return hp.lam * jnp.sum(beta * kl), (beta, kl)


def phi_step(phi: Float[Array, "B N 3"], mu: Float[Array, "B N H D"], sigma: Float[Array, "B N H D D"],
             gens: Float[Array, "H 3 D D"], mask: Bool[Array, "N N"], hp: VFEParams, valid: np.ndarray,
             plan: tiling.TilePlan | None = None):
    """``φ - phi_lr ∇_φ E`` with the gradient treated as a constant, then ``‖φ_i‖ ≤ phi_max_norm``.

    Returns ``(φ, β, KL)``; β and KL are None when tiled (``plan``)."""
    n_pad = jnp.asarray((~valid).sum(-1), mu.dtype)
    grad, (beta, kl) = jax.grad(phi_energy, has_aux=True)(
        jax.lax.stop_gradient(phi), jax.lax.stop_gradient(mu), jax.lax.stop_gradient(sigma), gens, mask,
        hp, n_pad, plan,
    )
    new = phi - hp.phi_lr * jax.lax.stop_gradient(grad)
    norm = jnp.linalg.norm(new, axis=-1, keepdims=True)
    new = jnp.where(norm > hp.phi_max_norm, new * (hp.phi_max_norm / jnp.maximum(norm, 1e-30)), new)
    return new, beta, kl
