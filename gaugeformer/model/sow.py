"""Hooks: named points in the forward that can be recorded (a cache) or patched (forward hooks).

Every module calls ``x = hook(self, "hook_x", x, sow)`` in dataflow order.  ``sow`` is a :class:`SowConfig`
*scoped* to the module: the LM hands block ``l`` ``sow.scope("blocks.{l}.")`` and the block hands its sublayers
``.scope("attn.")`` / ``.scope("ffn.")``, so ``sow.wants("hook_pattern")`` inside layer 0's attention asks about
the full name ``blocks.0.attn.hook_pattern``.  A :class:`SowConfig` is hashable and decided at trace time: jit
specialises on it, and a hook that nobody asked for is neither sown nor (for modules that can avoid it, such as
a tiled attention) materialised.

Values are recorded only inside ``nnx.capture``.  :func:`gaugeformer.model.lm.run_with_cache` returns
``(logits, ActivationCache)`` with names such as ``blocks.0.attn.hook_pattern`` (β, ``[B, H, N, M]``);
:func:`gaugeformer.model.lm.run_with_hooks` applies ``fn(value) -> value`` at chosen hooks.  :data:`HOOK_DOC`
lists every name; :func:`valid_hook_names` expands it for one model config.
"""

import dataclasses
import difflib
import inspect
import re
from collections.abc import Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from gaugeformer.ops import blocks
from gaugeformer.ops.so3 import HeadLayout

HOOK_DOC = {
    "embed.hook_mu": "[B,N,K] embedded means (incl. positional embedding; a patch leaves the prior alone)",
    "embed.hook_sigma": "[B,N,K,K] embedded covariances (full covariance only; patched: per-head blocks kept)",
    "embed.hook_phi": "[B,N,3] token frames before positional composition",
    "hook_phi_composed": "[B,N,3] frames entering block 0",
    "blocks.{l}.attn.hook_mu_in": "[B,N,K] attention input mean (after norm1)",
    "blocks.{l}.attn.hook_pattern": "[B,H,N,M] attention weights β",
    "blocks.{l}.attn.hook_attn_scores": "[B,H,N,M] pre-softmax logits -KL/κ + ALiBi, -inf where masked",
    "blocks.{l}.attn.hook_kl": "[B,H,N,M] KL(q_i || Ω_ij q_j), every pair incl. masked",
    "blocks.{l}.attn.hook_mu_out": "[B,N,K] aggregated means (concatenated heads)",
    "blocks.{l}.attn.hook_sigma_out": "[B,N,K,K] moment-matched covariance (evolve_sigma, full covariance only)",
    "blocks.{l}.ffn.hook_mu_in": "[B,N,K] FFN input mean (after norm2)",
    "blocks.{l}.ffn.it{t}.hook_pattern": "[B,N,M] VFE FFN's own β at iteration t",
    "blocks.{l}.ffn.it{t}.hook_kl": "[B,N,M] VFE FFN's block-summed KL at iteration t",
    "blocks.{l}.ffn.phistep.hook_pattern": "[B,N,M] β of the φ step (when it runs: train or phi_step='always')",
    "blocks.{l}.ffn.phistep.hook_kl": "[B,N,M] KL of the φ step",
    "blocks.{l}.ffn.hook_mu_out": "[B,N,K] FFN output mean (before any residual)",
    "blocks.{l}.ffn.hook_sigma_out": "[B,N,K,K] FFN output covariance (VFE with ffn_update_sigma)",
    "blocks.{l}.ffn.hook_phi_out": "[B,N,3] FFN output frames (VFE)",
    "blocks.{l}.hook_mu_out": "[B,N,K] block output mean",
    "blocks.{l}.hook_sigma_out": "[B,N,K,K] block output covariance (full covariance only)",
    "blocks.{l}.hook_phi_out": "[B,N,3] block output frames",
    "hook_mu_final": "[B,N,K] final mean after final_norm",
    "hook_sigma_final": "[B,N,K,K] final covariance (full covariance only)",
}

_SCORES = ("hook_pattern", "hook_attn_scores", "hook_kl")


