"""Why is a head uniform?  Per-head attribution of attention uniformity (issue 14).

:func:`attribute` returns, for every layer and head, the JSON-ready structure the validation report and the
training evaluations embed (``layers[l].heads[h].uniformity``)::

    {"cause": "token_independent" | "kl_below_temperature" | "not_uniform" | "other",
     "belief_spread": {mu_std, mu_rms, sigma_std, sigma_rms, raw_mu_std},   # this head's beliefs, tokens
     "kl_mean": ..., "kl_std": ...,                                       # nats, valid pairs / within rows
     "terms": {"trace": {mean, row_std}, "mahalanobis": {...}, "logdet": {...}},
     "sources": {"all", "token_frames", "positional_frames", "positional_mu", "without_earlier_ffn"},
     "evidence": {"row_std", "row_std_legacy", "logit_std", "token_logit_shift", "terms_residual", "text"}}

Definitions (every "std" of a pair quantity is the within-row std over the keys a query may attend,
averaged over rows with two or more keys, then over the batch: only the spread *along* a row reaches the
softmax):

* ``evidence.row_std`` is the valid-keys row_std (the report's), ``row_std_legacy`` the reference's (masked
  keys included).
* ``belief_spread``: spread across tokens of the head's beliefs *pulled back* to the common frame
  (``F_i μ_i``, ``F_i Σ_i F_iᵀ``, :func:`gaugeformer.ops.kl_terms.belief_spread`) — the only form of the
  beliefs the KL sees under exact transport — and ``raw_mu_std``, the spread of the raw μ slice (what the
  seed's μ_dist measures).
* ``terms``: the KL's trace, Mahalanobis and log-det terms (:mod:`gaugeformer.ops.kl_terms`); they sum to
  ``hook_kl`` (``evidence.terms_residual`` is the largest difference).
* ``sources``: the head's KL std recomputed by controlled recomputation: ``all`` is the model as it runs;
  ``token_frames`` the token embedding alone (token frames φ_tok and the beliefs the embedding gives each
  token, no positional frame, no positional μ); ``positional_frames`` the positional frames alone (every
  token given the neutral belief: (μ₀, Σ₀) of gauge-fixed priors, else the sequence mean);
  ``positional_mu`` the positional μ embedding alone (neutral belief plus ``pos_embed``, identity frames);
  these three at the layer-0 attention (after its norm).
  ``without_earlier_ffn`` is this layer's KL std when every earlier block skips its FFN (attention and
  residual only); None at layer 0.  A source that does not exist in the model (no positional frames, no
  positional embedding) is 0 by construction; with ``mu_normalize``/``mu_max_norm`` the embedding pieces
  are not separable and are None.

Cause (thresholds in :data:`THRESHOLDS`, derived below, not tuned):

1. ``not_uniform``: the head's valid row_std exceeds 0.05, the boundary of the report's UNIFORM label
   (:data:`gaugeformer.stats.MEDIUM_THRESHOLD`), so the attribution and the report agree on which heads
   are uniform.
2. ``token_independent``: replacing every token of the input by one token moves no valid logit of this
   head by more than 1e-3 nats.  Softmax is 2-Lipschitz from logits to log-weights in the max norm, so every
   β_ij then changes by less than a factor e^{±0.002} (0.2 %): the head's attention is a function of the
   positions alone, and no κ can make it depend on the token.
3. ``kl_below_temperature``: the token does move the logits, but their within-row std ``s = kl_std/κ``
   (ALiBi included) is at most sqrt(ln 2) ≈ 0.83.  For logits spread as N(0, s²) the participation ratio of
   a row is ``n_eff = n · e^{-s²}`` (``E[e^{2z}] / E[e^z]² = e^{s²}``), so ``s ≤ sqrt(ln 2)`` means every
   row still spreads over at least half of its keys: the KL varies, but too little against κ.
4. ``other``: uniform although the within-row logit spread exceeds sqrt(ln 2) (e.g. a few outlying keys
   carry the spread, or the spread lies across rows rather than along them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gaugeformer.model.attention import transport_frames
from gaugeformer.model.common import maybe_norm
from gaugeformer.model.lm import GaugeTransformerLM, run_with_cache
from gaugeformer.ops import blocks
from gaugeformer.ops import kl_terms as klt
from gaugeformer.ops.masks import valid_keys
from gaugeformer.ops.positional import compose
from gaugeformer.stats import MEDIUM_THRESHOLD, model_valid_keys, row_std_legacy, row_std_valid

CAUSES = ("token_independent", "kl_below_temperature", "not_uniform", "other")
THRESHOLDS = {
    "uniform_row_std": MEDIUM_THRESHOLD,  # the report's UNIFORM label
    "token_logit_shift": 1e-3,  # nats; β changes by < 0.2 %
    "logit_std": math.sqrt(math.log(2.0)),  # n_eff >= n/2 for N(0, s²) logits
}
SCHEMA = "attribution/1"

# ----------------------------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------------------------


def _head_kl_terms(cfg, mu_in, sigma_full, phi) -> dict[str, jax.Array]:
    """Terms ``[B, H, N, M]`` of the attention KL for flat inputs (``mu [B,N,K]``, ``Σ [B,N,K,K]``)."""
    mus = blocks.split_mu(mu_in, cfg.layout)
    sig = sigma_full if sigma_full.ndim == 5 else blocks.split_sigma(sigma_full, cfg.layout)
    e, f, lad = transport_frames(cfg, phi, cfg.attention_transport)
    return klt.kl_terms(mus, sig, e, f, lad, cfg.kl_eps, cfg.eps_log)


def _kl_std(kl, mask) -> jax.Array:
    """Within-row std per head ``[H]`` of a ``[B, H, N, M]`` pair quantity (batch mean)."""
    return row_std_valid(kl, mask).mean(0)


def _masked_mean(x, mask) -> jax.Array:
    w = jnp.asarray(mask, x.dtype)
    return (jnp.where(mask, x, 0.0).sum((-2, -1)) / w.sum()).mean(0)


def _layer_inputs(cache: Mapping[str, jax.Array], layer: int):
    """``(μ after norm1, Σ [B,N,K,K], φ)`` entering layer ``layer``'s attention, from the hooks."""
    mu = cache[f"blocks.{layer}.attn.hook_mu_in"]
    if layer == 0:
        return mu, cache["embed.hook_sigma"], cache["hook_phi_composed"]
    return mu, cache[f"blocks.{layer - 1}.hook_sigma_out"], cache[f"blocks.{layer - 1}.hook_phi_out"]


