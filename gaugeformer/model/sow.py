"""Hooks: sown intermediates and the flat TransformerLens-style cache.

Modules call :func:`hook`; values are collected only inside ``nnx.capture`` (outside it a hook is a no-op, so
plain forwards pay nothing).  :func:`run_with_cache` returns ``(logits, {name: array})`` with names such as
``blocks.0.attn.hook_pattern`` (β, ``[B, H, N, M]``), ``blocks.0.attn.hook_attn_scores`` (``-KL/κ`` plus
biases, ``-inf`` where masked), ``blocks.0.attn.hook_kl`` and ``blocks.0.ffn.it0.hook_pattern`` (the FFN's own
``[B, N, M]`` β at iteration 0).  :data:`HOOK_DOC` lists every name.
"""

import dataclasses

from flax import nnx

HOOK_DOC = {
    "embed.hook_mu": "[B,N,K] embedded means (incl. positional embedding; also the prior mean)",
    "embed.hook_sigma": "[B,N,K,K] embedded covariances",
    "embed.hook_phi": "[B,N,3] token frames before positional composition",
    "hook_phi_composed": "[B,N,3] frames entering block 0",
    "blocks.{l}.attn.hook_mu_in": "[B,N,K] attention input mean (after norm1)",
    "blocks.{l}.attn.hook_pattern": "[B,H,N,M] attention weights β",
    "blocks.{l}.attn.hook_attn_scores": "[B,H,N,M] pre-softmax logits -KL/κ + ALiBi, -inf where masked",
    "blocks.{l}.attn.hook_kl": "[B,H,N,M] KL(q_i || Ω_ij q_j), every pair incl. masked",
    "blocks.{l}.attn.hook_mu_out": "[B,N,K] aggregated means (concatenated heads)",
    "blocks.{l}.attn.hook_sigma_out": "[B,N,K,K] moment-matched covariance (evolve_sigma only)",
    "blocks.{l}.ffn.hook_mu_in": "[B,N,K] FFN input mean (after norm2)",
    "blocks.{l}.ffn.it{t}.hook_pattern": "[B,N,M] VFE FFN's own β at iteration t",
    "blocks.{l}.ffn.it{t}.hook_kl": "[B,N,M] VFE FFN's block-summed KL at iteration t",
    "blocks.{l}.ffn.phistep.hook_pattern": "[B,N,M] β of the φ step (when it runs)",
    "blocks.{l}.ffn.phistep.hook_kl": "[B,N,M] KL of the φ step",
    "blocks.{l}.ffn.hook_mu_out": "[B,N,K] FFN output mean (before any residual)",
    "blocks.{l}.ffn.hook_sigma_out": "[B,N,K,K] FFN output covariance",
    "blocks.{l}.ffn.hook_phi_out": "[B,N,3] FFN output frames",
    "blocks.{l}.hook_mu_out": "[B,N,K] block output mean",
    "blocks.{l}.hook_sigma_out": "[B,N,K,K] block output covariance",
    "blocks.{l}.hook_phi_out": "[B,N,3] block output frames",
    "hook_mu_final": "[B,N,K] final mean after final_norm",
    "hook_sigma_final": "[B,N,K,K] final covariance",
}


@dataclasses.dataclass(frozen=True)
class SowConfig:
    """Which groups of hooks to record (all by default); beliefs at every layer are the memory-heavy ones."""

    attention: bool = True
    ffn: bool = True
    beliefs: bool = True

    def wants(self, name: str) -> bool:
        if name.endswith(("hook_pattern", "hook_attn_scores", "hook_kl")):
            return self.ffn if ".ffn." in name else self.attention
        return self.beliefs


ALL = SowConfig()
ATTENTION_ONLY = SowConfig(attention=True, ffn=False, beliefs=False)


def hook(module: nnx.Module, name: str, value, cfg: SowConfig = ALL):
    """Record ``value`` under ``name`` on ``module`` when inside ``nnx.capture`` and ``cfg`` wants it.

    Returns the value the computation continues with (call sites write ``x = hook(self, "hook_x", x, sow)``),
    so a hook point can also be an intervention point.
    """
    if value is not None and cfg.wants(name):
        module.sow(nnx.Intermediate, name, value, capture_noop=True)
    return value


def flatten(tree, prefix: str = "") -> dict:
    """Nested capture state -> ``{"blocks.0.attn.hook_pattern": array}`` (single sows are unwrapped)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, tuple) and len(value) == 1:
            out[name] = value[0]
        else:
            out[name] = value
    return out
