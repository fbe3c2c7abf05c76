"""GaugeBlock: attention then FFN, with the reference's optional norms and residuals (ref-arch §6.1)."""

from flax import nnx

from gaugeformer.config import ModelConfig
from gaugeformer.model.attention import GaugeAttention
from gaugeformer.model.common import LayerNorm, maybe_norm
from gaugeformer.model.ffn import MLPFFN, VariationalFFN
from gaugeformer.model.sow import ALL, SowConfig, hook, hook_sigma


class GaugeBlock(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        k = cfg.embed_dim
        self.norm1 = LayerNorm(k) if cfg.use_layernorm else None
        self.norm2 = LayerNorm(k) if cfg.use_layernorm else None
        self.attn = GaugeAttention(cfg)
        self.ffn = VariationalFFN(cfg) if cfg.ffn == "vfe" else MLPFFN(cfg, rngs)

    def __call__(self, mu, sigmas, phi, mu_prior, mask, *, train: bool, force_residual: bool = False,
                 beta_override=None, override_ffn_beta: bool = False, sow: SowConfig = ALL):
        """One block.  ``force_residual`` is the reference training forward's last block (§0.5).

        ``sow`` is scoped to this block (``blocks.{l}.``); the attention sees ``attn.``, the FFN ``ffn.``.
        """
        cfg = self.cfg
        residual = cfg.use_residual or force_residual
        attn_sow, ffn_sow = sow.scope("attn."), sow.scope("ffn.")
        mu_a, sig_a, stats = self.attn(
            maybe_norm(self.norm1, mu), sigmas, phi, mask, beta_override, attn_sow
        )
        mu = mu + mu_a if residual else mu_a
        if cfg.evolve_sigma and sig_a is not None:
            sigmas = sig_a
        mu_in = hook(self.ffn, "hook_mu_in", maybe_norm(self.norm2, mu), ffn_sow)
        ffn_override = beta_override.mean(axis=1) if (override_ffn_beta and beta_override is not None) else None
        mu_f, sig_f, phi = self.ffn(mu_in, sigmas, phi, mu_prior, mask, train=train,
                                    beta_override=ffn_override, sow=ffn_sow)
        if cfg.evolve_sigma and sig_f is not None:
            sigmas = sig_f
        mu = mu + mu_f if residual else mu_f
        mu = hook(self, "hook_mu_out", mu, sow)
        sigmas = hook_sigma(self, "hook_sigma_out", sigmas, sow, cfg.layout)
        phi = hook(self, "hook_phi_out", phi, sow)
        return mu, sigmas, phi, stats
