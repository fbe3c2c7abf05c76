"""The whole model in tiles: the training loss, its metrics and every gradient equal the full-matrix path
(taken inside ``nnx.capture``, where the pairwise hooks record), and the tiled train step holds no
``N × N`` array anywhere in its jaxpr (forward, backward and rematerialised tiles included).

The equality is checked in float64, where tiling must agree to ~1e-12 (only the order of sums over keys
differs); in float32 the two paths differ by rounding amplified through two layers (measured 2.5e-4 of the
FFN step-size gradient, the same size as float32-vs-float64 differences of either path).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gaugeformer.config import ModelConfig
from gaugeformer.loss import free_energy_loss
from gaugeformer.model.lm import GaugeTransformerLM, run_with_cache
from gaugeformer.model.sow import SowConfig

N, V = 24, 11


def model_and_batch(profile, tile, dtype=jnp.float32, **kw):
    cfg = ModelConfig(vocab_size=V, embed_dim=7, n_layers=2, max_seq_len=N, irreps="1x0e+2x1e", kappa_beta=1.3,
                      profile=profile, basis="reference", pad_heads=False, attention_tile=tile, **kw)
    tokens = jax.random.randint(jax.random.key(1), (2, N), 0, V)
    graph, state = nnx.split(GaugeTransformerLM(cfg, rngs=nnx.Rngs(0)))
    state = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    return nnx.merge(graph, state), tokens, jnp.roll(tokens, -1, axis=1)


def loss_and_grads(model, tokens, targets, full: bool):
    def loss(m):
        if full:  # capturing every hook: attention, FFN and φ step build their [B,H,N,N] matrices
            (value, metrics), _ = nnx.capture(free_energy_loss, nnx.Intermediate)(m, tokens, targets)
            return value, metrics
        return free_energy_loss(m, tokens, targets)

    return nnx.jit(lambda m: nnx.value_and_grad(loss, has_aux=True)(m))(model)


@pytest.mark.parametrize("profile,extra", [pytest.param("reference", {}, marks=pytest.mark.slow),
                                           ("clean", dict(attention_pattern="strided", attention_window=6,
                                                          alibi_slope=-0.1, mask_self_attention=True))])
def test_tiled_loss_metrics_and_gradients_equal_full_path(profile, extra):
    with jax.enable_x64(True):
        model, tokens, targets = model_and_batch(profile, 8, jnp.float64, **extra)
        (l_full, m_full), g_full = loss_and_grads(model, tokens, targets, full=True)
        (l_tile, m_tile), g_tile = loss_and_grads(model, tokens, targets, full=False)
    assert l_tile.dtype == jnp.float64
    np.testing.assert_allclose(l_tile, l_full, rtol=1e-12)
    for k in m_full:
        np.testing.assert_allclose(m_tile[k], m_full[k], rtol=1e-10, atol=1e-14, err_msg=k)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(g_tile)),
                            jax.tree.leaves(nnx.to_pure_dict(g_full))):
        scale = float(np.linalg.norm(np.asarray(b))) + 1e-30
        assert float(np.linalg.norm(np.asarray(a) - np.asarray(b))) <= 1e-10 * scale, path


def _shapes(jaxpr):
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            yield getattr(v.aval, "shape", ())
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _shapes(inner)


def test_tiled_train_step_has_no_pairwise_array_and_hooks_still_get_full_matrices():
    model, tokens, targets = model_and_batch("reference", 8)
    graph, state = nnx.split(model)

    def grad(state):
        return jax.grad(lambda s: free_energy_loss(nnx.merge(graph, s), tokens, targets)[0])(state)

    big = [s for s in _shapes(jax.make_jaxpr(grad)(state).jaxpr) if sum(d >= N for d in s) >= 2]
    assert big == [], big[:5]
    # the same model under capture still exposes every [B,H,N,N] hook
    _, cache = run_with_cache(model, tokens, train=True, sow=SowConfig())
    assert cache["blocks.1.attn.hook_pattern"].shape == (2, 3, N, N)
    assert cache["blocks.1.ffn.phistep.hook_kl"].shape == (2, N, N)


def test_the_trainers_step_runs_tiled_once_the_sequence_spans_several_tiles():
    """``train.steps``' loss (with its per-step hooks) builds no pairwise array when N > tile, and
    records every hook (β/KL statistics per layer) while N fits one tile."""
    from gaugeformer.train.steps import LossWeights, loss_with_hooks, step_hooks

    for tile, pairwise in ((8, False), (N, True)):
        model, tokens, targets = model_and_batch("reference", tile)
        graph, state = nnx.split(model)

        def grad(state):
            return jax.grad(lambda s: loss_with_hooks(nnx.merge(graph, s), tokens, targets,
                                                       LossWeights(), True)[0])(state)

        big = [s for s in _shapes(jax.make_jaxpr(grad)(state).jaxpr) if sum(d >= N for d in s) >= 2]
        assert bool(big) == pairwise, (tile, big[:3])
        assert step_hooks(model.cfg, N).attention == pairwise
