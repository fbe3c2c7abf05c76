"""Typed capture: one forward returning per-layer tensors already stacked ``[L, ...]``.

Modelled on flax gemma's ``sow_lib.TransformerIntermediates``: a registered dataclass pytree whose
fields are ``None`` unless asked for, so it passes through ``jax.jit`` / ``jax.device_get`` and
consumers read ``out.beta[layer]`` instead of re-stacking ``f"blocks.{i}.attn.hook_pattern"`` by
string.  Built on :func:`gaugeformer.model.lm.run_with_cache` (a flat dict today, a cache with
``.stack(name)`` later; both are handled in :func:`_stack`).

    out = capture(model, tokens)                 # β, KL and the logits
    out = capture(model, tokens, beliefs=True)   # + μ, φ, Σ entering every layer
    out = capture_jit(model, tokens, beliefs=True)   # the same, jitted (one compile per shape)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from gaugeformer.model.lm import GaugeTransformerLM, run_with_cache
from gaugeformer.model.sow import SowConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Intermediates:
    """What one forward recorded, stacked over layers (``None`` where not requested).

    Attributes:
      logits: ``[B, N, V]``.
      beta: ``[L, B, H, N, M]`` attention weights β of every layer.
      kl: ``[L, B, H, N, M]`` KL(q_i ‖ Ω_ij q_j) of every layer, masked pairs included.
      scores: ``[L, B, H, N, M]`` pre-softmax logits (−KL/κ + biases, −inf where masked).
      mu_in: ``[L, B, N, K]`` means entering each layer's attention (after its input norm).
      phi_in: ``[L, B, N, 3]`` frames entering each layer.
      sigma_in: ``[L, B, N, K, K]`` covariances entering each layer (None for a model that keeps
        diagonal covariances, whose Σ is not recorded).
    """

    logits: jax.Array
    beta: jax.Array | None = None
    kl: jax.Array | None = None
    scores: jax.Array | None = None
    mu_in: jax.Array | None = None
    phi_in: jax.Array | None = None
    sigma_in: jax.Array | None = None

    @property
    def n_layers(self) -> int:
        return int(self.beta.shape[0])


def _stack(cache, name: str, n_layers: int) -> jax.Array:
    """``[L, ...]`` of ``blocks.{l}.<name>``."""
    if hasattr(cache, "stack"):
        return cache.stack(name)
    return jnp.stack([cache[f"blocks.{layer}.{name}"] for layer in range(n_layers)])


def _entering(cache, first: str, suffix: str, n_layers: int, carry: bool = False):
    """``[L, ...]``: ``first`` for layer 0, then ``blocks.{l-1}.<suffix>`` (the previous one where
    a block does not record it, when ``carry``)."""
    if first not in cache:
        return None
    values, last = [], cache[first]
    for layer in range(n_layers):
        if layer > 0:
            key = f"blocks.{layer - 1}.{suffix}"
            last = cache[key] if not carry else (cache[key] if key in cache else last)
        values.append(last)
    return jnp.stack(values)


def capture(model: GaugeTransformerLM, tokens: jax.Array, *, beliefs: bool = False,
            train: bool = False, **kwargs) -> Intermediates:
    """One forward (inference by default) recording attention, and the beliefs with ``beliefs``.

    Args:
      model: the model.
      tokens: ``[B, N]`` int ids.
      beliefs: also record μ, φ and Σ entering every layer.
      train: the reference's grad mode (gates the FFN's φ step).
      **kwargs: to :meth:`GaugeTransformerLM.__call__` (``beta_override``, ...).
    """
    sow = SowConfig(attention=True, ffn=False, beliefs=beliefs)
    logits, cache = run_with_cache(model, tokens, sow=sow, train=train, **kwargs)
    n = model.cfg.n_layers
    out = dict(logits=logits, beta=_stack(cache, "attn.hook_pattern", n),
               kl=_stack(cache, "attn.hook_kl", n), scores=_stack(cache, "attn.hook_attn_scores", n))
    if beliefs:
        out.update(mu_in=_stack(cache, "attn.hook_mu_in", n),
                   phi_in=_entering(cache, "hook_phi_composed", "hook_phi_out", n),
                   sigma_in=_entering(cache, "embed.hook_sigma", "hook_sigma_out", n, carry=True))
    return Intermediates(**out)


capture_jit = nnx.jit(capture, static_argnames=("beliefs", "train", "override_ffn_beta"))
