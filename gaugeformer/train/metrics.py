"""Training scalars, computed inside the jitted step, plus their host-side formatting.

Everything in the first half is jnp and traced into the train step (no host sync); the loop fetches
the result one step late.  Names (keys of the metrics dict):

* the loss's own metrics, with the reference's names: ``loss/total``, ``loss/ce``,
  ``loss/belief_align``, ``loss/self_consistency``, ``loss/model_align``, ``attention/beta_mean``,
  ``attention/kl_mean``, ``attention/entropy``, ``attention/concentration`` (ref-diagnostics §6.2);
* ``ppl`` = exp(``loss/ce``);
* ``lr/{mu,phi,ffn,output}``: learning rate used by this step, per optimiser group;
* ``grad_norm/{total,mu,phi,ffn,output}``: L2 norms of the gradients *before* clipping, per
  optimiser group (ref-diagnostics §6.4 buckets by name; here the buckets are the groups);
* ``attn/L{l}/row_std`` ``[H]``: valid-keys row_std per head (std of β over the keys a query may
  attend, averaged over query rows with two or more valid keys, then over the batch);
  ``attn/L{l}/row_std_avg``: the same for the head-mean β (lossy); ``attn/L{l}/entropy``:
  head-mean row entropy over valid keys (nats); ``attn/L{l}/kl_mean``: mean KL over valid pairs;
* ``diversity/*``: the seed-001 / ref §6.3 tracker on row 0 of the batch: ``mu_dist_mean`` and
  ``mu_dist_std`` (off-diagonal pairwise distances of the embedded μ), ``phi_std`` (token frames
  before positional composition), ``kl_mean/std/min/max`` (last layer, head-mean KL, every
  off-diagonal pair, future pairs included, unbiased std), ``sigma_mean/std/min/max`` (diagonal of
  the embedded Σ);
* ``finite/...``: booleans used by the NaN guard (loss, every gradient, every sown tensor).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np

from gaugeformer.config import ModelConfig
from gaugeformer.model.sow import HOOK_DOC
from gaugeformer.stats import model_valid_keys, row_entropy, row_std_valid
from gaugeformer.train import optim

Array = jax.Array
LOSS_KEYS = ("loss/total", "loss/ce", "loss/belief_align", "loss/self_consistency")


# ----------------------------------------------------------------------------------------------
# Per-layer attention scalars (statistics from gaugeformer.stats)
# ----------------------------------------------------------------------------------------------


def layer_attention_stats(beta: Array, kl: Array | None, mask: np.ndarray) -> dict[str, Array]:
    """Per-layer scalars from ``β, KL [B, H, N, N]`` (see the module docstring)."""
    out = {
        "row_std": row_std_valid(beta, mask).mean(0),
        "row_std_avg": row_std_valid(beta.mean(1), mask).mean(),
        "entropy": row_entropy(beta.mean(1), mask).mean(),
    }
    if kl is not None:
        w = jnp.asarray(mask, kl.dtype)
        out["kl_mean"] = (kl * w).sum((-2, -1)).mean() / w.sum()
    return out


def _masked_stats(x: Array, mask: np.ndarray) -> tuple[Array, Array, Array, Array]:
    """Mean, unbiased std, min and max of ``x`` over ``mask`` (masks, no gathers)."""
    w = jnp.asarray(mask, x.dtype)
    n = float(mask.sum())
    mean = (x * w).sum() / n
    std = jnp.sqrt((jnp.square(x - mean) * w).sum() / max(n - 1.0, 1.0))
    return mean, std, jnp.where(mask, x, jnp.inf).min(), jnp.where(mask, x, -jnp.inf).max()


DIVERSITY_TOKENS = 256  # the pairwise diversity tracker looks at the first 256 tokens: O(1) memory in N


def diversity_metrics(mu: Array, phi: Array, sigma: Array | None, kl_last: Array | None) -> dict:
    """Seed-001 diversity tracker on one sequence (ref-diagnostics §6.3).

    Args:
      mu: ``[N, K]`` embedded means (positional embedding included, as the reference).
      phi: ``[N, 3]`` token frames before positional composition.
      sigma: ``[N, K, K]`` embedded covariances, or ``None``.
      kl_last: ``[H, N, N]`` KL of the last layer (None: the step ran tiled; no KL statistics).

    Returns:
      ``diversity/*`` scalars.
    """
    n = mu.shape[0]
    off = ~np.eye(n, dtype=bool)
    diff = mu[:, None, :] - mu[None, :, :]
    dist = jnp.sqrt(jnp.maximum(jnp.sum(diff * diff, -1), 1e-30))
    d_mean, d_std, _, _ = _masked_stats(dist, off)
    out = {
        "diversity/mu_dist_mean": d_mean,
        "diversity/mu_dist_std": d_std,
        "diversity/phi_std": jnp.mean(jnp.std(phi, axis=0, ddof=1)),
    }
    if kl_last is not None:
        k_mean, k_std, k_min, k_max = _masked_stats(kl_last.mean(0), off)
        out.update({"diversity/kl_mean": k_mean, "diversity/kl_std": k_std,
                    "diversity/kl_min": k_min, "diversity/kl_max": k_max})
    if sigma is not None:
        d = jnp.diagonal(sigma, axis1=-2, axis2=-1)
        s_mean, s_std, s_min, s_max = _masked_stats(d, np.ones(d.shape, bool))
        out.update({"diversity/sigma_mean": s_mean, "diversity/sigma_std": s_std,
                    "diversity/sigma_min": s_min, "diversity/sigma_max": s_max})
    return out


# ----------------------------------------------------------------------------------------------
# Gradients, learning rates, finiteness
# ----------------------------------------------------------------------------------------------


def path_name(path: tuple) -> str:
    """Pytree path -> dotted name (``blocks.0.ffn.lr``); attribute keys such as ``.value`` drop."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.GetAttrKey):
            continue
        parts.append(str(getattr(k, "key", getattr(k, "idx", k))))
    return ".".join(parts)


def named_leaves(tree) -> list[tuple[str, Array]]:
    """``[(dotted name, array)]`` of a pytree (nnx states included)."""
    return [(path_name(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree)]


def grad_norms(grads, clean_groups: bool = False) -> dict[str, Array]:
    """Pre-clipping L2 norm per optimiser group and in total."""
    sq = {g: jnp.zeros((), jnp.float32) for g in optim.GROUPS}
    for name, g in named_leaves(grads):
        group = optim.group_of(tuple(name.split(".")), clean_groups)
        sq[group] = sq[group] + jnp.sum(jnp.square(g.astype(jnp.float32)))
    out = {f"grad_norm/{g}": jnp.sqrt(v) for g, v in sq.items()}
    out["grad_norm/total"] = jnp.sqrt(sum(sq.values()))
    return out


def learning_rates(step: Array, cfg: optim.OptimConfig) -> dict[str, Array]:
    """In-jit per-group learning rate at 0-based ``step``."""
    f = optim.schedule_factor(step, cfg)
    return {f"lr/{g}": optim.group_lr(g, cfg) * f for g in optim.GROUPS}


def finite_flags(loss_metrics: dict, grads, hooks: dict) -> dict[str, Array]:
    """``finite/loss/<term>``, ``finite/grad/<param>``, ``finite/act/<hook>`` booleans."""
    out = {f"finite/{k}": jnp.isfinite(loss_metrics[k]) for k in LOSS_KEYS if k in loss_metrics}
    for name, g in named_leaves(grads):
        out[f"finite/grad/{name}"] = jnp.all(jnp.isfinite(g))
    for name, x in hooks.items():
        if not jnp.issubdtype(x.dtype, jnp.floating):
            continue
        if name.endswith("hook_attn_scores"):  # -inf marks masked keys by design
            out[f"finite/act/{name}"] = ~jnp.any(jnp.isnan(x) | (x == jnp.inf))
        else:
            out[f"finite/act/{name}"] = jnp.all(jnp.isfinite(x))
    return out


# ----------------------------------------------------------------------------------------------
# The whole per-step set
# ----------------------------------------------------------------------------------------------


def step_metrics(cfg: ModelConfig, optim_cfg: optim.OptimConfig, loss_metrics: dict, hooks: dict,
                 grads, step: Array) -> dict[str, Array]:
    """Every scalar of one train step (module docstring), from the loss metrics, the sown hooks
    (``run_with_cache`` names) and the gradients."""
    out = dict(loss_metrics)
    out["ppl"] = jnp.exp(loss_metrics["loss/ce"])
    out.update(learning_rates(optim_cfg.update_index(step), optim_cfg))
    out.update(grad_norms(grads, optim_cfg.clean_groups))
    last_kl = None
    if "blocks.0.attn.hook_pattern" in hooks:  # absent when the step ran tiled (step_hooks)
        n = hooks["blocks.0.attn.hook_pattern"].shape[-1]
        mask = model_valid_keys(cfg, n)
        for layer in range(cfg.n_layers):
            beta = hooks[f"blocks.{layer}.attn.hook_pattern"]
            kl = hooks.get(f"blocks.{layer}.attn.hook_kl")
            for k, v in layer_attention_stats(beta, kl, mask).items():
                out[f"attn/L{layer}/{k}"] = v
        last_kl = hooks[f"blocks.{cfg.n_layers - 1}.attn.hook_kl"][0, :, :DIVERSITY_TOKENS, :DIVERSITY_TOKENS]
    sigma = hooks.get("embed.hook_sigma")
    t = DIVERSITY_TOKENS
    out.update(diversity_metrics(hooks["embed.hook_mu"][0, :t], hooks["embed.hook_phi"][0, :t],
                                 None if sigma is None else sigma[0, :t], last_kl))
    out.update(finite_flags(loss_metrics, grads, hooks))
    return out


# ----------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------


def flatten_for_log(metrics: dict) -> dict[str, float]:
    """Host metrics -> JSON-able floats; ``[H]`` vectors become ``.../h{h}/...`` keys; the
    ``finite/`` flags are dropped."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key.startswith("finite/"):
            continue
        arr = np.asarray(value)
        if arr.ndim == 0:
            out[key] = float(arr)
        else:
            head, _, leaf = key.rpartition("/")
            for h, v in enumerate(arr.reshape(-1)):
                out[f"{head}/h{h}/{leaf}"] = float(v)
    return out


_KEY_ORDER = ("split", "step", "epoch", "epoch_batch", "tokens", "tokens_per_sec", "loss/", "ppl",
              "attention/", "lr/", "grad_norm/", "attn/", "diversity/", "eval/", "fixed/")


def ordered(record: dict) -> dict:
    """Record with keys in a stable, readable order (loss terms first, then rates, norms, ...)."""

    def rank(item):
        key = item[0]
        hits = [i for i, p in enumerate(_KEY_ORDER) if key == p or (p.endswith("/") and
                                                                    key.startswith(p))]
        return hits[0] if hits else len(_KEY_ORDER)

    return dict(sorted(record.items(), key=rank))


_LAYER_RE = re.compile(r"blocks\.(\d+)\.(.+)")


def _hook_order(name: str) -> tuple:
    """Forward order of a hook: embedding, then blocks by layer in HOOK_DOC order, then final."""
    templates = list(HOOK_DOC)
    m = _LAYER_RE.match(name)
    if m:
        tail = re.sub(r"it\d+", "it{t}", m.group(2))
        pos = templates.index(f"blocks.{{l}}.{tail}") if f"blocks.{{l}}.{tail}" in templates else 99
        return (1, int(m.group(1)), pos)
    pos = templates.index(name) if name in templates else 99
    return (0 if name.startswith(("embed", "hook_phi_composed")) else 2, 0, pos)


def describe_nonfinite(step: int, metrics: dict) -> str | None:
    """``None`` if the step is finite, else a message naming the step, layer and tensor."""
    bad = [k for k, v in metrics.items() if k.startswith("finite/") and not bool(np.asarray(v))]
    if not bad:
        return None
    loss_bad = [k[len("finite/"):] for k in bad if k.startswith("finite/loss/")]
    acts = sorted((k[len("finite/act/"):] for k in bad if k.startswith("finite/act/")),
                  key=_hook_order)
    grads = [k[len("finite/grad/"):] for k in bad if k.startswith("finite/grad/")]
    lines = [f"non-finite values at step {step}"]
    if loss_bad:
        vals = ", ".join(f"{k}={float(np.asarray(metrics[k])):.4g}" for k in loss_bad)
        lines.append(f"  loss terms: {vals}")
    if acts:
        lines.append(f"  first non-finite forward tensor: {_where(acts[0])}")
        if len(acts) > 1:
            lines.append(f"  also non-finite downstream: {', '.join(acts[1:6])}"
                         + (" ..." if len(acts) > 6 else ""))
    if grads:
        shown = ", ".join(_where(g) for g in grads[:6]) + (" ..." if len(grads) > 6 else "")
        lines.append(f"  non-finite gradients ({len(grads)}): {shown}")
    return "\n".join(lines)


def _where(name: str) -> str:
    m = _LAYER_RE.match(name)
    if m:
        return f"layer {m.group(1)} tensor '{m.group(2)}' ({name})"
    return f"tensor '{name}' (outside the blocks)"


def format_diversity(m: dict) -> str:
    """The seed-001 console line(s)."""
    if "diversity/mu_dist_mean" not in m:
        return ""
    text = (f"[DIVERSITY] μ_dist: {m['diversity/mu_dist_mean']:.4f} | φ_std: "
            f"{m['diversity/phi_std']:.4f} | KL_std: {m['diversity/kl_std']:.4f}\n"
            f"            KL range: [{m['diversity/kl_min']:.4f}, {m['diversity/kl_max']:.4f}] "
            f"| mean: {m['diversity/kl_mean']:.4f}")
    if "diversity/sigma_min" in m:
        text += (f"\n            σ range: [{m['diversity/sigma_min']:.6f}, "
                 f"{m['diversity/sigma_max']:.6f}] | mean: {m['diversity/sigma_mean']:.6f}")
    return text