def _embedding_sources(model: GaugeTransformerLM, tokens, mask) -> dict[str, jax.Array | None]:
    """KL std per head ``[H]`` at the layer-0 attention from each embedding piece alone."""
    cfg = model.cfg
    n = tokens.shape[-1]
    names = ("token_frames", "positional_frames", "positional_mu")
    if cfg.mu_normalize or cfg.mu_max_norm:
        return dict.fromkeys(names)
    mu, sigmas, phi_tok, _ = model.embed(tokens)
    pos_mu = model.embed.pos_embed[...][:n] if cfg.use_positional_embedding else jnp.zeros_like(mu[0])
    tok_mu = mu - pos_mu
    phi_pos = model.pos_phi[...][:n]  # [N, 3]
    if cfg.gauge_fixed_priors:  # the belief of a token whose frame is the identity: (μ₀, Σ₀)
        mean_mu = jnp.broadcast_to(model.embed.base_mu[...], tok_mu.shape)
        var0 = blocks.split_variances(jnp.exp(model.embed.base_log_sigma_diag[...]), cfg.layout)
        mean_sig = jnp.broadcast_to(blocks.diag_to_full(var0), sigmas.shape)
    else:  # per-token tables: the sequence-mean belief
        mean_mu = jnp.broadcast_to(tok_mu.mean(1, keepdims=True), tok_mu.shape)
        mean_sig = jnp.broadcast_to(sigmas.mean(1, keepdims=True), sigmas.shape)
    pos_mode = cfg.pos_composition if cfg.pos_encoding_mode != "none" else "none"
    norm1 = model.blocks[0].norm1
    pieces = {
        "token_frames": (tok_mu, sigmas, phi_tok),
        "positional_frames": (mean_mu, mean_sig, compose(jnp.zeros_like(phi_tok), phi_pos, pos_mode,
                                                         cfg.so3_log)),
        "positional_mu": (mean_mu + pos_mu, mean_sig, jnp.zeros_like(phi_tok)),
    }
    out = {}
    for name, (m, s, p) in pieces.items():
        kl = klt.kl_from_terms(_head_kl_terms(cfg, maybe_norm(norm1, m), s, p))
        out[name] = _kl_std(kl, mask)
    return out


