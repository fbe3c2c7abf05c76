"""GaugeTransformerLM: embedding -> positional frames -> blocks -> output projection."""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from gaugeformer.config import ModelConfig
from gaugeformer.model.block import GaugeBlock
from gaugeformer.model.common import Buffer, LayerNorm, maybe_norm
from gaugeformer.model.embed import GaugeTokenEmbedding
from gaugeformer.model.sow import (ALL, ActivationCache, FwdHook, SowConfig, check_names, flatten,
                                   hook, hook_sigma, resolve, valid_hook_names)
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
                 override_ffn_beta: bool = False, sow: SowConfig | None = None):
        """``tokens [B, N]`` -> logits ``[B, N, V]`` (the reference's ``model(tokens)``; see :meth:`forward`)."""
        return self.forward(tokens, train=train, training_forward=training_forward, beta_override=beta_override,
                            override_ffn_beta=override_ffn_beta, sow=sow)[0]

    def forward(self, tokens, *, train: bool = False, training_forward: bool = False, beta_override=None,
                override_ffn_beta: bool = False, sow: SowConfig | None = None):
        """Full forward returning ``(logits, ForwardState)``.

        Args:
          tokens: ``[B, N]`` int ids, ``N <= max_seq_len``.
          train: the reference's grad mode: gates the FFN's φ step (unless ``phi_step="always"``).
          training_forward: the loss's forward.  With ``train_forward="reference"`` the last block is run
            with residuals forced on (the reference's ``forward_with_attention``); otherwise identical.
          beta_override: per layer, ``None`` or a ``[B, H, N, N]`` β that replaces the attention weights.
          override_ffn_beta: also replace the VFE FFN's own β with the head-mean of the override.
          sow: which hooks to record (under ``nnx.capture``) and patch; ``None``: all inside ``nnx.capture``,
            none outside (see :func:`~gaugeformer.model.sow.resolve`).
        """
        cfg = self.cfg
        n = tokens.shape[-1]
        if n > cfg.max_seq_len:
            raise ValueError(f"sequence length {n} exceeds max_seq_len {cfg.max_seq_len}")
        if beta_override is not None and len(beta_override) != cfg.n_layers:
            raise ValueError(f"beta_override needs one entry per layer ({cfg.n_layers}), got {len(beta_override)}")
        sow = resolve(self, sow)
        mu, sigmas, phi_tok, mu_prior = self.embed(tokens)
        sigma_prior = sigmas
        emb = sow.scope("embed.")
        mu = hook(self.embed, "hook_mu", mu, emb)
        sigmas = hook_sigma(self.embed, "hook_sigma", sigmas, emb, cfg.layout)
        phi_tok = hook(self.embed, "hook_phi", phi_tok, emb)
        phi = compose(phi_tok, self.pos_phi[...][:n], cfg.pos_composition if cfg.pos_encoding_mode != "none"
                      else "none", cfg.so3_log)
        phi = hook(self, "hook_phi_composed", phi, sow)
        mask = valid_keys(n, cfg.attention_pattern, cfg.attention_window, cfg.mask_self_attention)
        force_last = training_forward and cfg.train_forward == "reference"
        stats = None
        for layer, block in enumerate(self.blocks):
            last = layer == cfg.n_layers - 1
            phi_in = phi
            mu, sigmas, phi, stats = block(
                mu, sigmas, phi, mu_prior, mask, train=train, force_residual=force_last and last,
                beta_override=None if beta_override is None else beta_override[layer],
                override_ffn_beta=override_ffn_beta, sow=sow.scope(f"blocks.{layer}."),
            )
            if force_last and last:
                phi = phi_in  # the reference's training forward discards the last block's φ update
        mu = maybe_norm(self.final_norm, mu)
        mu = hook(self, "hook_mu_final", mu, sow)
        sigmas = hook_sigma(self, "hook_sigma_final", sigmas, sow, cfg.layout)
        logits = logits_matmul(mu, self.output_weight, cfg.logits_precision)
        return logits, ForwardState(mu, sigmas, phi, mu_prior, sigma_prior, stats)


def _forward(graphdef: nnx.GraphDef, state: nnx.State, tokens, sow: SowConfig, capture: bool,
             train: bool = False, training_forward: bool = False, beta_override=None,
             override_ffn_beta: bool = False):
    model = nnx.merge(graphdef, state)
    kwargs = dict(train=train, training_forward=training_forward, beta_override=beta_override,
                  override_ffn_beta=override_ffn_beta, sow=sow)
    if not capture:
        return model(tokens, **kwargs), None
    logits, hooks = nnx.capture(model, nnx.Intermediate)(tokens, **kwargs)
    return logits, ActivationCache(flatten(nnx.to_pure_dict(hooks)))


