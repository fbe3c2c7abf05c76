"""Sampling text from a gauge transformer: ``generate(model_or_loaded, prompt, ...)``.

One jitted decode step runs the full forward on a fixed-size window of ``M = max_seq_len`` tokens,
reads the logits at the last real position, picks the next token and writes it into the window.
Every shape is fixed, so the step compiles once per model structure: not per token, prompt length,
``max_new_tokens``, temperature, top-k or top-p (those are traced arguments).  The tokens stay on
the device between steps; they are fetched once at the end.

Context rule (sliding window).  The model sees the last ``min(n, M)`` tokens of the sequence so
far, at positions ``0 …``.  A prompt longer than ``M`` is cut to its last ``M`` tokens for the
forward (the returned sequence still holds the whole prompt), and when the sequence grows past
``M`` the window slides by one token per step, as GPT-2-style samplers do.  Learned positions
therefore restart at 0 for the window: past ``M`` the model sees text at positions it was trained
on, not the original offsets.

Sampling (temperature → top-k → top-p, the order Hugging Face applies them):

* ``temperature == 0``: greedy, ``argmax`` of the logits (first index on ties).
* :func:`scale_logits` divides by the temperature; :func:`top_k_mask` keeps the ``k`` largest
  logits (every logit equal to the ``k``-th largest is kept too); :func:`top_p_mask` keeps the
  smallest set of most probable tokens whose probability reaches ``p`` (the most probable token
  is always kept, ``p >= 1`` keeps everything).  The token at sequence position ``n`` is drawn
  with ``jax.random.fold_in(key(seed), n)``, so a seed fixes the output.

What the window's padding means, per profile (``M − n`` slots past the last real token hold
token 0 until they are filled):

* ``profile="clean"`` (``causal="strict"``): masked keys get exactly zero weight, so the padding
  has no effect at all: next-token logits are bitwise independent of the padding's content, and
  equal the logits of a full forward on the ``n``-token prefix up to float32 reduction order
  (~1e-7 relative; a forward of another length sums in another order).  The FFN's φ step runs in
  every forward (``phi_step="always"``), so generation sees the same computation as training and
  evaluation.  Greedy generation is the argmax of repeated full forwards on the growing prefix.
* ``profile="reference"`` (``causal="reference_eps"``): β is clamped at 1e-8 (the FFN's at 1e-6)
  *after* the softmax, so every row — the last real one included — gives each masked future key
  a small weight.  In the window those keys are the padding slots, so next-token logits depend on
  what the padding holds and differ from the reference's own ``generate`` (a forward on the
  growing prefix, which has no keys past the last token).  Measured on the trained fixture
  T_A_v256 (2 layers, M = 128) for prefix lengths 1 … 127: logits differ from the prefix forward
  by at most 6e-4 absolute (4e-5 relative; the same in float64, so it is the leak and not
  rounding), and changing the padding from zeros to random tokens moves them by 4e-5; the greedy
  token agreed at every length measured (top-2 gaps ≥ 1.8).  We keep the fixed window (one
  compile) with token-0 padding, which makes the output a deterministic function of the prompt;
  a greedy token can differ from the reference's only where its top-2 logit gap is below that
  leak.  Generation runs the eval forward (``train=False``): the reference's φ step runs only
  under autograd (``phi_step="train_only"``), so, like the reference's ``generate`` under
  ``no_grad``, the frames φ are not evolved — unlike the training forward the model was fitted
  with.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gaugeformer.axes import Array, Bool, Float, Int
from gaugeformer.model.lm import GaugeTransformerLM

PAD_ID = 0


# ----------------------------------------------------------------------------------------------
# Sampling math (pure)
# ----------------------------------------------------------------------------------------------


def scale_logits(logits: Float[Array, "V"], temperature: Float[Array, ""]) -> Float[Array, "V"]:
    """``logits / temperature``; a temperature of 0 leaves the logits as they are (greedy)."""
    safe = jnp.where(temperature > 0, temperature, 1.0)
    return logits / safe


def top_k_mask(logits: Float[Array, "V"], k: Int[Array, ""]) -> Bool[Array, "V"]:
    """Tokens among the ``k`` largest logits (ties with the ``k``-th largest kept; ``k <= 0`` or
    ``k >= V`` keeps all)."""
    v = logits.shape[-1]
    k = jnp.where((k <= 0) | (k > v), v, k)
    kth = jnp.sort(logits)[v - k]  # the k-th largest value
    return logits >= kth


def top_p_mask(logits: Float[Array, "V"], p: Float[Array, ""]) -> Bool[Array, "V"]:
    """Nucleus: the most probable tokens whose probabilities, summed in decreasing order, first
    reach ``p``.  A token is kept when the mass of the tokens strictly before it in that order is
    below ``p``, so the top token always stays; ``p >= 1`` keeps all."""
    order = jnp.argsort(-logits, stable=True)
    probs = jax.nn.softmax(logits)[order]
    before = jnp.cumsum(probs) - probs
    keep_sorted = (before < p) | (p >= 1.0)
    return jnp.zeros_like(keep_sorted).at[order].set(keep_sorted)


def filter_logits(logits: Float[Array, "V"], temperature: Float[Array, ""], top_k: Int[Array, ""],
                  top_p: Float[Array, ""]) -> Float[Array, "V"]:
    """Temperature, then top-k, then top-p; removed tokens get ``-inf``."""
    scaled = scale_logits(logits, temperature)
    scaled = jnp.where(top_k_mask(scaled, top_k), scaled, -jnp.inf)
    return jnp.where(top_p_mask(scaled, top_p), scaled, -jnp.inf)


def sample_token(key: jax.Array, logits: Float[Array, "V"], temperature: Float[Array, ""],
                 top_k: Int[Array, ""], top_p: Float[Array, ""]) -> Int[Array, ""]:
    """One token id: ``argmax`` when ``temperature == 0``, else a draw from the filtered logits."""
    drawn = jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p))
    return jnp.where(temperature > 0, drawn, jnp.argmax(logits)).astype(jnp.int32)


def push_token(window: Int[Array, "1 M"], length: Int[Array, ""], token: Int[Array, ""]
               ) -> Int[Array, "1 M"]:
    """Write ``token`` after the ``length`` tokens so far (sliding left by one once full)."""
    m = window.shape[-1]
    shifted = jnp.where(length >= m, jnp.roll(window, -1, axis=-1), window)
    return shifted.at[0, jnp.minimum(length, m - 1)].set(token)


# ----------------------------------------------------------------------------------------------
# The jitted step
# ----------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def decode_step(graphdef: nnx.GraphDef, state: nnx.State, window: Int[Array, "1 M"],
                length: Int[Array, ""], key: jax.Array, temperature: Float[Array, ""],
                top_k: Int[Array, ""], top_p: Float[Array, ""]
                ) -> tuple[Int[Array, "1 M"], Int[Array, ""], Float[Array, "V"]]:
    """Token number ``length`` (0-based) of the sequence: ``(window, token, logits)``, where
    ``logits`` are the next-token logits (before filtering) at the last real position
    ``min(length, M) - 1``; ``key`` is the generation's key (folded with ``length`` here)."""
    model = nnx.merge(graphdef, state)
    m = window.shape[-1]
    logits = model(window, train=False)[0, jnp.minimum(length, m) - 1]
    token = sample_token(jax.random.fold_in(key, length), logits, temperature, top_k, top_p)
    return push_token(window, length, token), token, logits


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def resolve(model_or_loaded: Any, tokenizer: Any = None) -> tuple[GaugeTransformerLM, Any]:
    """``(model, tokenizer)`` from a model or an object with ``.model`` and ``.tokenizer``
    (:class:`gaugeformer.Loaded`); an explicit ``tokenizer`` wins."""
    if isinstance(model_or_loaded, GaugeTransformerLM):
        return model_or_loaded, tokenizer
    model = getattr(model_or_loaded, "model", None)
    if not isinstance(model, GaugeTransformerLM):
        raise TypeError(f"generate needs a GaugeTransformerLM or an object with .model and "
                        f".tokenizer (gf.load's Loaded), got {type(model_or_loaded).__name__}")
    return model, tokenizer if tokenizer is not None else getattr(model_or_loaded, "tokenizer",
                                                                  None)


