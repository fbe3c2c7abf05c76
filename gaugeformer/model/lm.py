"""GaugeTransformerLM: embedding -> positional frames -> blocks -> output projection."""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from gaugeformer.config import ModelConfig
from gaugeformer.model.block import GaugeBlock
from gaugeformer.model.common import Buffer, LayerNorm, maybe_norm
from gaugeformer.model.embed import GaugeTokenEmbedding
from gaugeformer.model.sow import ALL, SowConfig, flatten, hook
from gaugeformer.ops import blocks
from gaugeformer.ops.attention_tiled import AttentionStats
from gaugeformer.ops.masks import valid_keys
from gaugeformer.ops.precision import logits_matmul
from gaugeformer.ops.positional import compose, sinusoidal_table


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ForwardState:
    """Final beliefs and the last block's attention statistics, as the training loss needs them.

    ``sigma`` is per head group (see :mod:`gaugeformer.ops.blocks`); ``full_sigma`` assembles ``[B,N,K,K]``.
    """

    mu: jax.Array  # [B,N,K] after final_norm
    sigma: jax.Array  # [B,N,H,D,D] (or variances [B,N,H,D])
    phi: jax.Array  # [B,N,3] frames entering the last block's FFN output (see forward)
    mu_prior: jax.Array  # [B,N,K]
    sigma_prior: jax.Array  # [B,N,H,D,D]
    attn: AttentionStats  # reductions of the last block's β and KL (no [B,H,N,N] tensor)


class GaugeTransformerLM(nnx.Module):
    """The gauge transformer language model.

    >>> cfg = ModelConfig(vocab_size=64, embed_dim=8, n_layers=1, max_seq_len=16, irreps="2x0e+2x1e",
    ...                   kappa_beta=1.0)
    >>> model = GaugeTransformerLM(cfg, rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 5), jnp.int32)).shape
    (2, 5, 64)
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = GaugeTokenEmbedding(cfg, rngs)
        m = cfg.max_seq_len
        if cfg.pos_encoding_mode == "learned":
            self.pos_phi = nnx.Param(cfg.pos_encoding_scale * jax.random.normal(rngs.params(), (m, 3)))
        elif cfg.pos_encoding_mode == "sinusoidal":
            self.pos_phi = Buffer(jnp.asarray(sinusoidal_table(m, 3, cfg.pos_encoding_scale)))
        else:
            self.pos_phi = Buffer(jnp.zeros((m, 3)))
        self.blocks = nnx.List([GaugeBlock(cfg, rngs) for _ in range(cfg.n_layers)])
        self.final_norm = LayerNorm(cfg.embed_dim) if cfg.use_layernorm else None
        if not cfg.tie_embeddings:
            self.out_proj = nnx.Param(0.02 * jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.embed_dim)))

    @property
    def output_weight(self) -> jax.Array:
        """``[V, K]``; the tied ``mu_embed`` table when ``tie_embeddings``."""
        return self.embed.mu_embed[...] if self.cfg.tie_embeddings else self.out_proj[...]

    def __call__(self, tokens, *, train: bool = False, training_forward: bool = False, beta_override=None,
                 override_ffn_beta: bool = False, sow: SowConfig = ALL):
        """``tokens [B, N]`` -> logits ``[B, N, V]`` (the reference's ``model(tokens)``; see :meth:`forward`)."""
        return self.forward(tokens, train=train, training_forward=training_forward, beta_override=beta_override,
                            override_ffn_beta=override_ffn_beta, sow=sow)[0]

    def forward(self, tokens, *, train: bool = False, training_forward: bool = False, beta_override=None,
                override_ffn_beta: bool = False, sow: SowConfig = ALL):
        """Full forward returning ``(logits, ForwardState)``.

        Args:
          tokens: ``[B, N]`` int ids, ``N <= max_seq_len``.
          train: the reference's grad mode: gates the FFN's φ step (unless ``phi_step="always"``).
          training_forward: the loss's forward.  With ``train_forward="reference"`` the last block is run
            with residuals forced on (the reference's ``forward_with_attention``); otherwise identical.
          beta_override: per layer, ``None`` or a ``[B, H, N, N]`` β that replaces the attention weights.
          override_ffn_beta: also replace the VFE FFN's own β with the head-mean of the override.
          sow: which hooks to record under ``nnx.capture``.
        """
        cfg = self.cfg
        n = tokens.shape[-1]
        if n > cfg.max_seq_len:
            raise ValueError(f"sequence length {n} exceeds max_seq_len {cfg.max_seq_len}")
        if beta_override is not None and len(beta_override) != cfg.n_layers:
            raise ValueError(f"beta_override needs one entry per layer ({cfg.n_layers}), got {len(beta_override)}")
        mu, sigmas, phi_tok, mu_prior = self.embed(tokens)
        sigma_prior = sigmas
        hook(self.embed, "hook_mu", mu, sow)
        if sigmas.ndim == 5:
            hook(self.embed, "hook_sigma", blocks.merge_sigma(sigmas, cfg.layout), sow)
        hook(self.embed, "hook_phi", phi_tok, sow)
        phi = compose(phi_tok, self.pos_phi[...][:n], cfg.pos_composition if cfg.pos_encoding_mode != "none"
                      else "none", cfg.so3_log)
        hook(self, "hook_phi_composed", phi, sow)
        mask = valid_keys(n, cfg.attention_pattern, cfg.attention_window, cfg.mask_self_attention)
        force_last = training_forward and cfg.train_forward == "reference"
        stats = None
        for layer, block in enumerate(self.blocks):
            last = layer == cfg.n_layers - 1
            phi_in = phi
            mu, sigmas, phi, stats = block(
                mu, sigmas, phi, mu_prior, mask, train=train, force_residual=force_last and last,
                beta_override=None if beta_override is None else beta_override[layer],
                override_ffn_beta=override_ffn_beta, sow=sow,
            )
            if force_last and last:
                phi = phi_in  # the reference's training forward discards the last block's φ update
        mu = maybe_norm(self.final_norm, mu)
        hook(self, "hook_mu_final", mu, sow)
        if sigmas.ndim == 5:
            hook(self, "hook_sigma_final", blocks.merge_sigma(sigmas, cfg.layout), sow)
        logits = logits_matmul(mu, self.output_weight, cfg.logits_precision)
        return logits, ForwardState(mu, sigmas, phi, mu_prior, sigma_prior, stats)


def run_with_cache(model: GaugeTransformerLM, tokens, *, sow: SowConfig = ALL, **kwargs):
    """``(logits, cache)`` with ``cache`` a flat ``{hook name: array}`` dict (see ``sow.HOOK_DOC``).

    Keyword arguments go to :meth:`GaugeTransformerLM.__call__` (``train``, ``beta_override``, ...).  Jit it
    with ``nnx.jit(run_with_cache, static_argnames=("sow", "train", "override_ffn_beta"))``.
    """
    logits, state = nnx.capture(model, nnx.Intermediate)(tokens, sow=sow, **kwargs)
    return logits, flatten(nnx.to_pure_dict(state))