# One compiled program per (graph, sow config, static flags, shapes): a filter or a hook list that compares
# equal (same names, same function objects) reuses it.  The model goes in split (a plain jax.jit, which writes
# nothing back to it), so the functions also run under an outer jax.jit / jax.grad that closes over the model.
_forward_jit = jax.jit(_forward, static_argnames=("graphdef", "sow", "capture", "train", "training_forward",
                                                  "override_ffn_beta"))


def _run(model: GaugeTransformerLM, tokens, sow: SowConfig, capture: bool, **kwargs):
    graphdef, state = nnx.split(model)
    return _forward_jit(graphdef, state, tokens, sow=sow, capture=capture, **kwargs)


def _names_filter(model: GaugeTransformerLM, names_filter) -> frozenset | Callable[[str], bool] | None:
    """``None`` | a name | names | a predicate -> the hashable form :class:`SowConfig` holds (names checked)."""
    if names_filter is None or callable(names_filter):
        return names_filter
    names = (names_filter,) if isinstance(names_filter, str) else tuple(names_filter)
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"names_filter must be None, a hook name, a list of hook names or a predicate "
                        f"name -> bool, got {names_filter!r}")
    check_names(names, valid_hook_names(model.cfg), "names_filter")
    return frozenset(names)


def run_with_cache(model: GaugeTransformerLM, tokens, *, names_filter=None, sow: SowConfig = ALL, **kwargs
                   ) -> tuple[jax.Array, ActivationCache]:
    """``(logits, cache)``: the forward with the hooks chosen by ``names_filter`` recorded (jitted).

    Args:
      names_filter: ``None`` (every hook), a full hook name, a list of them (checked against
        :func:`~gaugeformer.model.sow.valid_hook_names`) or a predicate ``name -> bool``.  The filter is
        static: unrequested hooks are never sown, and an equal filter (or the same predicate object)
        reuses the compiled program.
      sow: the coarse groups (e.g. ``sow.ATTENTION_ONLY``); ``names_filter`` narrows them further.
      kwargs: :meth:`GaugeTransformerLM.forward`'s ``train``, ``training_forward``, ``beta_override``,
        ``override_ffn_beta``.

    The cache is an :class:`~gaugeformer.model.sow.ActivationCache` (``cache[name]``, ``keys()``,
    ``stack("attn.hook_pattern") -> [L, B, H, N, M]``); it is a pytree, so this also runs under an outer jit.
    """
    cfg = dataclasses.replace(sow, names=_names_filter(model, names_filter)) if names_filter is not None else sow
    return _run(model, tokens, cfg, True, **kwargs)


def run_with_hooks(model: GaugeTransformerLM, tokens, *, fwd_hooks=(), return_cache: bool = False,
                   names_filter=None, **kwargs):
    """Logits of the forward with ``fwd_hooks`` applied (and the cache if ``return_cache``) (jitted).

    Args:
      fwd_hooks: ``[(name or predicate, fn), ...]``.  ``fn(value)`` or ``fn(value, name)`` (chosen by its
        number of required positional parameters) sees the tensor at every hook the name or predicate
        matches, in forward order, and returns its replacement (same shape) or ``None`` to leave it.  Names
        are checked like ``names_filter``.
      return_cache: also return the :class:`~gaugeformer.model.sow.ActivationCache` of ``names_filter``
        (recorded after the patches).
      kwargs: as for :func:`run_with_cache`.

    Hooks are static: ``fn`` is traced into the compiled program, which is reused while the same function
    objects are passed, so arrays an ``fn`` closes over are constants of that program.  To vary a patch
    without recompiling (or to differentiate with respect to it), call this inside your own jit/grad with
    the array as an argument and build ``fn`` there (see the tests for an example).
    """
    hooks = tuple(FwdHook.make(target, fn) for target, fn in fwd_hooks)
    check_names([h.target for h in hooks if isinstance(h.target, str)], valid_hook_names(model.cfg),
                "fwd_hooks")
    if return_cache:
        names = _names_filter(model, names_filter)
    elif names_filter is not None:
        raise ValueError("names_filter is only used with return_cache=True")
    else:
        names = frozenset()
    logits, cache = _run(model, tokens, SowConfig(names=names, fwd_hooks=hooks), return_cache, **kwargs)
    return (logits, cache) if return_cache else logits
