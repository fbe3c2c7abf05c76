"""Token embedding: Gaussian beliefs (μ, Σ) and gauge frames φ per token (ref-architecture §1)."""

import jax
import jax.numpy as jnp
from flax import nnx

from gaugeformer.config import ModelConfig
from gaugeformer.model.common import Buffer
from gaugeformer.ops import blocks
from gaugeformer.ops.small import mm, mv
from gaugeformer.ops.transport import group_exp

_INIT_STD = 0.02  # the reference re-initialises every nn.Embedding / nn.Linear to N(0, 0.02²)


class GaugeTokenEmbedding(nnx.Module):
    """Parameters follow the reference's names and layouts (torch ``(rows, K)`` tables)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        k, v = cfg.embed_dim, cfg.vocab_size
        normal = jax.random.normal
        if cfg.gauge_fixed_priors:
            self.base_mu = nnx.Param(cfg.mu_init_std * normal(rngs.params(), (k,)))
            self.base_log_sigma_diag = nnx.Param(jnp.zeros((k,)))
        else:
            self.mu_embed = nnx.Param(_INIT_STD * normal(rngs.params(), (v, k)))
            if cfg.evolve_sigma:
                self.log_sigma_diag = nnx.Param(jnp.zeros((v, k)))
            else:
                self.log_sigma_diag = Buffer(jnp.zeros((k,)))
        self.phi_embed = nnx.Param(_INIT_STD * normal(rngs.params(), (v, 3)))
        if cfg.use_positional_embedding:
            self.pos_embed = nnx.Param(_INIT_STD * normal(rngs.params(), (cfg.max_seq_len, k)))

    def __call__(self, tokens):
        """``tokens [B, N]`` -> ``(μ [B,N,K], Σ [B,N,H,D,D], φ [B,N,3], μ_prior [B,N,K])``.

        Σ is per head, padded (see :mod:`gaugeformer.ops.blocks`), or variances ``[B,N,H,D]`` with diagonal
        covariance.  ``μ_prior`` is
        μ itself in the reference (positional embedding included, §11.15) and the token part alone when
        ``prior_includes_pos_embed=False``.
        """
        cfg, layout = self.cfg, self.cfg.layout
        phi = self.phi_embed[...][tokens]
        if cfg.gauge_fixed_priors:
            mu0 = blocks.group_vectors(blocks.split_mu(self.base_mu[...], layout), layout)  # [h,d] per group
            s0 = blocks.group_vectors(blocks.split_variances(jnp.exp(self.base_log_sigma_diag[...]), layout), layout)
            mus, sigmas = [], []
            for gens, m0, v0 in zip(blocks.group_generators(layout, cfg.basis), mu0, s0):
                rot = group_exp(phi, gens)[0]  # [B,N,h or 1,d,d]
                mus.append(mv(rot, m0))
                sigmas.append(mm(rot * v0[..., None, :], jnp.swapaxes(rot, -1, -2)))
            mu = blocks.merge_mu(blocks.ungroup_vectors(mus, layout), layout)
            sigmas = blocks.ungroup_matrices(sigmas, layout)
        else:
            mu = self.mu_embed[...][tokens]
            log_sigma = self.log_sigma_diag[...]
            log_sigma = log_sigma[tokens] if log_sigma.ndim == 2 else jnp.broadcast_to(log_sigma, mu.shape)
            variances = blocks.split_variances(jnp.exp(log_sigma), layout)
            sigmas = variances if cfg.diagonal_covariance else blocks.diag_to_full(variances)
        token_mu = mu
        if cfg.use_positional_embedding:
            mu = mu + self.pos_embed[...][: tokens.shape[-1]]
        if cfg.mu_normalize:
            mu = mu / jnp.maximum(jnp.linalg.norm(mu, axis=-1, keepdims=True), 1e-12)
        elif cfg.mu_max_norm:
            norm = jnp.maximum(jnp.linalg.norm(mu, axis=-1, keepdims=True), 1e-8)
            mu = mu * jnp.minimum(1.0, cfg.mu_max_norm / norm)
        return mu, sigmas, phi, (mu if cfg.prior_includes_pos_embed else token_mu)
