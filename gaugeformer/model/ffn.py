"""Feed-forward modules: the VFE_dynamic FFN (one learnable step size) and the historic learned MLP."""

import jax
import jax.numpy as jnp
from flax import nnx

from gaugeformer.config import ModelConfig
from gaugeformer.model.common import Buffer, records, remat_if_tiled
from gaugeformer.model.sow import ALL, SowConfig, hook
from gaugeformer.ops import blocks, vfe
from gaugeformer.ops.precision import matmul


def vfe_params(cfg: ModelConfig) -> vfe.VFEParams:
    return vfe.VFEParams(
        alpha=cfg.alpha,
        kappa=cfg.kappa_beta,
        lam=cfg.ffn_lambda_belief,
        n_iter=cfg.ffn_n_iterations,
        eps=cfg.kl_eps,
        eps_log=cfg.eps_log,
        beta_floor=cfg.ffn_floor,
        coupling_sign=1.0 if cfg.ffn_coupling_sign == "reference" else -1.0,
        update_sigma=cfg.ffn_update_sigma,
        phi_lr=cfg.phi_lr,
        phi_max_norm=cfg.phi_max_norm,
        phi_grad_query_role=cfg.phi_step_grad == "query_role",
    )


class VariationalFFN(nnx.Module):
    """T unrolled VFE steps on (μ, Σ), then one φ step (ref-ffn §3).  The attention's β is not used."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        lr = jnp.asarray(0.1, jnp.float32)  # strongly typed: native and converted models share compiles
        self.lr = nnx.Param(lr) if cfg.ffn_learnable_lr else Buffer(lr)

    def __call__(self, mu, sigmas, phi, mu_prior, mask, *, train: bool, beta_override=None,
                 sow: SowConfig = ALL):
        """Returns ``(μ [B,N,K], Σ [B,N,H,D,D] or None, φ [B,N,3])``.

        The FFN's own β, its weighted reductions and the φ step's energy run in tiles
        (``cfg.attention_tile``) unless a hook of an iteration (or of the φ step) records inside
        ``nnx.capture``, or ``beta_override`` is given: then the full ``[B,N,N]`` matrices are built.
        """
        cfg, layout, hp = self.cfg, self.cfg.layout, vfe_params(self.cfg)
        diag = sigmas.ndim == 4
        sig = blocks.group_matrices(blocks.diag_to_full(sigmas) if diag else sigmas, layout)
        mus = blocks.group_vectors(blocks.split_mu(mu, layout), layout)
        mu_p = blocks.group_vectors(blocks.split_mu(mu_prior, layout), layout)
        gens = blocks.group_generators(layout, cfg.basis)
        valid = [g.valid for g in blocks.head_groups(layout)]
        rots = vfe.rotations(gens, phi)
        plan = vfe.ffn_plan(mu.shape[1], cfg.attention_tile, cfg.attention_pattern, cfg.attention_window,
                            cfg.mask_self_attention, hp)
        sig_p = sig
        for t in range(hp.n_iter):
            names = (f"it{t}.hook_pattern", f"it{t}.hook_kl")
            beta = beta_override
            if records(self, names, sow):  # full [B,N,N] matrices, hooked in dataflow order
                kl = hook(self, names[1], vfe.ffn_kl(mus, sig, rots, hp, valid), sow)
                beta = hook(self, names[0], vfe.ffn_beta(kl, mask, hp) if beta is None else beta, sow)
            if beta is None:  # tiled
                def step(m, s, r, m_p, s_p, lr):
                    return vfe.vfe_iteration(m, s, r, m_p, s_p, mask, lr, hp, valid, plan=plan)[:2]

                step = remat_if_tiled(step, mu.shape[1], cfg.attention_tile)
                mus, sig_new = step(mus, sig, rots, mu_p, sig_p, self.lr[...])
            else:
                mus, sig_new, _, _ = vfe.vfe_iteration(mus, sig, rots, mu_p, sig_p, mask, self.lr[...], hp, valid,
                                                       beta)
            if hp.update_sigma:
                sig = blocks.impose_groups(sig_new, layout)
        if cfg.evolve_phi and (train or cfg.phi_step == "always"):
            names = ("phistep.hook_pattern", "phistep.hook_kl")
            full = records(self, names, sow)
            phi, beta, kl = vfe.phi_step(phi, mus, sig, gens, mask, hp, valid, plan=None if full else plan)
            if full:
                hook(self, names[0], beta, sow)
                hook(self, names[1], kl, sow)
        mu = hook(self, "hook_mu_out", blocks.merge_mu(blocks.ungroup_vectors(mus, layout), layout), sow)
        phi = hook(self, "hook_phi_out", phi, sow)
        if not hp.update_sigma:
            return mu, None, phi
        sig = blocks.ungroup_matrices(sig, layout)
        if records(self, ("hook_sigma_out",), sow):
            sig = blocks.split_sigma(hook(self, "hook_sigma_out", blocks.merge_sigma(sig, layout), sow), layout)
        if diag:
            sig = jnp.diagonal(sig, axis1=-2, axis2=-1)
        return mu, sig, phi


class MLPFFN(nnx.Module):
    """The historic ``learned`` FFN: Linear(K, hidden) -> exact GELU -> Linear(hidden, K) (ref-arch §7.2).

    Returns ``μ + MLP(μ)``: the historic block was pre-LN residual, and the residual here keeps the block's
    "FFN returns a full belief" contract.
    """

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        k, h = cfg.embed_dim, cfg.hidden_dim
        normal = jax.random.normal
        self.fc1_weight = nnx.Param(0.02 * normal(rngs.params(), (h, k)))
        self.fc1_bias = nnx.Param(jnp.zeros((h,)))
        self.fc2_weight = nnx.Param(0.02 * normal(rngs.params(), (k, h)))
        self.fc2_bias = nnx.Param(jnp.zeros((k,)))

    def __call__(self, mu, sigmas, phi, mu_prior, mask, *, train: bool, beta_override=None,
                 sow: SowConfig = ALL):
        hidden = jax.nn.gelu(matmul(mu, self.fc1_weight[...].T) + self.fc1_bias[...], approximate=False)
        out = mu + matmul(hidden, self.fc2_weight[...].T) + self.fc2_bias[...]
        return hook(self, "hook_mu_out", out, sow), None, phi
