"""Hooks by full name: names_filter (static, nothing else recorded), the ActivationCache, forward hooks that
patch μ / Σ / φ / β, gradients through a hook, clear errors, no recompilation for an equal filter.

Most tests use the MLP FFN (half the compile time of the VFE FFN); one VFE model checks every name.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gaugeformer.model.common import maybe_norm
from gaugeformer.model.lm import run_with_cache, run_with_hooks
from gaugeformer.model.sow import ALL, NOTHING, ActivationCache, SowConfig, resolve, valid_hook_names
from gaugeformer.ops.blocks import split_sigma
from gaugeformer.ops.masks import valid_keys
from gaugeformer.ops.precision import logits_matmul
from gaugeformer.testing import rel_err, tiny_config, tiny_model

N = 8
TOKENS = jnp.asarray(np.random.default_rng(1).integers(0, 64, size=(2, N)), jnp.int32)
RNG = np.random.default_rng(2)
MLP = dict(ffn="mlp", profile="clean")
# Hooks whose patch must reach the logits: everything before and in block 0 (block 1's Σ / φ and the final Σ
# only feed later layers or the loss).
PATCHABLE = [n for n in valid_hook_names(tiny_config(**MLP))
             if not n.startswith("blocks.1.") and n != "hook_sigma_final"]


@pytest.fixture(scope="module")
def mlp():
    """A 2-layer model with the MLP FFN and its full cache (inference forward)."""
    model = tiny_model(**MLP)
    logits, cache = run_with_cache(model, TOKENS)
    return model, logits, cache


@pytest.fixture(scope="module")
def vfe():
    """The VFE model's full training-forward cache, with every name the hooks asked about at trace time."""
    model = tiny_model()
    asked = []
    _, cache = run_with_cache(model, TOKENS, names_filter=lambda name: asked.append(name) or True, train=True)
    return model, cache, asked


def _mask(cfg):
    return valid_keys(N, cfg.attention_pattern, cfg.attention_window, cfg.mask_self_attention)


def _downstream_of_block0(model, mu, sigma_merged, phi):
    """Block 1, final norm and output projection run by hand from a belief after block 0."""
    cfg = model.cfg
    mu_prior = model.embed(TOKENS)[3]
    mu, _, _, _ = model.blocks[1](mu, split_sigma(sigma_merged, cfg.layout), phi, mu_prior, _mask(cfg),
                                     train=False, sow=NOTHING)
    return mu, logits_matmul(maybe_norm(model.final_norm, mu), model.output_weight, cfg.logits_precision)


# ---------------------------------------------------------------- names, scoping, the cache object
def test_scoped_names_are_the_cache_names_and_valid_hook_names(vfe):
    model, cache, asked = vfe
    assert set(cache) == set(valid_hook_names(model.cfg))  # train=True: the φ step's hooks too
    assert set(asked) == set(cache)  # what sow.wants saw (scoped names) is where the values landed
    assert cache["blocks.1.ffn.it0.hook_pattern"].shape == (2, N, N)


def test_scoping_decides_per_layer():
    only = SowConfig(names=frozenset({"blocks.1.attn.hook_pattern"}))
    assert only.scope("blocks.1.").scope("attn.").wants("hook_pattern")
    assert not only.scope("blocks.0.").scope("attn.").wants("hook_pattern")
    assert not only.scope("blocks.1.").scope("attn.").wants("hook_kl")
    assert not only.scope("blocks.1.").scope("ffn.").wants("hook_pattern")
    # the coarse groups judge full names: the FFN's β is in the ffn group, not the attention group
    attn = SowConfig(attention=True, ffn=False, beliefs=False).scope("blocks.0.")
    assert attn.scope("attn.").wants("hook_kl") and not attn.scope("ffn.").wants("it0.hook_pattern")
    assert not attn.wants("hook_mu_out")


def test_plain_forward_wants_nothing_and_capture_wants_all(mlp):
    model = mlp[0]
    assert resolve(model, None) is NOTHING
    inside, _ = nnx.capture(lambda m: resolve(m, None), nnx.Intermediate)(model)
    assert inside is ALL
    assert resolve(model, SowConfig(beliefs=False)) == SowConfig(beliefs=False)