def valid_hook_names(cfg) -> tuple[str, ...]:
    """Every hook name a model with ``cfg`` (a ``ModelConfig``) can produce, in forward order."""
    vfe = cfg.ffn == "vfe"
    full_sigma = not cfg.diagonal_covariance or cfg.gauge_fixed_priors

    def exists(template: str) -> bool:
        if "sigma" in template and not full_sigma:
            return False
        if ".ffn." in template and not template.endswith(("ffn.hook_mu_in", "ffn.hook_mu_out")) and not vfe:
            return False
        if "phistep" in template and not cfg.evolve_phi:
            return False
        if template.endswith("attn.hook_sigma_out") and not cfg.evolve_sigma:
            return False
        return not (template.endswith("ffn.hook_sigma_out") and not cfg.ffn_update_sigma)

    templates = [t for t in HOOK_DOC if exists(t)]
    per_layer = [t for t in templates if "{l}" in t]
    before = [t for t in templates[: templates.index(per_layer[0])] if "{l}" not in t]
    after = [t for t in templates if "{l}" not in t and t not in before]
    names = list(before)
    for layer in range(cfg.n_layers):
        for template in per_layer:
            for t in range(cfg.ffn_n_iterations) if "{t}" in template else [None]:
                names.append(template.replace("{l}", str(layer)).replace("{t}", str(t)))
    return tuple(names + after)


def check_names(names, valid: tuple[str, ...], what: str) -> None:
    """Raise a one-line ``ValueError`` for a name not in ``valid``, listing the closest valid names."""
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown hook name {name!r} in {what}{hint} (all names: "
                             "gaugeformer.model.sow.valid_hook_names(model.cfg))")


@dataclasses.dataclass(frozen=True)
class FwdHook:
    """``fn`` applied to the value of every hook whose full name equals ``target`` (or satisfies it)."""

    target: str | Callable[[str], bool]
    fn: Callable
    pass_name: bool  # fn(value, name) rather than fn(value)

    @classmethod
    def make(cls, target, fn) -> "FwdHook":
        if not (isinstance(target, str) or callable(target)) or not callable(fn):
            raise TypeError(f"fwd_hooks entries are (name or predicate, fn) pairs, got ({target!r}, {fn!r})")
        try:
            params = inspect.signature(fn).parameters.values()
            required = [p for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                                                  p.POSITIONAL_OR_KEYWORD)]
            pass_name = len(required) >= 2
        except (TypeError, ValueError):  # builtins without a signature
            pass_name = False
        return cls(target, fn, pass_name)

    def matches(self, name: str) -> bool:
        return self.target == name if isinstance(self.target, str) else bool(self.target(name))

    def __call__(self, value, name: str):
        out = self.fn(value, name) if self.pass_name else self.fn(value)
        if out is None:  # a hook that only reads
            return value
        if jnp.shape(out) != jnp.shape(value):
            raise ValueError(f"forward hook on {name} returned shape {jnp.shape(out)}; it must keep the "
                             f"hooked shape {jnp.shape(value)}")
        return jnp.asarray(out, value.dtype)


@dataclasses.dataclass(frozen=True)
class SowConfig:
    """Which hooks to record and which to patch, scoped to one module (hashable: a static jit argument).

    Attributes:
      attention / ffn / beliefs: the coarse groups (attention β/scores/KL, the FFN's β/KL, every belief).
      names: further restricts recording: ``None`` (all), a frozenset of full names or a predicate
        ``full name -> bool``.  A hook is recorded when its group is on *and* ``names`` accepts it.
      fwd_hooks: :class:`FwdHook` s, applied in order at every hook they match (recorded or not).
      prefix: the scope, e.g. ``"blocks.0.attn."``; set with :meth:`scope`.
    """

    attention: bool = True
    ffn: bool = True
    beliefs: bool = True
    names: frozenset | Callable[[str], bool] | None = None
    fwd_hooks: tuple[FwdHook, ...] = ()
    prefix: str = ""

    def scope(self, part: str) -> "SowConfig":
        """The config a submodule sees: ``part`` (e.g. ``"attn."``) appended to the prefix."""
        return dataclasses.replace(self, prefix=self.prefix + part)

    def full_name(self, name: str) -> str:
        return self.prefix + name

    def captures(self, name: str) -> bool:
        """Whether the hook ``name`` (local to this scope) is recorded."""
        full = self.full_name(name)
        if full.endswith(_SCORES):
            group = self.ffn if ".ffn." in full else self.attention
        else:
            group = self.beliefs
        if not group or self.names is None:
            return group
        return full in self.names if isinstance(self.names, frozenset) else bool(self.names(full))

    def intervenes(self, name: str) -> bool:
        """Whether a forward hook patches ``name``."""
        full = self.full_name(name)
        return any(h.matches(full) for h in self.fwd_hooks)

    def wants(self, name: str) -> bool:
        """Whether the tensor behind hook ``name`` must be materialised (recorded or patched)."""
        return self.captures(name) or self.intervenes(name)


