"""Part 9: a real ablation. Next-token cross-entropy of the learned model against every layer's β
replaced (uniform-causal, the reference's non-causal 1/N, a local window) via ``beta_override``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gaugeformer.loss import cross_entropy
from gaugeformer.stats import model_valid_keys

LOCAL_WINDOW = 5  # keys i-4 .. i (the reference's "window=5", self included)


ABLATION_VARIANTS = ("causal_uniform", "uniform", "local")


@dataclasses.dataclass(frozen=True)
class Ablation:
    """:func:`ablation_study` result.

    Attributes:
        losses: ``{"learned": ce, variant: ce, ...}`` mean next-token cross-entropy (nats).
        override_ffn_beta: whether the VFE FFN's own β was replaced too.
        ffn: ``"vfe"`` or ``"mlp"`` (an MLP FFN has no β to override).
        predictions: number of next-token predictions (``B·(N−1)``).
        passthrough_error: ``|CE(override = learned β) − CE(learned)|``, a check that the
            override path reproduces the model (None when the FFN β is overridden: then the
            FFN's β legitimately changes).
    """

    losses: dict[str, float]
    override_ffn_beta: bool
    ffn: str
    predictions: int
    passthrough_error: float | None

    @property
    def ppl(self) -> dict[str, float]:
        return {k: (math.exp(v) if v < 700 else math.inf) for k, v in self.losses.items()}

    @property
    def ffn_override_text(self) -> str:
        if self.ffn != "vfe":
            return "n/a (the MLP FFN has no attention weights)"
        if self.override_ffn_beta:
            return "yes: the VFE FFN's own β is replaced by the head-mean of the override"
        return "no: the VFE FFN still computes its own β (use --ablate-ffn-beta to replace it)"


def ablation_betas(cfg: Any, batch: int, n: int) -> dict[str, np.ndarray]:
    """Override patterns ``[B, H, N, N]`` float32 for each variant of :data:`ABLATION_VARIANTS`.

    ``causal_uniform``: uniform over the keys the model may attend (:func:`gaugeformer.stats.model_valid_keys`);
    ``uniform``: 1/N on every key, future ones included (the reference's override);
    ``local``: uniform over keys ``max(0, i−4) … i``.
    """
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    mask = model_valid_keys(cfg, n).astype(np.float64)
    local = ((j <= i) & (j > i - LOCAL_WINDOW)).astype(np.float64)
    mats = {
        "causal_uniform": mask / mask.sum(-1, keepdims=True),
        "uniform": np.full((n, n), 1.0 / n),
        "local": local / local.sum(-1, keepdims=True),
    }
    shape = (batch, cfg.n_heads, n, n)
    return {k: np.ascontiguousarray(np.broadcast_to(v.astype(np.float32), shape))
            for k, v in mats.items()}


def _ablation_ce(model, tokens, overrides, override_ffn_beta=False):
    logits = model(tokens, beta_override=overrides, override_ffn_beta=override_ffn_beta)
    return cross_entropy(logits[:, :-1], tokens[:, 1:])


_ablation_ce_jit = nnx.jit(_ablation_ce, static_argnames=("override_ffn_beta",))


def ablation_study(model: Any, tokens: np.ndarray, *, learned_logits: np.ndarray | None = None,
                   learned_beta: np.ndarray | None = None, override_ffn_beta: bool = False,
                   variants: Sequence[str] = ABLATION_VARIANTS) -> Ablation:
    """Next-token CE of the learned model vs every layer's β replaced (inference forward).

    Args:
        model: the model.
        tokens: ``[B, N]`` ids; the targets are ``tokens[:, 1:]`` (the reference used the inputs).
        learned_logits: logits of the plain forward (recomputed when None).
        learned_beta: ``[L, B, H, N, N]`` learned β for the pass-through check (skipped if None).
        override_ffn_beta: also replace the VFE FFN's internal β.
        variants: names from :func:`ablation_betas`.
    """
    cfg = model.cfg
    ids = jnp.asarray(np.atleast_2d(tokens), jnp.int32)
    b, n = ids.shape
    if learned_logits is None:
        learned_logits = np.asarray(model(ids))
    losses = {"learned": float(cross_entropy(jnp.asarray(learned_logits)[:, :-1], ids[:, 1:]))}
    pats = ablation_betas(cfg, b, n)
    fn = _ablation_ce_jit
    for name in variants:
        ov = tuple(jnp.asarray(pats[name]) for _ in range(cfg.n_layers))
        losses[name] = float(fn(model, ids, ov, override_ffn_beta=override_ffn_beta))
    check = None
    if learned_beta is not None and not override_ffn_beta:
        ov = tuple(jnp.asarray(x) for x in learned_beta)
        check = abs(float(fn(model, ids, ov, override_ffn_beta=False)) - losses["learned"])
    return Ablation(losses, bool(override_ffn_beta and cfg.ffn == "vfe"), cfg.ffn, b * (n - 1),
                    check)


def notes(ab: Ablation, n_layers: int) -> tuple[str, ...]:
    """The lines under part 9: what was overridden, and the pass-through check."""
    lines = [
        f"  Targets: next token (logits[:, :-1] vs tokens[:, 1:]), {ab.predictions} predictions, "
        "inference forward.",
        f"  Override: the attention β of all {n_layers} layer(s) replaced at once; FFN's own β "
        f"overridden: {ab.ffn_override_text}.",
        "  Causal uniform: uniform over the keys each query may attend. Uniform: the reference's "
        "1/N on every key, future included: each position sees its own target, so a lower loss "
        "there is leakage, not evidence against attention. Local: keys i−4…i.",
    ]
    if ab.passthrough_error is not None:
        lines.append(f"  Check: overriding with the learned β reproduces the learned loss "
                     f"(|Δ| = {ab.passthrough_error:.1e}).")
    return tuple(lines)


def markdown(ab: Ablation, n_layers: int) -> str:
    """The report's "Ablation" section (markdown)."""
    base = ab.losses["learned"]
    out = ["", "## Ablation (next-token targets)", "",
           f"All {n_layers} layer(s) overridden at once; FFN β overridden: "
           f"{ab.ffn_override_text}.", "",
           "| Attention | CE | PPL | PPL change vs learned |", "|---|---|---|---|"]
    for k, v in ab.losses.items():
        pct = 100.0 * math.expm1(v - base) if v - base < 700 else math.inf
        out.append(f"| {k} | {v:.4f} | {ab.ppl[k]:.2f} | {pct:+.1f}% |")
    return "\n".join(out) + "\n"
