"""Model-level behaviour beyond the fixtures: config validation, hooks, overrides, causality, transforms."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gaugeformer.config import ModelConfig, from_reference_dict
from gaugeformer.convert.reference import model_from_reference, state_dict_to_params
from gaugeformer.convert.torch_pt import load_pt, split_checkpoint
from gaugeformer.loss import free_energy_loss
from gaugeformer.model.lm import GaugeTransformerLM, run_with_cache
from gaugeformer.ops.masks import valid_keys
from gaugeformer.testing import rel_err, tiny_config, tiny_model

FIXTURES = Path(__file__).parents[1] / "fixtures"
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 64, size=(2, 12)), jnp.int32)


# ---------------------------------------------------------------- config
def test_config_accepts_both_irreps_forms_and_round_trips():
    a = tiny_config(irreps="3x0e+1x1e+1x2e")
    b = tiny_config(irreps=[("ℓ0", 3, 1), ("ℓ1", 1, 3), ("ℓ2", 1, 5)])
    assert a == b and a.irreps == "3x0e+1x1e+1x2e"
    assert ModelConfig.from_json(a.to_json()) == a
    spec_dict = {k: v for k, v in a.to_dict().items() if k != "irreps"} | {"irrep_spec": a.irrep_spec}
    assert ModelConfig.from_dict(spec_dict) == a


@pytest.mark.parametrize("changes,match", [
    (dict(irreps="1x0e+1x1e"), "sum to embed_dim"),
    (dict(irreps=[("ℓ?", 1, 4)]), "odd dimension"),
    (dict(kappa_beta=0.0), "kappa_beta"),
    (dict(profile="fast"), "profile"),
    (dict(attention_transport="pade"), "attention_transport"),
    (dict(diagonal_covariance=True), "incompatible"),
])
def test_config_errors_name_the_problem(changes, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**changes)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown model config keys \\['n_heads'\\]"):
        ModelConfig.from_dict({**tiny_config().to_dict(), "n_heads": 4})


def test_profiles_fill_flags_and_allow_single_overrides():
    ref, clean = tiny_config(profile="reference"), tiny_config(profile="clean")
    assert (ref.attention_transport, ref.causal, ref.attention_floor) == ("taylor4", "reference_eps", 1e-8)
    assert (clean.attention_transport, clean.causal, clean.attention_floor) == ("exact", "strict", None)
    mixed = tiny_config(profile="clean", attention_transport="taylor4")
    assert mixed.attention_transport == "taylor4" and mixed.causal == "strict"


def test_reference_config_translation():
    d = json.loads((FIXTURES / "D_v256" / "model_config.json").read_text())
    cfg = from_reference_dict(d)
    assert cfg.kappa_beta == pytest.approx(25 / 11) and cfg.head_labels == ("ℓ2", "ℓ4", "ℓ5")
    assert cfg.profile == "reference" and cfg.basis == "reference"
    with pytest.raises(ValueError, match="use_multi_irrep"):
        from_reference_dict({**d, "use_multi_irrep": False})


# ---------------------------------------------------------------- hooks and jit/vmap/grad
def test_run_with_cache_config_D_returns_every_layer():
    d = json.loads((FIXTURES / "D_v256" / "model_config.json").read_text())
    cfg = from_reference_dict(d).replace(profile="clean", basis="e3nn", attention_transport=None, causal=None,
                                         logdet_eps_in_log=None, ffn_coupling_sign=None, train_forward=None,
                                         phi_step=None, so3_log=None, prior_includes_pos_embed=None)
    model = GaugeTransformerLM(cfg, rngs=nnx.Rngs(0))
    logits, cache = nnx.jit(run_with_cache)(model, TOKENS)
    assert logits.shape == (2, 12, 256)
    for layer in range(cfg.n_layers):
        beta = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert beta.shape == (2, 3, 12, 12) and cache[f"blocks.{layer}.attn.hook_kl"].shape == beta.shape
        np.testing.assert_allclose(beta.sum(-1), 1.0, rtol=1e-5)
        assert float(jnp.abs(jnp.triu(beta, 1)).max()) == 0.0  # strict causality in the clean profile


def test_vmap_over_sequences_equals_the_batched_forward():
    """The model composes with jax.vmap (one sequence per call).  Its loss gradient is checked against the
    reference's gradients in tests/model/test_parity.py."""
    model = tiny_model()
    graphdef, state = nnx.split(model)

    def logits_fn(state, tokens):
        return nnx.merge(graphdef, state)(tokens[None])[0]

    batched = jax.jit(jax.vmap(logits_fn, in_axes=(None, 0)))(state, TOKENS)
    np.testing.assert_allclose(batched, nnx.jit(lambda m, t: m(t))(model, TOKENS), rtol=2e-5, atol=2e-6)