def _without_earlier_ffn(model: GaugeTransformerLM, tokens, cache, mask) -> list[jax.Array | None]:
    """Per layer, the KL std ``[H]`` when every earlier block runs attention (and residual) only."""
    cfg = model.cfg
    out: list[jax.Array | None] = [None]
    if cfg.n_layers == 1:
        return out
    n = tokens.shape[-1]
    mu, sigmas = cache["embed.hook_mu"], blocks.split_sigma(cache["embed.hook_sigma"], cfg.layout)
    phi = cache["hook_phi_composed"]
    attn_mask = valid_keys(n, cfg.attention_pattern, cfg.attention_window, cfg.mask_self_attention)
    for layer, block in enumerate(model.blocks[:-1]):
        mu_a, sig_a, _ = block.attn(maybe_norm(block.norm1, mu), sigmas, phi, attn_mask)
        mu = mu + mu_a if cfg.use_residual else mu_a
        if cfg.evolve_sigma and sig_a is not None:
            sigmas = sig_a
        nxt = model.blocks[layer + 1]
        kl = klt.kl_from_terms(_head_kl_terms(cfg, maybe_norm(nxt.norm1, mu), sigmas, phi))
        out.append(_kl_std(kl, mask))
    return out


def classify(row_std: float, token_logit_shift: float, logit_std: float) -> str:
    """The cause of a head's (non-)uniformity from its three numbers (module docstring)."""
    if row_std > THRESHOLDS["uniform_row_std"]:
        return "not_uniform"
    if token_logit_shift <= THRESHOLDS["token_logit_shift"]:
        return "token_independent"
    if logit_std <= THRESHOLDS["logit_std"]:
        return "kl_below_temperature"
    return "other"


def _evidence_text(cause: str, row_std: float, shift: float, logit_std: float, kappa: float,
                   spread: Mapping[str, float]) -> str:
    pulled = (f"pulled-back μ spread {spread['mu_std']:.3g} (raw μ spread {spread['raw_mu_std']:.3g}), "
              f"Σ spread {spread['sigma_std']:.3g}")
    if cause == "not_uniform":
        return f"row_std {row_std:.4f} > {THRESHOLDS['uniform_row_std']}: attention is not uniform"
    if cause == "token_independent":
        return (f"row_std {row_std:.4f}; replacing every token by one token moves this head's logits by at "
                f"most {shift:.2e} nats (<= {THRESHOLDS['token_logit_shift']:g}): its KL does not depend on "
                f"the token, so no κ can sharpen it on token content; {pulled}")
    if cause == "kl_below_temperature":
        return (f"row_std {row_std:.4f}; the token moves the logits (up to {shift:.3g} nats) but their "
                f"within-row std {logit_std:.3g} = KL std / κ (κ = {kappa:g}) is <= sqrt(ln 2) = "
                f"{THRESHOLDS['logit_std']:.3f}: rows still spread over more than half their keys; "
                f"a lower κ would sharpen this head")
    return (f"row_std {row_std:.4f} although the within-row logit std is {logit_std:.3g} > "
            f"{THRESHOLDS['logit_std']:.3f} and the token moves the logits by up to {shift:.3g} nats")


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def _layer_numbers(cfg, cache, cache_same, layer: int, mask) -> dict[str, jax.Array]:
    """Every per-head ``[H]`` number of one layer (traced inside :func:`_measure`)."""
    layout = cfg.layout
    mu_in, sig_in, phi_in = _layer_inputs(cache, layer)
    terms = _head_kl_terms(cfg, mu_in, sig_in, phi_in)
    kl = cache[f"blocks.{layer}.attn.hook_kl"]
    scores = cache[f"blocks.{layer}.attn.hook_attn_scores"]
    scores_same = cache_same[f"blocks.{layer}.attn.hook_attn_scores"]
    out = {
        "residual": jnp.max(jnp.abs(klt.kl_from_terms(terms) - kl), axis=(0, 2, 3)),
        "shift": jnp.max(jnp.where(mask, jnp.abs(scores - scores_same), 0.0), axis=(0, 2, 3)),
        "logit_std": _kl_std(jnp.where(mask, scores, 0.0), mask),
        "row_std": _kl_std(cache[f"blocks.{layer}.attn.hook_pattern"], mask),
        "row_std_legacy": row_std_legacy(cache[f"blocks.{layer}.attn.hook_pattern"]).mean(0),
        "kl_std": _kl_std(kl, mask),
        "kl_mean": _masked_mean(kl, mask),
    }
    for t in klt.TERMS:
        out[f"{t}_mean"] = _masked_mean(terms[t], mask)
        out[f"{t}_row_std"] = _kl_std(terms[t], mask)
    _, f, _ = transport_frames(cfg, phi_in, cfg.attention_transport)
    mus = blocks.split_mu(mu_in, layout)
    sig = blocks.split_sigma(sig_in, layout)
    valid = blocks.padding(layout).valid
    for k, v in klt.belief_spread(*klt.pulled_back(mus, sig, f), valid).items():
        out[f"spread_{k}"] = v
    out["spread_raw_mu_std"] = klt.belief_spread(mus, sig, valid)["mu_std"]
    return out