def encode_prompt(prompt: str | Sequence[int] | np.ndarray, tokenizer: Any, vocab_size: int
                  ) -> list[int]:
    """Prompt -> model token ids, checked against the model's vocabulary."""
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError("a text prompt needs a tokenizer: pass tokenizer=gf.get_tokenizer("
                             "'gpt2') (or 'bytes'), or a Loaded object, or a list of token ids")
        ids = list(tokenizer.encode(prompt))
    else:
        ids = [int(t) for t in np.asarray(prompt).reshape(-1)]
    if not ids:
        raise ValueError("the prompt is empty: give at least one token to condition on")
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"prompt token id {bad[0]} is outside the model's vocabulary "
                         f"[0, {vocab_size}); a restricted-vocabulary model needs its own "
                         "tokenizer (gf.get_tokenizer(kind, kept_ids=...) or gf.load's)")
    return ids


def generate(model_or_loaded: Any, prompt: str | Sequence[int] | np.ndarray, *,
             tokenizer: Any = None, max_new_tokens: int = 32, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None,
             seed: int = 0) -> str | list[int]:
    """Continue ``prompt`` by ``max_new_tokens`` tokens (see the module docstring).

    Args:
      model_or_loaded: a :class:`GaugeTransformerLM`, or an object with ``.model`` and
        ``.tokenizer`` (what ``gf.load`` returns).
      prompt: text (needs a tokenizer) or token ids of the model's vocabulary.
      tokenizer: ``encode``/``decode`` over the model's ids; overrides the loaded one.
      max_new_tokens: tokens to add (``0`` returns the prompt); any number, the window slides.
      temperature: ``0`` for greedy decoding, else the softmax temperature.
      top_k: keep the ``k`` most likely tokens (``None``: all).
      top_p: nucleus probability in ``(0, 1]`` (``None``: all).
      seed: PRNG seed of the draws.

    Returns:
      A string (the prompt's text followed by the new text) for a text prompt, else the list of
      ids, prompt included.
    """
    model, tokenizer = resolve(model_or_loaded, tokenizer)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
    cfg = model.cfg
    ids = encode_prompt(prompt, tokenizer, cfg.vocab_size)
    new = generate_ids(model, ids, max_new_tokens, temperature, top_k or 0, top_p or 1.0, seed)
    out = ids + new
    return tokenizer.decode(out) if isinstance(prompt, str) else out


def generate_ids(model: GaugeTransformerLM, ids: list[int], max_new_tokens: int,
                 temperature: float, top_k: int, top_p: float, seed: int) -> list[int]:
    """The new token ids (``top_k = 0`` and ``top_p = 1`` disable those filters)."""
    m = model.cfg.max_seq_len
    context = ids[-m:]
    window = np.full((1, m), PAD_ID, np.int32)
    window[0, :len(context)] = context
    window = jnp.asarray(window)
    graphdef, state = nnx.split(model)
    key = jax.random.key(seed)
    args = (jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))
    tokens = []
    for t in range(max_new_tokens):
        length = jnp.int32(len(ids) + t)
        window, token, _ = decode_step(graphdef, state, window, length, key, *args)
        tokens.append(token)
    return [int(t) for t in jax.device_get(tokens)]