# ---------------------------------------------------------------- beta_override
def test_beta_override_replaces_attention_and_optionally_the_ffn_beta():
    model = tiny_model()
    cfg = model.cfg
    mask = valid_keys(12)
    uniform = jnp.asarray(mask / mask.sum(-1, keepdims=True), jnp.float32)
    uniform = jnp.broadcast_to(uniform, (2, cfg.n_heads, 12, 12))
    override = (uniform,) * cfg.n_layers
    run = nnx.jit(run_with_cache, static_argnames=("override_ffn_beta",))
    base_logits, base = run(model, TOKENS)
    logits, cache = run(model, TOKENS, beta_override=override)
    np.testing.assert_array_equal(cache["blocks.1.attn.hook_pattern"], uniform)
    assert float(jnp.abs(logits - base_logits).max()) > 1e-4
    assert float(jnp.abs(cache["blocks.0.ffn.it0.hook_pattern"] - uniform[:, 0]).max()) > 1e-3
    _, both = run(model, TOKENS, beta_override=override, override_ffn_beta=True)
    np.testing.assert_allclose(both["blocks.0.ffn.it0.hook_pattern"], uniform[:, 0], rtol=1e-6)
    with pytest.raises(ValueError, match="one entry per layer"):
        model(TOKENS, beta_override=(uniform,))


# ---------------------------------------------------------------- causality (nanodo test_causality)
def _future_grad(profile):
    model = tiny_model(profile=profile, n_layers=2)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    t = 5

    def f(params):
        return nnx.merge(graphdef, params, rest)(TOKENS, train=True)[:, t].sum()

    g = jax.jit(jax.grad(f))(params)["embed"]["pos_embed"][...]
    return np.abs(np.asarray(g[t + 1:12])).max(), np.abs(np.asarray(g[: t + 1])).max()


def test_strict_causality_gradient_is_exactly_zero():
    future, past = _future_grad("clean")
    assert future == 0.0 and past > 0


def test_reference_profile_leaks_future_tokens():
    """The reference's β floor (1e-8 attention, 1e-6 FFN) lets future positions reach the past."""
    future, past = _future_grad("reference")
    assert 0.0 < future < 1e-3 * past


def test_strict_causality_values_bitwise():
    model = tiny_model(profile="clean")
    changed = TOKENS.at[:, 8:].set((TOKENS[:, 8:] + 7) % 64)
    fwd = nnx.jit(lambda m, t: m(t, train=True))
    a, b = fwd(model, TOKENS), fwd(model, changed)
    np.testing.assert_array_equal(a[:, :8], b[:, :8])


# ---------------------------------------------------------------- basis equivalence on a real checkpoint
def test_e3nn_and_reference_basis_models_agree():
    d = json.loads((FIXTURES / "A_v256" / "model_config.json").read_text())
    sd = split_checkpoint(load_pt(FIXTURES / "A_v256" / "best_model.pt"))["model_state_dict"]
    golden = np.load(FIXTURES / "A_v256" / "golden.npz")
    cfg_ref = from_reference_dict(d).replace(attention_transport="exact")
    cfg_e3 = cfg_ref.replace(basis="e3nn")
    ref = model_from_reference(sd, cfg_ref)
    e3 = model_from_reference(sd, cfg_e3)
    tok = jnp.asarray(golden["tokens"])
    run = nnx.jit(run_with_cache)
    (l_ref, c_ref), (l_e3, c_e3) = run(ref, tok), run(e3, tok)
    assert rel_err(l_e3, l_ref) < 1e-5
    for layer in range(2):
        key = f"blocks.{layer}.attn.hook_pattern"
        np.testing.assert_allclose(c_e3[key], c_ref[key], atol=1e-5)
    params = state_dict_to_params(sd, cfg_e3)
    assert not np.allclose(params["embed"]["base_mu"], np.asarray(sd["token_embed.base_mu"]))


# ---------------------------------------------------------------- other branches run and are finite
@pytest.mark.parametrize("changes", [
    dict(profile="reference"),
    dict(gauge_fixed_priors=False, diagonal_covariance=True, evolve_sigma=True),
    dict(gauge_fixed_priors=False, tie_embeddings=True, use_layernorm=True, use_residual=True,
         pos_encoding_mode="sinusoidal", alibi_slope=-0.1, mask_self_attention=True),
    dict(ffn="mlp", use_layernorm=True),
    dict(attention_pattern="local", attention_window=4, kl_impl="direct"),
    dict(attention_pattern="strided", attention_window=4, evolve_sigma=False, ffn_n_iterations=2),
])
def test_branches_forward_and_loss_are_finite(changes):
    model = tiny_model(**changes)
    loss, metrics = nnx.jit(free_energy_loss)(model, TOKENS, jnp.roll(TOKENS, -1, 1))
    assert np.isfinite(float(loss)) and float(metrics["loss/ce"]) > 0