@nnx.jit
def _measure(model: GaugeTransformerLM, tokens, same):
    """All numbers of :func:`attribute` in one compiled program (eager per-op dispatch is ~10x slower)."""
    cfg = model.cfg
    mask = model_valid_keys(cfg, tokens.shape[-1])
    _, cache = run_with_cache(model, tokens, train=False)
    _, cache_same = run_with_cache(model, same, train=False)
    layers = [_layer_numbers(cfg, cache, cache_same, layer, mask) for layer in range(cfg.n_layers)]
    return layers, _embedding_sources(model, tokens, mask), _without_earlier_ffn(model, tokens, cache, mask)


def attribute(model: GaugeTransformerLM, tokens, *, reference_token: int | None = None
              ) -> dict[str, Any]:
    """Per-layer, per-head uniformity attribution on ``tokens [B, N]`` (inference forward).

    Args:
      model: any :class:`GaugeTransformerLM` with full covariances (the default; diagonal covariances
        are rejected).  Float64 parameters under ``jax_enable_x64`` give float64 results.
      tokens: ``[B, N]`` int ids (e.g. validation windows).
      reference_token: the token that replaces every input token for the token-dependence test
        (default: each row's first token).

    Returns:
      ``{"schema", "kappa", "thresholds", "batch", "seq_len", "layers": [{"layer", "heads": [{"head",
      "label", "uniformity": {...}}]}]}`` (module docstring): plain Python floats, strings and lists.
    """
    cfg = model.cfg
    if cfg.diagonal_covariance:
        raise ValueError("attribute() needs full covariances; the model has diagonal_covariance=True")
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, N], got shape {tokens.shape}")
    same = (jnp.broadcast_to(tokens[:, :1], tokens.shape) if reference_token is None
            else jnp.full_like(tokens, int(reference_token)))
    layer_nums, emb_sources, no_ffn = jax.device_get(_measure(model, tokens, same))
    layers = []
    for layer, num in enumerate(layer_nums):
        heads = []
        for h, label in enumerate(cfg.head_labels):
            v = {k: float(x[h]) for k, x in num.items()}
            cause = classify(v["row_std"], v["shift"], v["logit_std"])
            sp = {k.removeprefix("spread_"): x for k, x in v.items() if k.startswith("spread_")}
            sources = {"all": v["kl_std"]}
            sources.update({k: None if x is None else float(x[h]) for k, x in emb_sources.items()})
            sources["without_earlier_ffn"] = None if no_ffn[layer] is None else float(no_ffn[layer][h])
            heads.append({"head": h, "label": label, "uniformity": {
                "cause": cause,
                "belief_spread": sp,
                "kl_mean": v["kl_mean"],
                "kl_std": v["kl_std"],
                "terms": {t: {"mean": v[f"{t}_mean"], "row_std": v[f"{t}_row_std"]} for t in klt.TERMS},
                "sources": sources,
                "evidence": {
                    "row_std": v["row_std"],
                    "row_std_legacy": v["row_std_legacy"],
                    "logit_std": v["logit_std"],
                    "token_logit_shift": v["shift"],
                    "terms_residual": v["residual"],
                    "text": _evidence_text(cause, v["row_std"], v["shift"], v["logit_std"], cfg.kappa_beta, sp),
                },
            }})
        layers.append({"layer": layer, "heads": heads})
    return {"schema": SCHEMA, "kappa": float(cfg.kappa_beta), "thresholds": dict(THRESHOLDS),
            "batch": int(tokens.shape[0]), "seq_len": int(tokens.shape[1]), "layers": layers}


# ----------------------------------------------------------------------------------------------
# Report text
# ----------------------------------------------------------------------------------------------

_SCENARIOS = {
    "token_independent": (
        "Token-independent heads",
        "These heads' KL does not depend on the token (replacing every token by one token leaves their "
        "logits unchanged): their beliefs carry position only, or vary only along the gauge orbit, which "
        "transport undoes. No temperature and no larger irrep can sharpen them on token content.",
        "Give these heads token content: per-token μ/Σ (gauge_fixed_priors=false), or rely on the FFN of "
        "earlier layers to write token information into them; more tensor heads do not address this."),
    "kl_below_temperature": (
        "KL spread below the temperature",
        "The KL depends on the token, but its within-row spread is small against κ (logit std <= "
        "sqrt(ln 2)), so every row still spreads over more than half of its keys.",
        "Lower κ for these heads (or scale κ with the KL's spread); check stability as κ drops."),
    "other": (
        "Uniform for another reason",
        "The logits vary along rows by more than sqrt(ln 2) and depend on the token, yet the rows stay "
        "uniform by the row_std measure (outlying keys, or spread concentrated in a few rows).",
        "Inspect these heads' KL matrices and per-row β directly."),
}


