"""The free-energy training loss (ref-architecture §8.2): CE + belief alignment + self-consistency.

* CE: mean next-token cross-entropy over all positions (targets ``-100`` are ignored), from the final means
  and the output weight without the ``[B, N, V]`` logits (:mod:`gaugeformer.ops.vocab`).
* belief alignment: ``λ_β · mean_{b,h} Σ_{i,j} β_ij KL_ij`` of the **last** block's attention (masked pairs
  enter at the β floor in the reference profile), reduced in the attention's tiles
  (:class:`~gaugeformer.ops.attention_tiled.AttentionStats`), so no ``[B,H,N,N]`` tensor is needed.
* self-consistency: ``α · mean_{b,i} KL(N(μ_i, Σ_i) ‖ N(μ_prior,i, Σ_prior,i))`` on the final beliefs, with
  both covariances held constant (the reference detaches them).
"""

import jax
import jax.numpy as jnp
import optax

from gaugeformer.axes import Array, Float, Int
from gaugeformer.ops import blocks
from gaugeformer.ops import gaussian as gs
from gaugeformer.ops import small as sm
from gaugeformer.ops import vocab
from gaugeformer.ops.attention_tiled import AttentionStats


def gaussian_kl_blocks(mu_q, sig_q, mu_p, sig_p, eps: float, eps_log: float) -> Float[Array, "B N"]:
    """``KL(N(μ_q, Σ_q) ‖ N(μ_p, Σ_p))`` per token over block-diagonal covariances, clamped at 0.

    Means ``[B,N,h,d]`` and covariances ``[B,N,h,d,d]`` per head group (sequences, one entry per group);
    both covariances get ``eps·I`` and the log-dets carry ``eps_log`` inside the log, as the reference's
    full-K KL does.
    """
    total = 0.0
    for mq, sq, mp, sp in zip(mu_q, sig_q, mu_p, sig_p):
        lp = sm.cholesky(gs.add_eye(sp, eps))
        lq = sm.cholesky(gs.add_eye(sq, eps))
        lp_inv = sm.tri_inverse(lp)
        x = sm.mm(lp_inv, lq)
        y = sm.mv(lp_inv, mq - mp)
        kl = (jnp.sum(x * x, axis=(-2, -1)) + jnp.sum(y * y, -1) - mq.shape[-1]
              + gs.chol_logdet(lp, eps_log) - gs.chol_logdet(lq, eps_log))
        total = total + jnp.sum(kl, axis=-1)
    return jnp.maximum(0.5 * total, 0.0)


def cross_entropy(logits: Float[Array, "B N V"], targets: Int[Array, "B N"], ignore_index: int = -100):
    """Mean CE over positions whose target is not ``ignore_index``."""
    valid = targets != ignore_index
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, targets, 0))
    return _masked_mean(ce, valid)


def belief_cross_entropy(mu: Float[Array, "B N K"], weight: Float[Array, "V K"], targets: Int[Array, "B N"],
                         precision: str = "highest", ignore_index: int = -100):
    """:func:`cross_entropy` of the logits ``μ wᵀ`` without building them (:mod:`gaugeformer.ops.vocab`)."""
    valid = targets != ignore_index
    safe = jnp.where(valid, targets, 0)
    ce = vocab.cross_entropy(mu.reshape(-1, mu.shape[-1]), weight, safe.reshape(-1), precision)
    return _masked_mean(ce.reshape(targets.shape), valid)


def _masked_mean(x, valid):
    return jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def attention_metrics(st: AttentionStats, n: int) -> dict:
    """The reference's per-step attention scalars (ref-diagnostics §6.2) from a layer's reductions:
    means of β and KL over all ``B·H·N·N`` pairs; entropy and maximum of the head-mean β per row, averaged."""
    b, h = st.beta_sum.shape
    return {
        "attention/beta_mean": jnp.sum(st.beta_sum) / (b * h * n * n),
        "attention/kl_mean": jnp.sum(st.kl_sum) / (b * h * n * n),
        "attention/entropy": jnp.sum(st.entropy) / (b * n),
        "attention/concentration": jnp.sum(st.concentration) / (b * n),
    }


def free_energy_loss(model, tokens, targets, *, alpha: float | None = None, lambda_beta: float = 1.0,
                     train: bool = True, beta_override=None, sow=None):
    """Loss and metrics of one batch through the model's training forward.

    Args:
      model: a :class:`~gaugeformer.model.lm.GaugeTransformerLM`.
      tokens / targets: ``[B, N]`` ids (targets ``-100`` ignored).
      alpha: self-consistency weight (default: the model's ``alpha``, which the reference shares).
      lambda_beta: belief-alignment weight.
      train: run the FFN's φ step (the reference computes its loss in grad mode).
      beta_override: forwarded to the model (ablations).
      sow: which hooks the forward records under ``nnx.capture`` (default: all there, none outside).

    Returns:
      ``(loss, metrics)`` with the reference's metric names (``loss/total``, ``loss/ce``, …).
    """
    cfg = model.cfg
    alpha = cfg.alpha if alpha is None else alpha
    _, st = model.forward(tokens, train=train, training_forward=True, beta_override=beta_override, sow=sow)
    # the forward's logits are unused here, so XLA drops the output GEMM; the CE never builds them
    ce = belief_cross_entropy(st.mu, model.output_weight, targets, cfg.logits_precision)
    align = lambda_beta * jnp.mean(st.attn.beta_kl)
    layout = cfg.layout
    mu_q, mu_p = (blocks.group_vectors(blocks.split_mu(m, layout), layout) for m in (st.mu, st.mu_prior))
    sig_q, sig_p = (blocks.group_matrices(jax.lax.stop_gradient(_full(s)), layout)
                    for s in (st.sigma, st.sigma_prior))
    self_consistency = alpha * jnp.mean(gaussian_kl_blocks(mu_q, sig_q, mu_p, sig_p, cfg.kl_eps, cfg.eps_log))
    total = ce + align + self_consistency
    metrics = {
        "loss/total": total,
        "loss/ce": ce,
        "loss/belief_align": align,
        "loss/self_consistency": self_consistency,
        "loss/model_align": jnp.zeros(()),
        **attention_metrics(jax.lax.stop_gradient(st.attn), tokens.shape[-1]),
    }
    return total, metrics


def _full(s):
    return blocks.diag_to_full(s) if s.ndim == 4 else s
