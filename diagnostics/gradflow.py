"""Part 8: real gradient flow. One ``jax.grad`` of the free-energy training loss gives the norm per
parameter group; a second with every layer's β passed back as a constant shows which groups
receive gradient *through* attention (the attention itself has no parameters)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gaugeformer.loss import free_energy_loss
from gaugeformer.model.sow import flatten

VIA_ATTENTION_RTOL = 1e-5  # |g_live - g_detached| above this share of |g| = "through attention"


def param_group(path: Sequence[Any]) -> str:
    """Report group of a parameter path (finer than the optimiser's groups).

    ``embed.mu`` (μ table, or the gauge-fixed base μ), ``embed.sigma`` (log σ), ``embed.phi``
    (φ table), ``positional.mu`` (learned positional μ), ``positional.phi`` (learned positional
    frames), ``blocks.{l}.ffn.step_size`` (VFE step size), ``blocks.{l}.ffn.mlp``,
    ``blocks.{l}.norm``, ``final_norm``, ``output``; anything else by its dotted path.
    """
    names = [str(p) for p in path]
    leaf = names[-1]
    if names[0] == "embed":
        return {"mu_embed": "embed.mu", "base_mu": "embed.mu", "log_sigma_diag": "embed.sigma",
                "base_log_sigma_diag": "embed.sigma", "phi_embed": "embed.phi",
                "pos_embed": "positional.mu"}.get(leaf, ".".join(names))
    if names == ["pos_phi"]:
        return "positional.phi"
    if names == ["out_proj"]:
        return "output"
    if names[0] == "final_norm":
        return "final_norm"
    if names[0] == "blocks" and len(names) >= 3:
        head = f"blocks.{names[1]}"
        if names[2] in ("norm1", "norm2"):
            return f"{head}.norm"
        if names[2] == "ffn":
            return f"{head}.ffn.step_size" if leaf == "lr" else f"{head}.ffn.mlp"
        if names[2] == "attn":
            return f"{head}.attention"
    return ".".join(names)


_RANK = ("embed.mu", "embed.sigma", "embed.phi", "positional.mu", "positional.phi")


def _group_rank(name: str) -> tuple:
    """Model order: embeddings, positional, blocks by index, final norm, output, the rest."""
    if name in _RANK:
        return (0, _RANK.index(name), "")
    if name.startswith("blocks."):
        idx = name.split(".")[1]
        return (1, int(idx) if idx.isdigit() else 0, name)
    return (2, {"final_norm": 0, "output": 1}.get(name, 2), name)


@dataclasses.dataclass(frozen=True)
class GroupFlow:
    """Gradient of one parameter group.

    Attributes:
        name: group name (:func:`param_group`).
        params: number of scalars.
        norm: ``‖∂L/∂θ‖`` of the training loss.
        norm_detached: the same with every layer's attention β held constant.
        via_attention: ``‖∂L/∂θ − ∂L/∂θ|β const‖``, the part that flows through β.
    """

    name: str
    params: int
    norm: float
    norm_detached: float
    via_attention: float

    @property
    def through_attention(self) -> bool:
        return self.via_attention > VIA_ATTENTION_RTOL * max(self.norm, self.norm_detached, 1e-30)


@dataclasses.dataclass(frozen=True)
class GradientFlow:
    """:func:`gradient_flow` result.

    Attributes:
        loss: free-energy training loss (next-token targets).
        loss_detached: the same loss with β passed back as a constant (equal forward values).
        groups: per parameter group, in model order.
        dbeta: per layer ``‖∂L/∂β_l‖`` (loss sensitivity to that layer's attention weights).
        attention_params: number of learnable attention parameters (0 for this model).
    """

    loss: float
    loss_detached: float
    groups: tuple[GroupFlow, ...]
    dbeta: tuple[float, ...]
    attention_params: int

    def norms(self) -> dict[str, float]:
        return {g.name: g.norm for g in self.groups}

    def counts(self) -> dict[str, int]:
        return {g.name: g.params for g in self.groups}


def _gradients(model, tokens, targets):
    """Live and β-detached gradients of the free-energy loss (one compile)."""
    n_layers = model.cfg.n_layers

    def live(m):
        (loss, _), state = nnx.capture(
            lambda mm: free_energy_loss(mm, tokens, targets), nnx.Intermediate)(m)
        cache = flatten(nnx.to_pure_dict(state))
        betas = tuple(cache[f"blocks.{i}.attn.hook_pattern"] for i in range(n_layers))
        return loss, betas

    (loss, betas), g_live = nnx.value_and_grad(live, has_aux=True)(model)
    betas = tuple(jax.lax.stop_gradient(b) for b in betas)

    def detached(m, ov):
        return free_energy_loss(m, tokens, targets, beta_override=ov)[0]

    loss_det, (g_det, g_beta) = nnx.value_and_grad(detached, argnums=(0, 1))(model, betas)
    dbeta = jnp.stack([jnp.sqrt(jnp.sum(jnp.square(g))) for g in g_beta])
    return loss, loss_det, g_live, g_det, dbeta


_gradients_jit = nnx.jit(_gradients)


def _flat_params(state) -> list[tuple[tuple, np.ndarray]]:
    out = []
    for path, var in nnx.to_flat_state(state):
        value = var.get_value() if hasattr(var, "get_value") else var
        out.append((tuple(path), np.asarray(value, np.float64)))
    return out


def next_token_targets(tokens: np.ndarray) -> np.ndarray:
    """``[B, N]`` targets of the training loss: ``tokens[:, 1:]``, the last position ignored."""
    t = np.asarray(tokens, np.int32)
    return np.concatenate([t[:, 1:], np.full((t.shape[0], 1), -100, np.int32)], axis=1)


def gradient_flow(model: Any, tokens: np.ndarray) -> GradientFlow:
    """Per-group gradient norms of the free-energy training loss, and what flows through β.

    The loss is :func:`gaugeformer.loss.free_energy_loss` in training mode (the reference's grad
    mode: the FFN's φ step runs) on next-token targets. The second gradient passes the β that
    the same forward computed back in as ``beta_override`` for every layer, so the forward values
    are unchanged but no gradient flows through the attention weights; the difference per group is
    the gradient that reaches it through attention. The VFE FFN's own β is left live.
    """
    ids = jnp.asarray(np.atleast_2d(tokens), jnp.int32)
    loss, loss_det, g_live, g_det, dbeta = _gradients_jit(
        model, ids, jnp.asarray(next_token_targets(ids)))
    live, det = _flat_params(g_live), _flat_params(g_det)
    order: list[str] = []
    acc: dict[str, list[float]] = {}
    for (path, a), (path_d, b) in zip(live, det, strict=True):
        assert path == path_d
        name = param_group(path)
        if name not in acc:
            order.append(name)
            acc[name] = [0, 0.0, 0.0, 0.0]
        acc[name][0] += a.size
        acc[name][1] += float(np.sum(a * a))
        acc[name][2] += float(np.sum(b * b))
        acc[name][3] += float(np.sum((a - b) ** 2))
    order.sort(key=_group_rank)
    groups = tuple(GroupFlow(n, int(acc[n][0]), math.sqrt(acc[n][1]), math.sqrt(acc[n][2]),
                             math.sqrt(acc[n][3])) for n in order)
    attn_params = sum(int(np.size(v)) for blk in model.blocks
                      for _, v in nnx.to_flat_state(nnx.state(blk.attn, nnx.Param)))
    return GradientFlow(float(loss), float(loss_det), groups,
                        tuple(float(x) for x in np.asarray(dbeta)), attn_params)


def notes(gf: GradientFlow, layer: int) -> tuple[str, ...]:
    """The lines under part 8 of layer ``layer``: the groups and what flows through β."""
    lines = [
        f"  Attention parameters: {gf.attention_params or 'none'} (β = softmax(−KL/κ) of the "
        "beliefs; gradient reaches other parameters *through* β).",
        "  Free-energy loss, next-token targets; 'via β' = |∇ (β live) − ∇ (every layer's β held "
        "constant)|:",
        f"    {'group':<24s} {'|∇| β const':>11s} {'|∇ via β|':>10s}  through attention",
    ]
    for g in gf.groups:
        lines.append(f"    {g.name:<24s} {g.norm_detached:11.3e} {g.via_attention:10.3e}  "
                     f"{'yes' if g.through_attention else 'no'}")
    via = [g.name for g in gf.groups if g.through_attention]
    lines.append(f"  Groups receiving gradient through attention: {', '.join(via) or 'none'}")
    if layer < len(gf.dbeta):
        lines.append(f"  ‖∂L/∂β‖ of layer {layer}: {gf.dbeta[layer]:.3e} (loss sensitivity to "
                     "this layer's attention weights)")
    lines.append(f"  Loss {gf.loss:.4f} with β live, {gf.loss_detached:.4f} with β constant "
                 "(same forward values)")
    return tuple(lines)


def markdown(gf: GradientFlow) -> str:
    """The report's "Gradient flow" section (markdown)."""
    out = ["", "## Gradient flow", "",
           f"The attention has no learnable parameters ({gf.attention_params}). Loss "
           f"{gf.loss:.4f}; \"via β\" is the gradient that disappears when every layer's β is "
           "held constant.", "",
           "| Group | Params | ‖∇‖ | ‖∇‖, β constant | ‖∇ via β‖ | Through attention |",
           "|---|---|---|---|---|---|"]
    out += [f"| {g.name} | {g.params} | {g.norm:.3e} | {g.norm_detached:.3e} | "
            f"{g.via_attention:.3e} | {'yes' if g.through_attention else 'no'} |"
            for g in gf.groups]
    out += ["", "| Layer | ‖∂L/∂β‖ |", "|---|---|"]
    out += [f"| {li} | {gf.dbeta[li]:.3e} |" for li in range(len(gf.dbeta))]
    return "\n".join(out) + "\n"
