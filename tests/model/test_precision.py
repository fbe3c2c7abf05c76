"""Full float32 precision on every backend, checked structurally (XLA's CPU backend ignores precision).

* Every ``dot_general`` in the jaxprs of the training forward and of the loss gradient — nested jaxprs
  included — carries ``Precision.HIGHEST``, except the output projection, which follows
  ``ModelConfig.logits_precision``.
* The jaxpr walk is shown to find a low-precision contraction hidden in ``jit``/``checkpoint``/``scan``/
  ``cond``/``custom_jvp`` (a bug injected on purpose).
* Emulated bf16 / TF32 operand rounding leaves the model bitwise unchanged (its contractions are pinned),
  and documents the damage the platform defaults would do on the trained fixture (slow test).
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gaugeformer import precision_audit as pa
from gaugeformer.loss import free_energy_loss
from gaugeformer.model.lm import run_with_cache
from gaugeformer.testing import load_reference_fixture, tiny_model

FIXTURES = Path(__file__).parents[1] / "fixtures"
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 64, size=(2, 12)), jnp.int32)


def functional(model):
    """``(graphdef, state)`` and pure functions of the state: training forward and loss gradient."""
    gdef, state = nnx.split(model)

    def forward(state, tokens):
        return nnx.merge(gdef, state)(tokens, train=True, training_forward=True)

    def loss_grad(state, tokens, targets):
        return jax.grad(lambda s: free_energy_loss(nnx.merge(gdef, s), tokens, targets)[0])(state)

    return state, forward, loss_grad


def is_output_projection(dot: pa.DotInfo) -> bool:
    return "output_projection" in dot.scope


@pytest.mark.parametrize("profile,logits_precision", [
    ("reference", "highest"), ("clean", "default"),  # the default run: each profile and each option once
    pytest.param("reference", "default", marks=pytest.mark.slow),
    pytest.param("clean", "highest", marks=pytest.mark.slow),
])
def test_every_contraction_is_full_precision(profile, logits_precision):
    model = tiny_model(profile=profile, logits_precision=logits_precision, n_layers=2)
    state, forward, loss_grad = functional(model)
    for name, dots in (("forward", pa.dot_generals(forward, state, TOKENS)),
                       ("loss gradient", pa.dot_generals(loss_grad, state, TOKENS, TOKENS))):
        low = [d for d in dots if not d.full and not is_output_projection(d)]
        assert not low, f"{name}: {len(low)} contractions below full precision, first {low[0]}"
        out = [d for d in dots if is_output_projection(d)]
        assert out, f"{name}: the output projection was not found"
        assert all(d.full == (logits_precision == "highest") for d in out), out
        assert len(dots) - len(out) >= 20  # the pairwise GEMMs are really there


def test_walk_finds_low_precision_hidden_in_nested_jaxprs():
    w = jnp.ones((4, 4))

    @jax.custom_jvp
    def custom(x):
        return jnp.einsum("ij,jk->ik", x, w)  # default precision: the injected bug

    custom.defjvp(lambda p, t: (custom(p[0]), t[0]))

    @jax.jit
    def fn(x):
        def body(c, _):
            c = jax.lax.cond(c.sum() > 0, lambda c: jax.checkpoint(custom)(c), lambda c: c, c)
            return c, None
        return jax.lax.scan(body, x, None, length=2)[0]

    dots = pa.dot_generals(fn, jnp.ones((4, 4)))
    assert len(dots) == 1 and not dots[0].full
    assert [p.split(".")[0] for p in dots[0].path] == ["jit", "scan", "cond", "remat2", "custom_jvp_call"]
    # the emulation rounds it: 1 + 2^-9 is exact in TF32, not in bf16
    x = jnp.full((4, 4), 1.0 + 2.0**-9) / 4
    assert float(pa.emulate(fn, "tf32")(x)[0, 0]) == float(fn(x)[0, 0])
    assert float(pa.emulate(fn, "bf16")(x)[0, 0]) != float(fn(x)[0, 0])


@pytest.mark.parametrize("rounding,bits", [("bf16", 8), ("tf32", 11)])
def test_operand_rounding_keeps_the_right_number_of_bits(rounding, bits):
    x = jnp.asarray(np.random.default_rng(1).normal(size=1000), jnp.float32)
    r = pa.round_operand(x, rounding)
    rel = np.abs(np.asarray(r, np.float64) - np.asarray(x, np.float64)) / np.abs(np.asarray(x, np.float64))
    assert rel.max() <= 2.0**-bits * (1 + 1e-6)  # round to nearest: half an ulp of a `bits`-bit significand
    assert rel.max() > 2.0**-(bits + 1)


def test_pinned_model_is_unchanged_by_emulated_rounding():
    model = tiny_model(profile="clean")
    state, forward, _ = functional(model)
    ref = jax.jit(forward)(state, TOKENS)
    np.testing.assert_array_equal(pa.emulate(forward, "bf16")(state, TOKENS), ref)  # TF32: the slow test


@pytest.mark.slow
def test_platform_default_precision_would_wreck_trained_attention():
    """Measured on trained T_A: rounding the contraction operands as a TPU (bf16) or an A100/H100 (TF32)
    does by default moves layer 1's KL by 46% / 7% of its maximum and the logits by 0.18 / 0.015; with
    the pinned precision nothing moves (README, "Precision")."""
    model, _, golden = load_reference_fixture(FIXTURES / "T_A_v256")
    gdef, state = nnx.split(model)

    def kl_and_logits(state, tokens):
        logits, cache = run_with_cache(nnx.merge(gdef, state), tokens, train=True)
        return logits, cache["blocks.1.attn.hook_kl"]

    tokens = golden["tokens"]
    logits, kl = jax.jit(kl_and_logits)(state, tokens)
    damage = {}
    for rounding in ("bf16", "tf32"):
        lg, k = pa.emulate(kl_and_logits, rounding)(state, tokens)
        np.testing.assert_array_equal(k, kl)
        lg, k = pa.emulate(kl_and_logits, rounding, respect_precision=False)(state, tokens)
        damage[rounding] = (pa.max_relative_change(k, kl), float(jnp.max(jnp.abs(lg - logits))))
    assert damage["bf16"][0] > 0.3 and damage["bf16"][1] > 0.1, damage
    assert damage["tf32"][0] > 0.03 and damage["tf32"][1] > 0.005, damage
