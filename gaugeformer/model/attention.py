"""GaugeAttention: per-head KL attention between transported beliefs (no learned parameters)."""

import functools

import jax.numpy as jnp
from flax import nnx

from gaugeformer.config import ModelConfig
from gaugeformer.model.common import head_generators, records, remat_if_tiled
from gaugeformer.model.sow import ALL, SowConfig, hook
from gaugeformer.ops import attention as att
from gaugeformer.ops import blocks
from gaugeformer.ops.attention_tiled import attention_tiled, stats_full
from gaugeformer.ops.gaussian import taylor4_logabsdet
from gaugeformer.ops.transport import frames

PAIR_HOOKS = ("hook_kl", "hook_attn_scores", "hook_pattern")


def transport_frames(cfg: ModelConfig, phi, kind: str):
    """``(E, F, log|det E| or None)`` per head: ``[B,N,H,D,D]``, ``[B,N,H,D,D]``, ``[B,N,H]``."""
    e, f = frames(phi, head_generators(cfg), kind)
    if kind != "taylor4":
        return e, f, None
    return e, f, taylor4_logabsdet(jnp.linalg.norm(phi, axis=-1), blocks.padding(cfg.layout).ls)


class GaugeAttention(nnx.Module):
    """β_ij = softmax_j(-KL(q_i ‖ Ω_ij q_j)/κ) per head, then m_i = Σ_j β_ij Ω_ij μ_j (and Σ if evolving).

    Runs in tiles (:func:`~gaugeformer.ops.attention_tiled.attention_tiled`, no ``[B,H,N,N]`` tensor) unless a
    pairwise hook records inside ``nnx.capture``, ``beta_override`` is given or ``kl_impl="direct"``: then the
    full matrices are built and the hooks see (and may replace) them in dataflow order.
    """

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg

    def __call__(self, mu, sigmas, phi, mask, beta_override=None, sow: SowConfig = ALL):
        """``mu [B,N,K]``, ``sigmas [B,N,H,D,D]`` (or variances), ``phi [B,N,3]``, ``mask [N,N]`` ->
        ``(μ_out [B,N,K], Σ_out [B,N,H,D,D] or None, AttentionStats)``."""
        cfg, layout = self.cfg, self.cfg.layout
        mu = hook(self, "hook_mu_in", mu, sow)
        mus = blocks.split_mu(mu, layout)
        e, f, lad = transport_frames(cfg, phi, cfg.attention_transport)
        diag = sigmas.ndim == 4
        sig_in = sigmas if cfg.evolve_sigma else None
        full = beta_override is not None or cfg.kl_impl == "direct" or records(self, PAIR_HOOKS, sow)
        if not full:
            tiled = functools.partial(
                attention_tiled, kappa=cfg.kappa_beta, alibi_slope=cfg.alibi_slope,
                floor=cfg.attention_floor, eps=cfg.kl_eps, eps_log=cfg.eps_log, evolve_sigma=cfg.evolve_sigma,
                tile=cfg.attention_tile, pattern=cfg.attention_pattern, window=cfg.attention_window,
                mask_self=cfg.mask_self_attention,
            )
            mean, cov, stats = remat_if_tiled(tiled, mu.shape[1], cfg.attention_tile)(mus, sigmas, e, f, lad)
        else:
            if diag:
                kl, mu_t, var_t = att.kl_diagonal(mus, sigmas, e, f, cfg.kl_eps)
            elif cfg.kl_impl == "direct":
                kl = att.kl_direct(mus, sigmas, e, f, cfg.kl_eps, cfg.eps_log)
            else:
                kl = att.kl_factorized(mus, sigmas, e, f, lad, cfg.kl_eps, cfg.eps_log)
            kl = hook(self, "hook_kl", kl, sow)
            logits = att.attention_logits(kl, cfg.kappa_beta, mask, cfg.alibi_slope)
            logits = hook(self, "hook_attn_scores", logits, sow)
            beta = att.attention_weights(logits, cfg.attention_floor)
            if beta_override is not None:
                if beta_override.shape[-3:] != beta.shape[-3:]:
                    raise ValueError(
                        f"beta_override has shape {beta_override.shape}; expected (B, H, N, N) = {beta.shape}"
                    )
                beta = jnp.broadcast_to(beta_override, beta.shape)
            beta = hook(self, "hook_pattern", beta, sow)
            stats = stats_full(beta, kl)
            if diag:
                mean, cov = att.aggregate_diagonal(beta, mu_t, var_t)
            elif cfg.kl_impl == "direct":
                mean, cov = att.aggregate_direct(beta, mus, sig_in, e, f)
            else:
                mean, cov = att.aggregate_factorized(beta, mus, sig_in, e, f)
        if diag:
            cov = blocks.impose_variances(cov, layout)
        mu_out = hook(self, "hook_mu_out", blocks.merge_mu(mean, layout), sow)
        if not cfg.evolve_sigma:
            return mu_out, None, stats
        if not diag:
            cov = blocks.impose(cov, layout)
            if records(self, ("hook_sigma_out",), sow):
                merged = hook(self, "hook_sigma_out", blocks.merge_sigma(cov, layout), sow)
                cov = blocks.split_sigma(merged, layout)
        return mu_out, cov, stats
