"""GaugeAttention: per-head KL attention between transported beliefs (no learned parameters)."""

import jax.numpy as jnp
from flax import nnx

from gaugeformer.config import ModelConfig
from gaugeformer.model.common import group_generators
from gaugeformer.model.sow import ALL, SowConfig, hook
from gaugeformer.ops import attention as att
from gaugeformer.ops import blocks
from gaugeformer.ops.gaussian import taylor4_logabsdet
from gaugeformer.ops.transport import frames


def transport_frames(cfg: ModelConfig, phi, kind: str):
    """Per group ``(E, F, log|det E| or None)``, each ``[B,N,h,d,d]`` (broadcast over the group's heads)."""
    out = []
    for gens, h in group_generators(cfg):
        e, f = frames(phi, gens, kind)
        e = jnp.broadcast_to(e[:, :, None], (*e.shape[:2], h, *e.shape[2:]))
        f = jnp.broadcast_to(f[:, :, None], (*f.shape[:2], h, *f.shape[2:]))
        if kind == "taylor4":
            lad = taylor4_logabsdet(jnp.linalg.norm(phi, axis=-1), gens.shape[-1])
            lad = jnp.broadcast_to(lad[:, :, None], e.shape[:3])
        else:
            lad = None
        out.append((e, f, lad))
    return out


class GaugeAttention(nnx.Module):
    """β_ij = softmax_j(-KL(q_i ‖ Ω_ij q_j)/κ) per head, then m_i = Σ_j β_ij Ω_ij μ_j (and Σ if evolving)."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg

    def __call__(self, mu, sigmas, phi, mask, beta_override=None, sow: SowConfig = ALL):
        """``mu [B,N,K]``, ``sigmas`` per group, ``phi [B,N,3]``, ``mask [N,N]`` ->
        ``(μ_out [B,N,K], Σ_out per group or None, β [B,H,N,M], KL [B,H,N,M])``."""
        cfg, layout = self.cfg, self.cfg.layout
        hook(self, "hook_mu_in", mu, sow)
        mus = blocks.split_mu(mu, layout)
        tf = transport_frames(cfg, phi, cfg.attention_transport)
        diag = sigmas[0].ndim == 4
        kls, extras = [], []
        for m, s, (e, f, lad) in zip(mus, sigmas, tf):
            if diag:
                kl, mu_t, var_t = att.kl_diagonal(m, s, e, f, cfg.kl_eps)
                extras.append((mu_t, var_t))
            elif cfg.kl_impl == "direct":
                kl = att.kl_direct(m, s, e, f, cfg.kl_eps, cfg.eps_log)
            else:
                kl = att.kl_factorized(m, s, e, f, lad, cfg.kl_eps, cfg.eps_log)
            kls.append(kl)
        kl = blocks.heads_to_layout(kls, layout)
        logits = att.attention_logits(kl, cfg.kappa_beta, mask, cfg.alibi_slope, cfg.mask_self_attention)
        beta = att.attention_weights(logits, cfg.attention_floor)
        if beta_override is not None:
            if beta_override.shape[-3:] != beta.shape[-3:]:
                raise ValueError(
                    f"beta_override has shape {beta_override.shape}; expected (B, H, N, N) = {beta.shape}"
                )
            beta = jnp.broadcast_to(beta_override, beta.shape)
        hook(self, "hook_attn_scores", logits, sow)
        hook(self, "hook_kl", kl, sow)
        hook(self, "hook_pattern", beta, sow)

        means, covs = [], []
        for g, m, s, (e, f, _), ex in zip(blocks.groups(layout), mus, sigmas, tf, extras or [None] * len(mus)):
            b = beta[:, list(g.heads)]
            if diag:
                mean, cov = att.aggregate_diagonal(b, *ex)
            elif cfg.kl_impl == "direct":
                mean, cov = att.aggregate_direct(b, m, s if cfg.evolve_sigma else None, e, f)
            else:
                mean, cov = att.aggregate_factorized(b, m, s if cfg.evolve_sigma else None, e, f)
            means.append(mean)
            covs.append(cov)
        mu_out = blocks.merge_mu(means, layout)
        hook(self, "hook_mu_out", mu_out, sow)
        if not cfg.evolve_sigma:
            return mu_out, None, beta, kl
        if not diag:
            hook(self, "hook_sigma_out", blocks.merge_sigma(covs, layout), sow)
        return mu_out, covs, beta, kl