def test_activation_cache_mapping_stack_and_pytree(vfe):
    model, cache, _ = vfe
    assert isinstance(cache, ActivationCache) and len(cache) == len(list(cache.keys()))
    assert "blocks.0.attn.hook_pattern" in cache and "blocks.9.attn.hook_pattern" not in cache
    assert dict(**cache).keys() == cache.keys() and dict(cache.items()).keys() == cache.keys()
    stacked = cache.stack("attn.hook_pattern")
    assert stacked.shape == (model.cfg.n_layers, 2, model.cfg.n_heads, N, N)
    for layer in range(model.cfg.n_layers):
        np.testing.assert_array_equal(stacked[layer], cache[f"blocks.{layer}.attn.hook_pattern"])
    assert cache.stack("ffn.it0.hook_pattern").shape == (2, 2, N, N)
    assert cache.stack("hook_mu_out").shape == (2, 2, N, model.cfg.embed_dim)
    with pytest.raises(KeyError, match="per-layer suffixes recorded"):
        cache.stack("attn.hook_patern")
    with pytest.raises(KeyError, match="close: blocks.0.attn.hook_pattern"):
        cache["blocks.0.attn.hook_patern"]
    doubled = jax.tree.map(lambda x: 2 * x, cache)
    assert isinstance(doubled, ActivationCache) and list(doubled) == list(cache)
    np.testing.assert_array_equal(doubled["embed.hook_mu"], 2 * cache["embed.hook_mu"])
    single = ActivationCache({"blocks.1.attn.hook_pattern": stacked[1]})
    with pytest.raises(KeyError, match=r"found layers \[1\]"):
        single.stack("attn.hook_pattern")


def test_names_filter_records_exactly_the_requested_hook(mlp):
    model, logits_all, cache_all = mlp
    name = "blocks.1.attn.hook_pattern"
    logits, cache = run_with_cache(model, TOKENS, names_filter=[name])
    assert list(cache) == [name]
    # another compiled program: equal to float32 rounding (XLA fuses differently)
    assert rel_err(cache[name], cache_all[name]) < 1e-6 and rel_err(logits, logits_all) < 1e-6
    # the traced program returns the logits and that one tensor, nothing else
    graphdef, state = nnx.split(model)
    def only(s, t):
        return run_with_cache(nnx.merge(graphdef, s), t, names_filter=[name])

    jaxpr = jax.make_jaxpr(only)(state, TOKENS)
    assert [a.shape for a in jaxpr.out_avals] == [logits.shape, cache_all[name].shape]
    # a predicate filter and a single name work too
    _, by_pred = run_with_cache(model, TOKENS, names_filter=lambda n: n.endswith("hook_mu_final"))
    assert list(by_pred) == ["hook_mu_final"]


def test_equal_filter_does_not_recompile(mlp):
    model = mlp[0]
    traces = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_trace_duration":
            traces.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        run_with_cache(model, TOKENS, names_filter=["blocks.0.attn.hook_kl", "blocks.1.hook_mu_out"])
        first = len(traces)
        for _ in range(3):  # fresh, equal lists, in another order
            run_with_cache(model, TOKENS, names_filter=["blocks.1.hook_mu_out", "blocks.0.attn.hook_kl"])
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert first > 0 and len(traces) == first


@pytest.mark.parametrize("bad,close", [
    ("blocks.0.attn.hook_patern", "blocks.0.attn.hook_pattern"),
    ("blocks.0.hook_mu", "blocks.0.hook_mu_out"),
    ("blocks.7.attn.hook_pattern", "blocks.1.attn.hook_pattern"),  # layer out of range
    ("blocks.0.ffn.it0.hook_pattern", "blocks.0.attn.hook_pattern"),  # the MLP FFN has no β
])
def test_unknown_names_are_refused_with_close_valid_names(mlp, bad, close):
    model = mlp[0]
    with pytest.raises(ValueError, match=f"unknown hook name '{bad}' in names_filter; did you mean .*{close}"):
        run_with_cache(model, TOKENS, names_filter=[bad])
    with pytest.raises(ValueError, match=f"unknown hook name '{bad}' in fwd_hooks"):
        run_with_hooks(model, TOKENS, fwd_hooks=[(bad, lambda x: x)])
    with pytest.raises(TypeError, match="names_filter must be"):
        run_with_cache(model, TOKENS, names_filter=[3])


def test_hook_must_keep_the_shape(mlp):
    with pytest.raises(ValueError, match=r"forward hook on hook_mu_final returned shape \(2, 8\)"):
        run_with_hooks(mlp[0], TOKENS, fwd_hooks=[("hook_mu_final", lambda x: x[..., 0])])


