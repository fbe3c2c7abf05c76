"""Seed 001's κ sweep: per-head row_std against the attention temperature, with the beliefs held
fixed (the captured KL re-softmaxed, one compile) or the whole model re-run per κ."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gaugeformer.capture import capture_jit
from gaugeformer.model.lm import GaugeTransformerLM
from gaugeformer.ops.attention import attention_logits, attention_weights
from gaugeformer.ops.masks import valid_keys
from gaugeformer.stats import model_valid_keys

from diagnostics.metrics import row_std_heads
from diagnostics.schema import Mode

DEFAULT_KAPPAS = (0.3, 0.5, 1.0, 2.0, 5.0)  # the reference's κ sweep


@dataclasses.dataclass(frozen=True)
class KappaSweep:
    """Per-head row_std vs temperature κ.

    Attributes:
        kappas: the κ values, in order.
        labels: head labels.
        row_std: mode -> ``[n_kappa, L, H]`` row_std of batch element ``batch_index``.
    """

    kappas: tuple[float, ...]
    labels: tuple[str, ...]
    row_std: Mapping[str, np.ndarray]


def kappa_sweep(
    beta_fn: Callable[[float], object],
    kappas: Sequence[float] = DEFAULT_KAPPAS,
    *,
    mask=None,
    labels: Sequence[str] | None = None,
    batch_index: int = 0,
    include_diag: bool = True,
) -> KappaSweep:
    """Evaluate ``beta_fn(kappa)`` for each κ and record per-head row_std in both modes.

    Args:
        beta_fn: ``kappa -> beta`` with beta ``[B, H, N, N]`` or ``[L, B, H, N, N]`` (e.g. the
            model's forward with its attention temperature overridden). Same shape for every
            κ, so the metric compiles once.
        kappas: temperatures (default: the reference's 0.3, 0.5, 1, 2, 5).
        mask: key-validity mask ``[N, N]`` (causal if None).
        labels: head labels (``H0..`` if None).
        batch_index: batch element to report.
        include_diag: keep the diagonal key in valid row_std
            (:func:`gaugeformer.stats.row_std_keys`).
    """
    out: dict[str, list[np.ndarray]] = {"legacy": [], "valid": []}
    for kappa in kappas:
        beta = np.asarray(beta_fn(float(kappa)))
        beta = beta[None] if beta.ndim == 4 else beta
        n = beta.shape[-1]
        keys = valid_keys(n) if mask is None else np.asarray(mask, bool)
        legacy, valid = jax.device_get(row_std_heads(beta[:, batch_index], keys, include_diag))
        out["legacy"].append(legacy)
        out["valid"].append(valid)
    n_heads = out["legacy"][0].shape[-1]
    labels = tuple(labels) if labels is not None else tuple(f"H{h}" for h in range(n_heads))
    return KappaSweep(tuple(float(k) for k in kappas), labels,
                      {md: np.stack(v) for md, v in out.items()})


def render_kappa_sweep(sweep: KappaSweep, mode: Mode = "legacy", layer: int = -1) -> str:
    """Table: one row per κ, per-head row_std and the mean per irrep label."""
    values = sweep.row_std[mode][:, layer]  # [n_kappa, H]
    groups = list(dict.fromkeys(sweep.labels))
    head = ["κ".rjust(8)] + [f"H{h}({lab})".rjust(10) for h, lab in enumerate(sweep.labels)]
    head += [f"mean {g}".rjust(10) for g in groups]
    lines = [f"κ sweep, row_std ({mode}), layer {layer}", " ".join(head)]
    for k, kappa in enumerate(sweep.kappas):
        row = [f"{kappa:8.4g}"] + [f"{v:10.4f}" for v in values[k]]
        for g in groups:
            idx = [h for h, lab in enumerate(sweep.labels) if lab == g]
            row.append(f"{values[k, idx].mean():10.4f}")
        lines.append(" ".join(row))
    return "\n".join(lines)


@functools.partial(jax.jit, static_argnames=("alibi", "floor"))
def _resoftmax(kl, kappa, mask, *, alibi, floor):
    return attention_weights(attention_logits(kl, kappa, mask, alibi), floor)


def attention_kappa_sweep(cfg: Any, kl: np.ndarray, kappas: Sequence[float], *,
                          beta: np.ndarray | None = None) -> tuple[KappaSweep, float | None]:
    """Per-head row_std against κ with the beliefs held fixed: each layer's captured KL
    ``[L, B, H, N, N]`` is re-softmaxed at temperature κ with the model's mask, self-masking,
    ALiBi and floor (κ is traced: one compile for every κ).

    Returns:
        ``(sweep, err)``: ``err`` is the max deviation of the re-softmaxed β at the model's own κ
        from the captured ``beta`` (a consistency check, 0 up to rounding; None without ``beta``).
    """
    n = kl.shape[-1]
    kw = {"alibi": float(cfg.alibi_slope) if cfg.alibi_slope else None,
          "floor": cfg.attention_floor}
    kl_dev, mk = jnp.asarray(kl), model_valid_keys(cfg, n)

    def beta_fn(kappa: float):
        return _resoftmax(kl_dev, jnp.float32(kappa), mk, **kw)

    sweep = kappa_sweep(beta_fn, kappas, mask=model_valid_keys(cfg, n), labels=cfg.head_labels)
    err = None
    if beta is not None:
        err = float(np.max(np.abs(np.asarray(beta_fn(cfg.kappa_beta)) - np.asarray(beta))))
    return sweep, err


def _beta(model: Any, tokens: np.ndarray) -> np.ndarray:
    ids = jnp.asarray(np.atleast_2d(tokens), jnp.int32)
    return np.asarray(jax.device_get(capture_jit(model, ids).beta))


def model_kappa_sweep(model: Any, tokens: np.ndarray, kappas: Sequence[float]) -> KappaSweep:
    """Per-head row_std against κ with the whole model re-run at each κ (attention and VFE FFN
    temperature). κ is a config constant, so every κ compiles the forward once (cached)."""
    cfg = model.cfg
    state = nnx.state(model)

    def beta_fn(kappa: float):
        if math.isclose(kappa, cfg.kappa_beta):
            return _beta(model, tokens)
        m2 = GaugeTransformerLM(cfg.replace(kappa_beta=float(kappa)), rngs=nnx.Rngs(0))
        nnx.update(m2, state)
        return _beta(m2, tokens)

    n = np.atleast_2d(tokens).shape[-1]
    return kappa_sweep(beta_fn, kappas, mask=model_valid_keys(cfg, n), labels=cfg.head_labels)


def markdown(sweep: KappaSweep, kappa_mode: str, layers: Sequence[int]) -> str:
    """The report's "κ sweep" section (markdown): one table per layer and mode."""
    out = ["", f"## κ sweep ({kappa_mode} mode)", ""]
    for li in layers:
        for md in sweep.row_std:
            out += ["```", render_kappa_sweep(sweep, md, li), "```"]
    return "\n".join(out) + "\n"
