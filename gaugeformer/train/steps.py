"""The jitted steps of training: one update (:func:`train_step`) and one validation batch
(:func:`eval_step`).

``train_step`` (``nnx.jit`` with the model and optimizer donated) computes the free-energy loss, its
gradients, the optimizer update and every logged scalar (:mod:`gaugeformer.train.metrics`) in one
program; the loop (:mod:`gaugeformer.train.loop`) fetches the scalars one step late.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from gaugeformer.config import ModelConfig
from gaugeformer.loss import free_energy_loss
from gaugeformer.model.lm import GaugeTransformerLM
from gaugeformer.model.sow import SowConfig, flatten
from gaugeformer.train import metrics as mlib
from gaugeformer.train.optim import OptimConfig


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Static loss weights of the train and eval steps."""

    alpha: float | None = None
    lambda_beta: float = 1.0


def step_hooks(cfg: ModelConfig, n: int) -> SowConfig:
    """The hooks a train step records.  Every hook while the sequence fits one attention tile
    (the per-layer β/KL statistics then cost no extra memory); only the belief hooks once it spans
    several tiles, so the step runs tiled in O(N) memory (per-layer attention statistics come from
    the evaluations' fixed sequence instead)."""
    if cfg.attention_tile is None or n <= cfg.attention_tile:
        return SowConfig()
    return SowConfig(attention=False, ffn=False, beliefs=True)


def loss_with_hooks(model, x, y, weights: LossWeights, train: bool):
    """The free-energy loss recording :func:`step_hooks`: ``(loss, (metrics, flat hooks))``."""
    sow = step_hooks(model.cfg, x.shape[-1])

    def run(m):
        return free_energy_loss(m, x, y, alpha=weights.alpha, lambda_beta=weights.lambda_beta,
                                train=train, sow=sow)

    (loss, metrics), state = nnx.capture(run, nnx.Intermediate)(model)
    return loss, (metrics, flatten(nnx.to_pure_dict(state)))


@functools.partial(nnx.jit, donate_argnames=("model", "optimizer"),
                   static_argnames=("weights", "optim_cfg"))
def train_step(model: GaugeTransformerLM, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array,
               *, weights: LossWeights, optim_cfg: OptimConfig) -> dict[str, jax.Array]:
    """One update on ``x, y [B, N]``; returns every scalar of
    :func:`~gaugeformer.train.metrics.step_metrics`."""
    step = optimizer.step[...]

    def loss_fn(m):
        return loss_with_hooks(m, x, y, weights, train=True)

    (_, (loss_metrics, hooks)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    out = mlib.step_metrics(model.cfg, optim_cfg, loss_metrics, hooks, grads, step)
    optimizer.update(model, grads)
    return out


@functools.partial(nnx.jit, static_argnames=("weights",))
def eval_step(model: GaugeTransformerLM, x: jax.Array, y: jax.Array, mask: jax.Array, *,
              weights: LossWeights) -> dict[str, jax.Array]:
    """Masked CE sum and the free-energy terms of one validation batch (no φ step)."""
    targets = jnp.where(mask, y, -100)
    _, m = free_energy_loss(model, x, targets, alpha=weights.alpha,
                            lambda_beta=weights.lambda_beta, train=False)
    count = mask.sum()
    return {"ce_sum": m["loss/ce"] * count, "count": count, "full": jnp.all(mask),
            "align": m["loss/belief_align"], "self": m["loss/self_consistency"]}