# ---------------------------------------------------------------- patches
def test_identity_hooks_everywhere_change_nothing(mlp):
    """Every hook routed through a forward hook (Σ merged to [K,K] and split back) gives the same logits."""
    model, logits, _ = mlp
    seen = []
    patched = run_with_hooks(model, TOKENS, fwd_hooks=[(lambda n: True, lambda x, name: seen.append(name))])
    assert rel_err(patched, logits) < 1e-6
    assert set(seen) == set(valid_hook_names(model.cfg))


def test_pattern_patch_equals_beta_override(mlp):
    model, logits, _ = mlp
    mask = _mask(model.cfg)
    uniform = jnp.broadcast_to(jnp.asarray(mask / mask.sum(-1, keepdims=True), jnp.float32),
                               (2, model.cfg.n_heads, N, N))
    patched, cache = run_with_hooks(model, TOKENS, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda b: uniform)],
                                    return_cache=True, names_filter=["blocks.0.attn.hook_pattern"])
    override = nnx.jit(lambda m, t, b: m(t, beta_override=(b, None)))(model, TOKENS, uniform)
    np.testing.assert_array_equal(cache["blocks.0.attn.hook_pattern"], uniform)  # recorded after the patch
    assert rel_err(patched, override) < 1e-6
    assert rel_err(patched, logits) > 1e-3


def test_mu_final_patch_moves_logits_by_delta_times_w(mlp):
    model, logits, _ = mlp
    delta = jnp.asarray(RNG.normal(size=(2, N, model.cfg.embed_dim)), jnp.float32)
    names = []
    patched = run_with_hooks(model, TOKENS, fwd_hooks=[("hook_mu_final", lambda x, name: names.append(name)
                                                        or x + delta)])
    expected = np.asarray(delta, np.float64) @ np.asarray(model.output_weight, np.float64).T
    assert names == ["hook_mu_final"]
    assert rel_err(np.asarray(patched, np.float64) - np.asarray(logits, np.float64), expected) < 1e-5


def test_embed_mu_patch_reaches_the_first_attention(mlp):
    model, _, cache0 = mlp
    delta = jnp.asarray(RNG.normal(size=(2, N, model.cfg.embed_dim)), jnp.float32)
    _, cache = run_with_hooks(model, TOKENS, fwd_hooks=[("embed.hook_mu", lambda x: x + delta)],
                              return_cache=True, names_filter=["blocks.0.attn.hook_mu_in"])
    expected = maybe_norm(model.blocks[0].norm1, cache0["embed.hook_mu"] + delta)
    assert rel_err(cache["blocks.0.attn.hook_mu_in"], expected) < 1e-6


def test_mu_sigma_phi_patch_after_block0_equals_block1_run_by_hand(mlp):
    model, _, cache0 = mlp
    mu = cache0["blocks.0.hook_mu_out"] + 0.1 * jnp.asarray(RNG.normal(size=(2, N, model.cfg.embed_dim)),
                                                              jnp.float32)
    sigma = 1.5 * cache0["blocks.0.hook_sigma_out"]
    phi = cache0["blocks.0.hook_phi_out"] + 0.05 * jnp.asarray(RNG.normal(size=(2, N, 3)), jnp.float32)
    hooks = [("blocks.0.hook_mu_out", lambda _: mu), ("blocks.0.hook_sigma_out", lambda _: sigma),
             ("blocks.0.hook_phi_out", lambda _: phi)]
    logits, cache = run_with_hooks(model, TOKENS, fwd_hooks=hooks, return_cache=True,
                                   names_filter=["blocks.1.hook_mu_out", "blocks.1.attn.hook_pattern"])
    downstream = nnx.jit(_downstream_of_block0)
    mu1, logits1 = downstream(model, mu, sigma, phi)
    assert rel_err(cache["blocks.1.hook_mu_out"], mu1) < 1e-5
    assert rel_err(logits, logits1) < 1e-5
    # each patch took effect: leaving out the Σ or the φ patch gives other logits
    assert rel_err(logits, downstream(model, mu, cache0["blocks.0.hook_sigma_out"], phi)[1]) > 1e-4
    assert rel_err(logits, downstream(model, mu, sigma, cache0["blocks.0.hook_phi_out"])[1]) > 1e-4
    assert rel_err(cache["blocks.1.attn.hook_pattern"], cache0["blocks.1.attn.hook_pattern"]) > 1e-3