def scenarios(layer_entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The interpretation scenarios of one layer of :func:`attribute`, one per cause present among its
    uniform heads: ``[{"cause", "heads": [h], "labels": [...], "title", "explanation", "suggestion"}]``.

    These replace the guessed "beliefs are diverse but low-dimensional heads cannot sharpen" scenario:
    each states what the numbers show for the heads it names.
    """
    out = []
    for cause in ("token_independent", "kl_below_temperature", "other"):
        heads = [hd for hd in layer_entry["heads"] if hd["uniformity"]["cause"] == cause]
        if heads:
            title, explanation, suggestion = _SCENARIOS[cause]
            out.append({"cause": cause, "heads": [hd["head"] for hd in heads],
                        "labels": [hd["label"] for hd in heads], "title": title,
                        "explanation": explanation, "suggestion": suggestion})
    return out


def format_scenarios(attribution: Mapping[str, Any]) -> str:
    """Console/markdown text of every layer's scenarios (one paragraph per cause)."""
    lines = []
    for layer in attribution["layers"]:
        sc = scenarios(layer)
        n_uniform = sum(len(s["heads"]) for s in sc)
        lines.append(f"Layer {layer['layer']}: {n_uniform}/{len(layer['heads'])} heads uniform")
        for s in sc:
            heads = ", ".join(f"h{h} ({lab})" for h, lab in zip(s["heads"], s["labels"]))
            lines.append(f"  {s['title']}: {heads}")
            lines.append(f"    {s['explanation']}")
            lines.append(f"    → {s['suggestion']}")
    return "\n".join(lines)


def render_table(attribution: Mapping[str, Any]) -> str:
    """Markdown table: one row per layer and head with cause, row_std, KL, terms and sources."""
    rows = ["| layer | head | irrep | cause | row_std | KL mean | KL std | logit std | token shift | "
            "trace / mahal / logdet (row std) | sources: token / pos φ / pos μ / no-FFN |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]

    def g(x):
        return "—" if x is None else f"{x:.3g}"

    for layer in attribution["layers"]:
        for hd in layer["heads"]:
            u = hd["uniformity"]
            ev, t, s = u["evidence"], u["terms"], u["sources"]
            rows.append(
                f"| {layer['layer']} | {hd['head']} | {hd['label']} | {u['cause']} | {ev['row_std']:.4f} | "
                f"{u['kl_mean']:.3g} | {u['kl_std']:.3g} | {ev['logit_std']:.3g} | "
                f"{ev['token_logit_shift']:.2g} | {g(t['trace']['row_std'])} / "
                f"{g(t['mahalanobis']['row_std'])} / {g(t['logdet']['row_std'])} | "
                f"{g(s['token_frames'])} / {g(s['positional_frames'])} / {g(s['positional_mu'])} / "
                f"{g(s['without_earlier_ffn'])} |")
    return "\n".join(rows)


def cause_counts(attribution: Mapping[str, Any]) -> dict[str, int]:
    """How many heads (all layers) have each cause."""
    out = dict.fromkeys(CAUSES, 0)
    for layer in attribution["layers"]:
        for hd in layer["heads"]:
            out[hd["uniformity"]["cause"]] += 1
    return out


def by_irrep(attribution: Mapping[str, Any], key: str) -> dict[str, float]:
    """Mean of ``uniformity[key]`` (or ``uniformity.evidence[key]``) over the heads of each irrep label."""
    acc: dict[str, list[float]] = {}
    for layer in attribution["layers"]:
        for hd in layer["heads"]:
            u = hd["uniformity"]
            v = u[key] if key in u else u["evidence"][key]
            acc.setdefault(hd["label"], []).append(float(v))
    return {k: float(np.mean(v)) for k, v in sorted(acc.items(), key=lambda kv: _ell_key(kv[0]))}


def _ell_key(label: str) -> tuple[int, str]:
    digits = "".join(ch for ch in label[1:] if ch.isdigit())
    return (int(digits) if digits else 0, label)


__all__: Sequence[str] = ("CAUSES", "THRESHOLDS", "attribute", "by_irrep", "cause_counts", "classify",
                          "format_scenarios", "render_table", "scenarios")
