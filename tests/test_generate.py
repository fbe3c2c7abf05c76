"""Sampling: pure filters on hand-computed logits, greedy = argmax of full forwards, one compile."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gaugeformer import sampling as gen
from gaugeformer.config import PROFILES, ModelConfig
from gaugeformer.data.tokenizer import get_tokenizer
from gaugeformer.model.lm import GaugeTransformerLM

M = 16
TINY = ModelConfig(vocab_size=256, embed_dim=4, n_layers=1, max_seq_len=M, irreps="1x0e+1x1e",
                   kappa_beta=1.0, mu_init_std=2.0)


@pytest.fixture(scope="module")
def clean():
    """A random clean-profile model (VFE FFN, φ step in every forward) with readable logits:
    a larger output projection so that top-2 gaps sit far above float32 rounding."""
    model = GaugeTransformerLM(TINY, rngs=nnx.Rngs(0))
    model.out_proj[...] = model.out_proj[...] * 50.0
    return model


forward = nnx.jit(lambda m, t: m(t, train=False))


# ---------------------------------------------------------------------------------- pure math


def test_temperature():
    logits = jnp.array([1.0, 2.0, -4.0])
    np.testing.assert_array_equal(gen.scale_logits(logits, jnp.float32(2.0)), [0.5, 1.0, -2.0])
    np.testing.assert_array_equal(gen.scale_logits(logits, jnp.float32(0.0)), logits)


def test_top_k():
    logits = jnp.array([1.0, 3.0, 2.0, 0.0])
    assert gen.top_k_mask(logits, jnp.int32(2)).tolist() == [False, True, True, False]
    assert gen.top_k_mask(logits, jnp.int32(1)).tolist() == [False, True, False, False]
    assert all(gen.top_k_mask(logits, jnp.int32(0)).tolist())  # 0 = off
    assert all(gen.top_k_mask(logits, jnp.int32(9)).tolist())  # k > V keeps all
    ties = jnp.array([2.0, 1.0, 2.0, 2.0])  # the 2nd largest is 2.0: every 2.0 stays
    assert gen.top_k_mask(ties, jnp.int32(2)).tolist() == [True, False, True, True]


def test_top_p():
    probs = np.array([0.2, 0.5, 0.3])  # sorted: 0.5 (id 1), 0.3 (id 2), 0.2 (id 0)
    logits = jnp.asarray(np.log(probs), jnp.float32)
    keep = lambda p: gen.top_p_mask(logits, jnp.float32(p)).tolist()  # noqa: E731
    assert keep(0.5) == [False, True, False]  # mass before id 2 is 0.5, not < 0.5
    assert keep(0.6) == [False, True, True]
    assert keep(0.8) == [False, True, True]  # 0.5 + 0.3 reaches 0.8: id 0 (before = 0.8) out
    assert keep(0.81) == [True, True, True]
    assert keep(0.01) == [False, True, False]  # the top token always stays
    assert keep(1.0) == [True, True, True]


def test_filter_order_and_sampling():
    """temperature → top-k → top-p, then a draw that follows the filtered softmax."""
    logits = jnp.log(jnp.array([0.1, 0.4, 0.2, 0.3]))
    f = gen.filter_logits(logits, jnp.float32(1.0), jnp.int32(3), jnp.float32(0.6))
    # top-3 drops id 0; renormalised 0.4/0.9, 0.3/0.9, 0.2/0.9: before-mass 0, .444, .778 -> ids 1, 3
    assert np.isfinite(np.asarray(f)).tolist() == [False, True, False, True]
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = jax.vmap(lambda k: gen.sample_token(k, logits, jnp.float32(1.0), jnp.int32(3),
                                                jnp.float32(0.6)))(keys)
    freq = np.bincount(np.asarray(draws), minlength=4) / 4000
    np.testing.assert_allclose(freq, [0, 4 / 7, 0, 3 / 7], atol=0.03)  # 4000 draws: σ ≈ 0.008
    hot = gen.sample_token(jax.random.key(1), logits, jnp.float32(0.0), jnp.int32(0),
                           jnp.float32(1.0))
    assert int(hot) == 1  # temperature 0: argmax


def test_push_token_slides():
    w = jnp.array([[5, 6, 0, 0]], jnp.int32)
    assert gen.push_token(w, jnp.int32(2), jnp.int32(9)).tolist() == [[5, 6, 9, 0]]
    full = jnp.array([[1, 2, 3, 4]], jnp.int32)
    assert gen.push_token(full, jnp.int32(4), jnp.int32(9)).tolist() == [[2, 3, 4, 9]]
    assert gen.push_token(full, jnp.int32(11), jnp.int32(9)).tolist() == [[2, 3, 4, 9]]


# ---------------------------------------------------------------------------------- generation


def test_greedy_equals_argmax_of_full_forwards(clean):
    """Greedy decoding = argmax of a full forward on the growing prefix, at every step.

    Bitwise: the logits the decode step used equal the full forward of the final sequence
    (strict causality: later tokens in place of padding change nothing).  Prefix forwards of
    other lengths reduce in another order: same token, logits to float32 rounding."""
    prompt = [72, 105, 33]
    out = gen.generate(clean, prompt, max_new_tokens=M - len(prompt), temperature=0)
    assert out[:3] == prompt and len(out) == M
    final = np.asarray(forward(clean, jnp.asarray([out])))[0]
    for n in range(len(prompt), M):
        assert out[n] == int(np.argmax(final[n - 1])), n
    # the step's own logits, replayed
    graphdef, state = nnx.split(clean)
    window = jnp.asarray([out[:5] + [gen.PAD_ID] * (M - 5)], jnp.int32)
    _, token, step_logits = gen.decode_step(graphdef, state, window, jnp.int32(5),
                                            jax.random.key(0), jnp.float32(0), jnp.int32(0),
                                            jnp.float32(1))
    np.testing.assert_array_equal(np.asarray(step_logits), final[4])
    assert int(token) == out[5]
    for n in (3, 12):  # repeated full forwards on the growing prefix itself
        logits = np.asarray(forward(clean, jnp.asarray([out[:n]])))[0, -1]
        top2 = np.sort(logits)[-2:]
        assert top2[1] - top2[0] > 1e-3  # far above float32 rounding, so argmax is well defined
        assert int(np.argmax(logits)) == out[n]
        np.testing.assert_allclose(logits, final[n - 1], rtol=0, atol=1e-5 * np.abs(logits).max())


def test_clean_padding_has_no_effect(clean):
    """Strict causality: the padding's content changes no bit of the next-token logits."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (1, M))
    b = a.copy()
    b[0, 6:] = rng.integers(0, 256, M - 6)
    la, lb = (np.asarray(forward(clean, jnp.asarray(x)))[0, 5] for x in (a, b))
    np.testing.assert_array_equal(la, lb)


