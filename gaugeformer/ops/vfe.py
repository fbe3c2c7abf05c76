"""The VFE_dynamic feed-forward: unrolled, preconditioned descent on a free energy (ref-ffn.md §3).

Beliefs are per head group (see :mod:`gaugeformer.ops.blocks`); the FFN sees all groups at once because its
attention β is *one* ``[B, N, M]`` matrix over the block-summed KL, and because its trust regions couple all
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

from gaugeformer.axes import Array, Bool, Float
from gaugeformer.ops import gaussian as gs
from gaugeformer.ops.attention import attention_logits, attention_weights

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
      mask_self: mask the diagonal of the FFN's β.
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
    mask_self: bool = False
    phi_lr: float = 0.05
    phi_max_norm: float = 3.14159
    phi_grad_query_role: bool = False


# ----------------------------------------------------------------------------------------------
# per-token pull-back and the block-summed KL
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Pulled:
    """Per-token quantities of one head group (all ``[B, N, h, ...]``)."""

    r: Array  # rotations R_i                      [B,N,h,d,d]
    a: Array  # R_iᵀ μ_i                           [B,N,h,d]
    sig: Array  # R_iᵀ Σ_i R_i                     [B,N,h,d,d]
    p: Array  # R_iᵀ (Σ_i + εI)⁻¹ R_i              [B,N,h,d,d]
    inv: Array  # (Σ_i + εI)⁻¹                      [B,N,h,d,d]
    ld: Array  # 2 Σ log(diag chol(Σ_i + εI) + eps_log)   [B,N,h]
    ok: Array  # all Cholesky factors finite        []


def _pull_back(mu, sigma, r, eps, eps_log) -> _Pulled:
    rt = jnp.swapaxes(r, -1, -2)
    chol = jnp.linalg.cholesky(gs.add_eye(sigma, eps))
    ok = jnp.all(jnp.isfinite(chol))
    inv = gs.spd_inverse(chol)
    return _Pulled(
        r=r,
        a=jnp.einsum("bnhlk,bnhl->bnhk", r, mu),
        sig=rt @ sigma @ r,
        p=rt @ inv @ r,
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


def _pair_kls(tq: _Pulled, tk: _Pulled, eps: float) -> tuple[Array, Array]:
    """Per-head ``(KL_β, K̂)`` of one group, ``[B, h, N, M]`` before clamping.

    Query-side quantities come from ``tq`` and key-side ones from ``tk`` (the same object except in the
    causal φ step).  ``KL_β`` regularises Σ_i in the trace (the β path); ``K̂`` does not (the coupling path,
    ref-ffn §3.3).
    """
    d = tq.a.shape[-1]
    c = _centre(tk)
    a, b = tq.a - c, tk.a - c
    pb = jnp.einsum("bmhkl,bmhl->bmhk", tk.p, b)
    quad_a = jnp.einsum("bnhkl,bmhkl->bhnm", a[..., :, None] * a[..., None, :], tk.p)
    cross = jnp.einsum("bnhk,bmhk->bhnm", a, pb)
    quad_b = jnp.einsum("bmhk,bmhk->bhm", b, pb)[:, :, None, :]
    trace = jnp.einsum("bnhkl,bmhkl->bhnm", tq.sig, tk.p)
    trace_p = jnp.trace(tk.p, axis1=-2, axis2=-1).transpose(0, 2, 1)[:, :, None, :]
    ld_k, ld_q = tk.ld.transpose(0, 2, 1), tq.ld.transpose(0, 2, 1)
    base = trace + quad_a - 2.0 * cross + quad_b - d + ld_k[:, :, None, :] - ld_q[..., None]
    return 0.5 * (base + eps * trace_p), 0.5 * base


def block_kl(pulled: list[_Pulled], eps: float, keys: list[_Pulled] | None = None
             ) -> tuple[Float[Array, "B N M"], Float[Array, "B N M"]]:
    """Block-summed ``(KL_β, K̂)``: each head's KL is clamped at 0, then heads are summed.

    ``keys`` (default: ``pulled``) supplies the key-side quantities.  A head whose Cholesky failed
    anywhere contributes ``eps`` everywhere (the reference's fallback).
    """
    kl_beta, kl_hat = 0.0, 0.0
    for t, tk in zip(pulled, keys or pulled):
        kb, kh = _pair_kls(t, tk, eps)
        kb = jnp.where(t.ok, jnp.maximum(kb, 0.0), eps).sum(1)
        kh = jnp.where(t.ok, jnp.maximum(kh, 0.0), 0.0).sum(1)
        kl_beta, kl_hat = kl_beta + kb, kl_hat + kh
    return kl_beta, kl_hat


def ffn_beta(kl: Float[Array, "B N M"], mask: Bool[Array, "N M"], hp: VFEParams) -> Float[Array, "B N M"]:
    logits = attention_logits(kl[:, None], hp.kappa, mask, None, hp.mask_self)[:, 0]
    return attention_weights(logits, hp.beta_floor)


def rotations(phi_groups_gens, phi, exp_fn) -> list[Array]:
    """``R = exp(φ·G)`` per group: ``[B, N, h, d, d]`` (heads of a group share generators)."""
    out = []
    for gens, h in phi_groups_gens:
        r = exp_fn(jnp.einsum("bna,aij->bnij", phi, gens))
        out.append(jnp.broadcast_to(r[:, :, None], (*r.shape[:2], h, *r.shape[2:])))
    return out


# ----------------------------------------------------------------------------------------------
# one iteration
# ----------------------------------------------------------------------------------------------


def _weighted_g(t: _Pulled, w: Float[Array, "B N M"], c) -> Array:
    """``Σ_j w_ij g_ij = R_i [(Σ_j w_ij P̌_j) â_i - Σ_j w_ij P̌_j b̌_j]`` (centred on ``c``)."""
    a = t.a - c
    wp = jnp.einsum("bnm,bmhkl->bnhkl", w, t.p)
    wpb = jnp.einsum("bnm,bmhk->bnhk", w, jnp.einsum("bmhkl,bmhl->bmhk", t.p, a))
    inner = jnp.einsum("bnhkl,bnhl->bnhk", wp, a) - wpb
    return jnp.einsum("bnhkl,bnhl->bnhk", t.r, inner), wp


def vfe_iteration(
    mu: list[Array],
    sigma: list[Array],
    rots: list[Array],
    mu_p: list[Array],
    sigma_p: list[Array],
    mask: Bool[Array, "N M"],
    lr: Float[Array, ""],
    hp: VFEParams,
    beta_override: Float[Array, "B N M"] | None = None,
):
    """One VFE step on all head groups; returns ``(mu, sigma, beta, kl)``."""
    pulled = [_pull_back(m, s, r, hp.eps, hp.eps_log) for m, s, r in zip(mu, sigma, rots)]
    kl_beta, kl_hat = block_kl(pulled, hp.eps)
    beta = ffn_beta(kl_beta, mask, hp) if beta_override is None else beta_override
    w = kl_hat * beta
    row_beta = beta.sum(-1)[:, :, None, None, None]  # [B,N,1,1,1]
    row_w = w.sum(-1)[:, :, None, None]  # [B,N,1,1]

    grads_mu, grads_sig = [], []
    for t, m, mp, sp in zip(pulled, mu, mu_p, sigma_p):
        c = _centre(t)
        g_bar, beta_p = _weighted_g(t, beta, c)
        g_w, _ = _weighted_g(t, w, c)
        coup = (hp.lam / hp.kappa) * (g_w - row_w * g_bar)
        chol_p = jnp.linalg.cholesky(gs.add_eye(sp, hp.eps))
        inv_p = gs.spd_inverse(chol_p)
        g_self = hp.alpha * jnp.einsum("bnhkl,bnhl->bnhk", inv_p, m - mp)
        h_self = 0.5 * hp.alpha * (inv_p - t.inv)
        rt = jnp.swapaxes(t.r, -1, -2)
        h_align = 0.5 * hp.lam * (t.r @ beta_p @ rt - row_beta * t.inv)
        g_mu = g_self + hp.lam * g_bar + hp.coupling_sign * coup
        grads_mu.append(jnp.clip(g_mu, -hp.grad_clip, hp.grad_clip))
        grads_sig.append(jnp.clip(h_self + h_align, -hp.grad_clip, hp.grad_clip))

    # "natural" gradient and the whitened μ trust region (all K channels of a token together)
    delta = [-lr * jnp.einsum("bnhkl,bnhl->bnhk", s, g) for s, g in zip(sigma, grads_mu)]
    diag = [jnp.diagonal(s, axis1=-2, axis2=-1) for s in sigma]
    wnorm2 = sum(jnp.sum((dl / jnp.sqrt(jnp.maximum(dg, hp.eps))) ** 2, axis=(-2, -1))
                 for dl, dg in zip(delta, diag))
    scale = jnp.minimum(1.0, hp.mu_trust / (jnp.sqrt(wnorm2) + hp.eps))[..., None, None]
    mu = [m + scale * dl for m, dl in zip(mu, delta)]

    if hp.update_sigma:
        nat = [0.5 * (dg[..., :, None] * dg[..., None, :]) * g for dg, g in zip(diag, grads_sig)]
        sigma = retract_spd(sigma, [-n for n in nat], hp.sigma_step * lr, hp.sigma_trust, hp.eps)
    return mu, sigma, beta, kl_beta


def retract_spd(sigma: list[Array], direction: list[Array], step, trust: float, eps: float) -> list[Array]:
    """The reference's SPD retraction (ref-ffn §3.3 step 6), per token over all head blocks.

    Diagonally whitened step capped at Frobenius norm ``trust``, then the smallest ridge ``c·r·I`` from the
    ladder for which *every* matrix of the call has a Cholesky factor (the reference's batch-global test);
    if none does, the old Σ plus ``0.1·r·I``.
    """
    sigma = [gs.sym(s) for s in sigma]
    direction = [gs.sym(d) for d in direction]
    dg = [jnp.maximum(jnp.diagonal(s, axis1=-2, axis2=-1), eps) for s in sigma]
    bw = [d / jnp.sqrt(g[..., :, None] * g[..., None, :]) for d, g in zip(direction, dg)]
    fro = jnp.sqrt(sum(jnp.sum(b * b, axis=(-3, -2, -1)) for b in bw))
    shrink = jnp.minimum(1.0, trust / (fro + eps))[..., None, None, None]
    new = [
        gs.sym(s + step * jnp.sqrt(g[..., :, None] * g[..., None, :]) * (shrink * b))
        for s, g, b in zip(sigma, dg, bw)
    ]
    k = sum(s.shape[-3] * s.shape[-1] for s in new)
    ridge = jnp.maximum(
        sum(jnp.sum(jnp.abs(jnp.diagonal(s, axis1=-2, axis2=-1)), axis=(-2, -1)) for s in new) / k, eps
    )[..., None, None, None]
    eyes = [jnp.eye(s.shape[-1], dtype=s.dtype) for s in new]
    coeff, found = _ridge_coefficient([jax.lax.stop_gradient(s) for s in new],
                                      jax.lax.stop_gradient(ridge))
    return [
        jnp.where(found, s + coeff * ridge * e, s_old + 0.1 * ridge * e)
        for s, s_old, e in zip(new, sigma, eyes)
    ]


def _ridge_coefficient(new: list[Array], ridge: Array) -> tuple[Array, Array]:
    """First ladder entry c whose ``Σ' + c·r·I`` factorises for every matrix; ``(c, found)``.

    A while loop (not differentiated: the choice is a constant for backprop) so the common case costs one
    Cholesky per group and the compiled graph holds one.
    """
    ladder = jnp.asarray(_RIDGE_LADDER, new[0].dtype)

    def succeeds(c):
        return jnp.all(jnp.stack([
            jnp.all(jnp.isfinite(jnp.linalg.cholesky(s + c * ridge * jnp.eye(s.shape[-1], dtype=s.dtype))))
            for s in new
        ]))

    def cond(state):
        i, ok = state
        return (i < len(_RIDGE_LADDER)) & ~ok

    def body(state):
        i, _ = state
        ok = succeeds(ladder[i])
        return jnp.where(ok, i, i + 1), ok

    i, found = jax.lax.while_loop(cond, body, (jnp.asarray(0), jnp.asarray(False)))
    return ladder[jnp.minimum(i, len(_RIDGE_LADDER) - 1)], found


# ----------------------------------------------------------------------------------------------
# the φ step
# ----------------------------------------------------------------------------------------------


def phi_energy(phi, mu, sigma, groups_gens, mask, hp: VFEParams, exp_fn):
    """``λ Σ_{b,i,j} β_ij KL_ij`` of the FFN's own attention, as a function of φ (μ, Σ held fixed).

    With ``hp.phi_grad_query_role`` the keys' frames are constants, so ``∂/∂φ_i`` only sees row i (its own
    attention); otherwise φ_i is also differentiated in its role as a key of every later query, which
    makes the updated φ_i depend on future tokens (the reference).
    """
    rots = rotations(groups_gens, phi, exp_fn)
    pulled = [_pull_back(m, s, r, hp.eps, hp.eps_log) for m, s, r in zip(mu, sigma, rots)]
    keys = None
    if hp.phi_grad_query_role:
        key_rots = rotations(groups_gens, jax.lax.stop_gradient(phi), exp_fn)
        keys = [_pull_back(m, s, r, hp.eps, hp.eps_log) for m, s, r in zip(mu, sigma, key_rots)]
    kl, _ = block_kl(pulled, hp.eps, keys)
    beta = ffn_beta(kl, mask, hp)
    return hp.lam * jnp.sum(beta * kl), (beta, kl)


def phi_step(phi, mu, sigma, groups_gens, mask, hp: VFEParams, exp_fn):
    """``φ - phi_lr ∇_φ E`` with the gradient treated as a constant, then ``‖φ_i‖ ≤ phi_max_norm``."""
    mu = [jax.lax.stop_gradient(m) for m in mu]
    sigma = [jax.lax.stop_gradient(s) for s in sigma]
    grad, (beta, kl) = jax.grad(phi_energy, has_aux=True)(
        jax.lax.stop_gradient(phi), mu, sigma, groups_gens, mask, hp, exp_fn
    )
    new = phi - hp.phi_lr * jax.lax.stop_gradient(grad)
    norm = jnp.linalg.norm(new, axis=-1, keepdims=True)
    new = jnp.where(norm > hp.phi_max_norm, new * (hp.phi_max_norm / jnp.maximum(norm, 1e-30)), new)
    return new, beta, kl