ALL = SowConfig()
NOTHING = SowConfig(attention=False, ffn=False, beliefs=False)
ATTENTION_ONLY = SowConfig(attention=True, ffn=False, beliefs=False)


def resolve(module: nnx.Module, cfg: SowConfig | None) -> SowConfig:
    """``cfg``, or for ``None`` every hook inside ``nnx.capture`` and none outside it.

    Flax marks the modules of a running ``nnx.capture`` with ``__captures__``; a plain forward therefore wants no
    hook and never materialises a hook-only tensor, while ``nnx.capture(model)(tokens)`` still records all.
    """
    if cfg is not None:
        return cfg
    return ALL if hasattr(module, "__captures__") else NOTHING


def hook(module: nnx.Module, name: str, value, cfg: SowConfig = ALL):
    """Patch ``value`` with the forward hooks matching ``name``, record it if wanted, and return it.

    Call sites write ``x = hook(self, "hook_x", x, sow)``; ``name`` is local to ``cfg``'s scope.  What is
    recorded is the value the computation continues with (after any patch).
    """
    if value is None:
        return None
    full = cfg.full_name(name)
    for fwd in cfg.fwd_hooks:
        if fwd.matches(full):
            value = fwd(value, full)
    if cfg.captures(name):
        module.sow(nnx.Intermediate, name, value, capture_noop=True)
    return value


def hook_sigma(module: nnx.Module, name: str, sigmas, cfg: SowConfig, layout: HeadLayout):
    """A Σ hook: shows the merged ``[B,N,K,K]`` covariance; a patch re-enters the model per head.

    Variances (diagonal covariance, ``[B,N,H,D]``) have no Σ hook.
    """
    if sigmas.ndim != 5 or not cfg.wants(name):
        return sigmas
    patched = hook(module, name, blocks.merge_sigma(sigmas, layout), cfg)
    return blocks.split_sigma(patched, layout) if cfg.intervenes(name) else sigmas


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


@jax.tree_util.register_pytree_node_class
class ActivationCache(Mapping):
    """Recorded hooks by full name (TransformerLens's ``ActivationCache``): a read-only mapping and a pytree.

    >>> cache["blocks.0.attn.hook_pattern"]          # [B, H, N, M]
    >>> cache.stack("attn.hook_pattern")              # [L, B, H, N, M]
    """

    def __init__(self, data: Mapping):
        self._data = dict(data)

    def __getitem__(self, name: str):
        try:
            return self._data[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._data), n=5, cutoff=0.5)
            hint = f"; close: {', '.join(close)}" if close else ""
            raise KeyError(f"{name!r} is not in the cache ({len(self._data)} hooks recorded; a names_filter "
                           f"may have left it out){hint}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, name) -> bool:
        return name in self._data

    def __repr__(self) -> str:
        return f"ActivationCache({list(self._data)})"

    def stack(self, suffix: str) -> jax.Array:
        """``blocks.{l}.<suffix>`` for every layer, stacked on a new leading axis ``[L, ...]``.

        E.g. ``"attn.hook_pattern"`` -> ``[L, B, H, N, M]``, ``"ffn.it0.hook_pattern"`` -> ``[L, B, N, M]``,
        ``"hook_mu_out"`` -> ``[L, B, N, K]``.  Every layer from 0 must be in the cache.
        """
        pattern = re.compile(r"blocks\.(\d+)\." + re.escape(suffix))
        found = sorted((int(m.group(1)), k) for k in self._data if (m := pattern.fullmatch(k)))
        if not found:
            suffixes = sorted({k.split(".", 2)[2] for k in self._data if re.match(r"blocks\.\d+\.", k)})
            raise KeyError(f"no 'blocks.{{l}}.{suffix}' in the cache; per-layer suffixes recorded: {suffixes}")
        layers = [layer for layer, _ in found]
        if layers != list(range(len(layers))):
            raise KeyError(f"stack({suffix!r}) needs layers 0..L-1 in the cache, found layers {layers}; "
                           "index single layers with cache['blocks.{l}.…']")
        return jnp.stack([self._data[k] for _, k in found])

    def tree_flatten(self):
        return tuple(self._data.values()), tuple(self._data)

    @classmethod
    def tree_unflatten(cls, keys, children):
        out = cls.__new__(cls)
        out._data = dict(zip(keys, children))
        return out