@pytest.mark.slow
def test_reference_padding_leak_as_documented():
    """Reference profile, trained fixture T_A_v256 (M = 128): the β floor lets the padding keys
    into the last real row.  The module docstring's numbers: next-token logits of the window
    differ from the growing-prefix forward by 1e-7…1e-4 relative, the padding's content moves
    them, and the greedy token agrees.  The clean profile (same weights) is the control."""
    from gaugeformer.testing import load_reference_fixture

    fixture = Path(__file__).parent / "fixtures" / "T_A_v256"
    rng = np.random.default_rng(0)
    for profile in ("reference", "clean"):
        over = {} if profile == "reference" else dict(PROFILES["clean"], profile="clean")
        model, cfg, _ = load_reference_fixture(fixture, **over)
        m = cfg.max_seq_len
        tokens = rng.integers(0, cfg.vocab_size, m)
        for n in (5, m // 2):
            prefix = np.asarray(forward(model, jnp.asarray(tokens[None, :n])))[0, -1]
            zeros = np.zeros((1, m), np.int32)
            zeros[0, :n] = tokens[:n]
            noise = zeros.copy()
            noise[0, n:] = rng.integers(0, cfg.vocab_size, m - n)
            lz, ln = (np.asarray(forward(model, jnp.asarray(w)))[0, n - 1] for w in (zeros, noise))
            rel = np.abs(lz - prefix).max() / np.abs(prefix).max()
            assert np.argmax(lz) == np.argmax(prefix)
            if profile == "reference":
                assert 1e-7 < rel < 1e-4 and np.abs(lz - ln).max() > 1e-6, (n, rel)
            else:
                assert rel < 2e-6 and np.array_equal(lz, ln), (n, rel)


def test_sliding_window_and_long_prompt(clean):
    """Past max_seq_len the model sees the last M tokens (positions restart at 0)."""
    prompt = list(np.random.default_rng(1).integers(0, 256, M + 5))
    out = gen.generate(clean, prompt, max_new_tokens=3, temperature=0)
    assert out[:M + 5] == [int(t) for t in prompt] and len(out) == M + 8
    for n in range(M + 5, M + 8):
        logits = np.asarray(forward(clean, jnp.asarray([out[n - M:n]])))[0, -1]
        assert out[n] == int(np.argmax(logits))


def test_one_compile_for_every_token_and_call(clean):
    before = gen.decode_step._cache_size()
    gen.generate(clean, [1, 2], max_new_tokens=20, temperature=0)  # slides past M = 16
    first = gen.decode_step._cache_size()
    gen.generate(clean, [3, 4, 5, 6, 7], max_new_tokens=4, temperature=0.7, top_k=5, top_p=0.9,
                 seed=3)
    gen.generate(clean, "text", tokenizer=get_tokenizer("bytes"), max_new_tokens=2)
    assert first - before <= 1 and gen.decode_step._cache_size() == first


def test_text_prompt_seed_and_loaded(clean):
    @dataclasses.dataclass
    class Loaded:
        model: GaugeTransformerLM
        tokenizer: object

    loaded = Loaded(clean, get_tokenizer("bytes"))
    text = gen.generate(loaded, "Hi!", max_new_tokens=5, temperature=1.0, seed=7)
    assert isinstance(text, str) and text.startswith("Hi!")
    assert gen.generate(loaded, "Hi!", max_new_tokens=5, seed=7) == text  # a seed fixes it
    ids = gen.generate(clean, [72, 105, 33], max_new_tokens=5, seed=7)
    assert get_tokenizer("bytes").decode(ids) == text
    others = {gen.generate(clean, [72, 105, 33], max_new_tokens=5, seed=s)[3] for s in range(12)}
    assert len(others) > 1  # temperature 1 does sample
    assert gen.generate(clean, [5], max_new_tokens=0) == [5]


@pytest.mark.parametrize("kwargs,needle", [
    ({"prompt": "x"}, "needs a tokenizer"),
    ({"prompt": []}, "empty"),
    ({"prompt": [300]}, "outside the model's vocabulary"),
    ({"prompt": [1], "temperature": -1.0}, "temperature"),
    ({"prompt": [1], "top_k": 0}, "top_k"),
    ({"prompt": [1], "top_p": 1.5}, "top_p"),
    ({"prompt": [1], "max_new_tokens": -2}, "max_new_tokens"),
])
def test_errors(clean, kwargs, needle):
    with pytest.raises(ValueError) as err:
        gen.generate(clean, **kwargs)
    assert needle in str(err.value)
    with pytest.raises(TypeError, match="GaugeTransformerLM"):
        gen.generate(object(), [1])


def test_top_k_one_is_greedy(clean):
    assert (gen.generate(clean, [9, 8], max_new_tokens=6, temperature=2.0, top_k=1, seed=4)
            == gen.generate(clean, [9, 8], max_new_tokens=6, temperature=0))
