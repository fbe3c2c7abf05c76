"""GaugeAttention: per-head KL attention between transported beliefs (no learned parameters)."""

import functools

import jax.numpy as jnp
from flax import nnx

from gaugeformer.config import ModelConfig
from gaugeformer.model.common import records, remat_if_tiled
from gaugeformer.model.sow import ALL, SowConfig, hook
from gaugeformer.ops import attention as att
from gaugeformer.ops import blocks
from gaugeformer.ops.attention_tiled import attention_tiled, stats_full
from gaugeformer.ops.gaussian import taylor4_logabsdet
from gaugeformer.ops.transport import frames

PAIR_HOOKS = ("hook_kl", "hook_attn_scores", "hook_pattern")


def group_frames(cfg: ModelConfig, phi, kind: str) -> list[tuple]:
    """``(E, F, log|det E| or None)`` per head group: ``[B,N,h,d,d]``, ``[B,N,h,d,d]``, ``[B,N,h]``, with
    ``h = 1`` for a uniform group (the transport depends on the degree only; it broadcasts over the heads)."""
    out = []
    for g, gens in zip(blocks.head_groups(cfg.layout), blocks.group_generators(cfg.layout, cfg.basis)):
        e, f = frames(phi, gens, kind)
        if g.uniform:  # one transport for the group's heads
            e, f = e[..., None, :, :], f[..., None, :, :]
        lad = None
        if kind == "taylor4":
            ls = g.degrees[:1] if g.uniform else g.degrees
            lad = taylor4_logabsdet(jnp.linalg.norm(phi, axis=-1), ls)
        out.append((e, f, lad))
    return out


def transport_frames(cfg: ModelConfig, phi, kind: str):
    """:func:`group_frames` in the padded layout: ``[B,N,H,D,D]``, ``[B,N,H,D,D]``, ``[B,N,H]`` (or None)."""
    groups, layout = blocks.head_groups(cfg.layout), cfg.layout
    parts = group_frames(cfg, phi, kind)
    wide = [[jnp.broadcast_to(x, (*x.shape[:-3], g.size, *x.shape[-2:])) for x in p[:2]]
            for g, p in zip(groups, parts)]
    e, f = (blocks.ungroup_matrices([w[i] for w in wide], layout) for i in (0, 1))
    if kind != "taylor4":
        return e, f, None
    lad = jnp.concatenate([jnp.broadcast_to(p[2], (*p[2].shape[:-1], g.size)) for g, p in zip(groups, parts)], -1)
    return e, f, lad


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
        diag = sigmas.ndim == 4
        mus = blocks.group_vectors(blocks.split_mu(mu, layout), layout)
        sigs = (blocks.group_vectors if diag else blocks.group_matrices)(sigmas, layout)
        e, f, lad = (list(x) for x in zip(*group_frames(cfg, phi, cfg.attention_transport)))
        full = beta_override is not None or cfg.kl_impl == "direct" or records(self, PAIR_HOOKS, sow)
        if not full:
            tiled = functools.partial(
                attention_tiled, kappa=cfg.kappa_beta, alibi_slope=cfg.alibi_slope,
                floor=cfg.attention_floor, eps=cfg.kl_eps, eps_log=cfg.eps_log, evolve_sigma=cfg.evolve_sigma,
                tile=cfg.attention_tile, pattern=cfg.attention_pattern, window=cfg.attention_window,
                mask_self=cfg.mask_self_attention,
            )
            mean, cov, stats = remat_if_tiled(tiled, mu.shape[1], cfg.attention_tile)(mus, sigs, e, f, lad)
        else:
            mean, cov, stats = self._full(mus, sigs, e, f, lad, mask, beta_override, sow)
        if diag:
            cov = blocks.impose_variances(blocks.ungroup_vectors(cov, layout), layout)
        mu_out = hook(self, "hook_mu_out", blocks.merge_mu(blocks.ungroup_vectors(mean, layout), layout), sow)
        if not cfg.evolve_sigma:
            return mu_out, None, stats
        if not diag:
            cov = blocks.ungroup_matrices(cov, layout)
            if records(self, ("hook_sigma_out",), sow):
                merged = hook(self, "hook_sigma_out", blocks.merge_sigma(cov, layout), sow)
                cov = blocks.split_sigma(merged, layout)
        return mu_out, cov, stats

    def _full(self, mus, sigs, e, f, lad, mask, beta_override, sow):
        """The untiled path: full ``[B,H,N,N]`` KL, logits and β, hooked in dataflow order."""
        cfg = self.cfg
        diag = sigs[0].ndim == 4
        sig_in = sigs if cfg.evolve_sigma else [None] * len(sigs)
        if diag:
            parts = [att.kl_diagonal(*a, cfg.kl_eps) for a in zip(mus, sigs, e, f)]
            kl, moments = [p[0] for p in parts], [p[1:] for p in parts]
        elif cfg.kl_impl == "direct":
            kl = [att.kl_direct(*a, cfg.kl_eps, cfg.eps_log) for a in zip(mus, sigs, e, f)]
        else:
            kl = [att.kl_factorized(*a, cfg.kl_eps, cfg.eps_log) for a in zip(mus, sigs, e, f, lad)]
        kl = hook(self, "hook_kl", jnp.concatenate(kl, axis=1), sow)
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
        betas = blocks.group_heads(beta, cfg.layout, axis=1)
        if diag:
            out = [att.aggregate_diagonal(b, *m) for b, m in zip(betas, moments)]
        elif cfg.kl_impl == "direct":
            out = [att.aggregate_direct(b, *a) for b, a in zip(betas, zip(mus, sig_in, e, f))]
        else:
            out = [att.aggregate_factorized(b, *a) for b, a in zip(betas, zip(mus, sig_in, e, f))]
        mean, cov = (list(x) for x in zip(*out))
        return mean, cov if cfg.evolve_sigma or diag else None, stats