@pytest.mark.parametrize("name", ["blocks.0.attn.hook_kl", "blocks.0.attn.hook_attn_scores"])
def test_kl_or_score_patch_sets_beta(mlp, name):
    """KL ≡ 0 (or scores ≡ 0 on allowed keys) makes β uniform over the allowed keys (clean profile)."""
    model = mlp[0]
    mask = _mask(model.cfg)

    def flat(x):
        return jnp.zeros_like(x) if name.endswith("hook_kl") else jnp.broadcast_to(jnp.where(mask, 0.0, -jnp.inf), x.shape)

    _, cache = run_with_hooks(model, TOKENS, fwd_hooks=[(name, flat)], return_cache=True,
                              names_filter=["blocks.0.attn.hook_pattern"])
    np.testing.assert_allclose(cache["blocks.0.attn.hook_pattern"],
                               np.broadcast_to(mask / mask.sum(-1, keepdims=True), (2, model.cfg.n_heads, N, N)),
                               rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def scaled(mlp):
    """``sel [len(PATCHABLE)] -> logits`` with hook ``PATCHABLE[i]`` scaled by ``1 + 0.1 sel[i]`` (β: raised to
    that power, then renormalised); one compile for all."""
    model, index = mlp[0], {name: i for i, name in enumerate(PATCHABLE)}

    def selected(name):
        return name in index

    @jax.jit
    def run(sel):
        def patch(x, name):
            power = 1 + 0.1 * sel[index[name]]
            if name.endswith("hook_pattern"):  # β stays normalised (a β summing to 1.1 breaks Σ's PSD-ness)
                x = x ** power
                return x / x.sum(-1, keepdims=True)
            return x * power

        return run_with_hooks(model, TOKENS, fwd_hooks=[(selected, patch)])

    return run


@pytest.mark.parametrize("name", PATCHABLE)
def test_every_hook_is_an_intervention_point(scaled, name):
    base = scaled(jnp.zeros(len(PATCHABLE)))
    patched = scaled(jnp.zeros(len(PATCHABLE)).at[PATCHABLE.index(name)].set(1.0))
    assert rel_err(patched, base) > 1e-5


# ---------------------------------------------------------------- gradients through hooks
def _weights(shape):
    return jnp.asarray(RNG.normal(size=shape), jnp.float32)


def test_gradient_wrt_additive_patch_at_mu_final_is_c_times_w(mlp):
    model = mlp[0]
    c = _weights((2, N, model.cfg.vocab_size))

    def objective(delta):
        return jnp.sum(c * run_with_hooks(model, TOKENS, fwd_hooks=[("hook_mu_final", lambda x: x + delta)]))

    grad = jax.jit(jax.grad(objective))(jnp.zeros((2, N, model.cfg.embed_dim)))
    expected = np.asarray(c, np.float64) @ np.asarray(model.output_weight, np.float64)
    assert rel_err(grad, expected) < 1e-5


def test_gradient_wrt_block_output_equals_autodiff_of_block1_by_hand(mlp):
    model, _, cache0 = mlp
    c = _weights((2, N, model.cfg.vocab_size))
    mu0 = cache0["blocks.0.hook_mu_out"]

    def via_hook(delta):
        hooks = [("blocks.0.hook_mu_out", lambda x: x + delta)]
        return jnp.sum(c * run_with_hooks(model, TOKENS, fwd_hooks=hooks))

    def by_hand(mu):
        return jnp.sum(c * _downstream_of_block0(model, mu, cache0["blocks.0.hook_sigma_out"],
                                                 cache0["blocks.0.hook_phi_out"])[1])

    g_hook = jax.jit(jax.grad(via_hook))(jnp.zeros_like(mu0))
    g_hand = jax.jit(jax.grad(by_hand))(mu0)
    assert float(jnp.abs(g_hand).max()) > 0
    assert float(jnp.linalg.norm(g_hook - g_hand) / jnp.linalg.norm(g_hand)) < 1e-5


def test_gradient_wrt_pattern_equals_gradient_wrt_beta_override(mlp):
    model, _, cache0 = mlp
    c = _weights((2, N, model.cfg.vocab_size))
    beta1 = cache0["blocks.1.attn.hook_pattern"]

    def via_hook(delta):
        return jnp.sum(c * run_with_hooks(model, TOKENS,
                                          fwd_hooks=[("blocks.1.attn.hook_pattern", lambda b: b + delta)]))

    def via_override(beta):
        return jnp.sum(c * model(TOKENS, beta_override=(None, beta)))

    g_hook = jax.jit(jax.grad(via_hook))(jnp.zeros_like(beta1))
    g_override = jax.jit(jax.grad(via_override))(beta1)
    assert float(jnp.abs(g_override).max()) > 0
    assert float(jnp.linalg.norm(g_hook - g_override) / jnp.linalg.norm(g_override)) < 1e-5
