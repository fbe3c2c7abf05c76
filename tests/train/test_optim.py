"""Gradient accumulation: k accumulated batches of b rows = one batch of k·b rows."""

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gaugeformer.config import ModelConfig
from gaugeformer.model.lm import GaugeTransformerLM
from gaugeformer.train.optim import OptimConfig, build_optimizer
from gaugeformer.train.steps import LossWeights, train_step

CFG = ModelConfig(vocab_size=32, embed_dim=4, n_layers=1, max_seq_len=8, irreps="1x0e+1x1e",
                  kappa_beta=1.0, ffn="mlp", hidden_dim=8)  # the optimizer is what is tested
K, B, N = 3, 2, 8


def flat(model) -> dict:
    return {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def train(optim_cfg: OptimConfig, batches) -> tuple[dict, list[dict]]:
    model = GaugeTransformerLM(CFG, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, build_optimizer(optim_cfg), wrt=nnx.Param)
    snapshots = []
    for x, y in batches:
        train_step(model, optimizer, x, y, weights=LossWeights(), optim_cfg=optim_cfg)
        snapshots.append(flat(model))
    return flat(GaugeTransformerLM(CFG, rngs=nnx.Rngs(0))), snapshots


def test_accumulated_batches_equal_one_big_batch():
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (2, K * B, N + 1)), jnp.int32)
    xs, ys = tokens[..., :-1], tokens[..., 1:]
    base = OptimConfig(warmup_steps=1, max_steps=10)
    acc = dataclasses.replace(base, accumulate_steps=K)
    # two updates: 2·K micro-batches of B rows, or 2 batches of K·B rows
    micro = [(xs[u, i * B:(i + 1) * B], ys[u, i * B:(i + 1) * B]) for u in range(2)
             for i in range(K)]
    p0, acc_steps = train(acc, micro)
    _, big_steps = train(base, [(xs[u], ys[u]) for u in range(2)])
    for i in range(K - 1):  # between updates the parameters do not move
        for key in p0:
            np.testing.assert_array_equal(acc_steps[i][key], p0[key])
    # the reference's warmup gives the first update lr = 0: compare the second one
    for key in p0:
        np.testing.assert_array_equal(big_steps[0][key], p0[key])
    worst = max(np.abs(acc_steps[-1][k] - big_steps[1][k]).max()
                / np.abs(big_steps[1][k] - p0[k]).max() for k in p0)
    assert worst < 1e-4, worst
    # the check can fail: the last micro-batch of each update alone moves elsewhere
    _, alone = train(base, [micro[K - 1], micro[-1]])
    diff = max(np.abs(alone[1][k] - big_steps[1][k]).max()
               / np.abs(big_steps[1][k] - p0[k]).max() for k in p0)
    assert diff > 0.1, diff


def test_schedule_counts_updates():
    from gaugeformer.train.config import apply_overrides, build_run_config

    raw = {"model": {"embed_dim": 4, "irreps": "1x0e+1x1e", "n_layers": 1, "kappa_beta": 1.0},
           "data": {"tokenizer": "bytes", "seq_len": 8}}
    cfg = build_run_config(apply_overrides(raw, ["train.steps=10", "optim.accumulate_steps=4"]))
    assert cfg.optim.max_steps == 3  # ceil(10 / 4) updates
    assert cfg.optim.update_index(7) == 1 and cfg.optim.update_index(8) == 2
