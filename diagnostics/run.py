"""The attention validation report end to end: checkpoint -> inputs -> every layer -> report files.

:func:`run_report` is what ``scripts/validate_attention.py`` calls. It

1. loads a model (:func:`gaugeformer.load`: reference ``.pt``, converted or training checkpoint
   directory; or :func:`gaugeformer.loading.random_model` from ``--config``);
2. builds the input batch ``[B, N]`` (text, validation windows of a dataset, random ids, or
   explicit ids) and its next-token targets ``tokens[:, 1:]``;
3. runs one jitted inference forward that records β, KL and the beliefs entering every layer's
   attention (μ, φ, diag Σ) and the logits;
4. computes every metric on every analysed layer in one compiled call
   (:func:`diagnostics.metrics.all_metrics`);
5. measures **gradient flow** (:func:`gradient_flow`): one ``jax.grad`` of the free-energy
   training loss gives the L2 norm per parameter group; a second one with every layer's attention
   β passed back in as a constant (``beta_override`` = the same values, no gradient) shows which
   groups receive gradient *through* attention. The attention itself has no parameters
   (β = softmax(−KL/κ) of the beliefs); the report says so;
6. runs the **ablation** (:func:`ablation_study`): next-token cross-entropy of the learned model
   against the same model with every layer's β replaced by uniform-causal, the reference's
   non-causal uniform (1/N on all keys) and local (keys i−4…i) attention, through
   ``beta_override``; ``override_ffn_beta`` also replaces the VFE FFN's own β;
7. sweeps κ (:func:`attention_kappa_sweep`: the captured KL re-softmaxed at each temperature,
   traced κ, one compile; or ``kappa_mode="model"``: the whole model re-run per κ);
8. assembles the 9-part report per layer (:func:`diagnostics.validate.validate`), renders it in
   seed 000's console format, and writes JSON (schema v1 of :mod:`diagnostics.report`, with the
   gradient-flow, ablation and κ-sweep details under ``meta``), markdown and figures.

Every jitted function lives at module level, so a second model with the same config and input
shape reuses the compiled code.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gaugeformer import checkpoint as ckpt
from gaugeformer.capture import capture_jit
from gaugeformer.data.vocab import ModelTokenizer
from gaugeformer.loading import load, random_model
from gaugeformer.loss import cross_entropy, free_energy_loss
from gaugeformer.model.lm import GaugeTransformerLM
from gaugeformer.model.sow import flatten
from gaugeformer.ops.attention import attention_logits, attention_weights
from gaugeformer.stats import model_valid_keys
from gaugeformer.train.loop import enable_compilation_cache

from diagnostics import capture as C
from diagnostics import report as report_io
from diagnostics import validate as V
from diagnostics.metrics import METRIC_KEYS, all_metrics

__all__ = [
    "ABLATION_VARIANTS",
    "Ablation",
    "Beliefs",
    "GradientFlow",
    "GroupFlow",
    "ReportInputs",
    "RunResult",
    "ablation_betas",
    "ablation_study",
    "attention_kappa_sweep",
    "build_inputs",
    "build_parser",
    "capture_beliefs",
    "gradient_flow",
    "main",
    "model_kappa_sweep",
    "model_mask",
    "param_group",
    "render_report",
    "run_report",
]

DEFAULT_TEXT = (
    "The river rose after three days of rain, and the village moved its boats to higher ground. "
    "Old maps of the valley show the same river in a different bed, and the villagers say that "
    "the river still remembers where it used to run."
)
LOCAL_WINDOW = 5  # keys i-4 .. i (the reference's "window=5", self included)
ABLATION_VARIANTS = ("causal_uniform", "uniform", "local")
VIA_ATTENTION_RTOL = 1e-5  # |g_live - g_detached| above this share of |g| = "through attention"
GPT2_EOT = 50256


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReportInputs:
    """The analysed batch.

    Attributes:
        tokens: ``[B, N]`` int32 model ids; targets are ``tokens[:, 1:]``.
        sources: one description per row.
        preview: the first characters of row 0 (decoded) or its ids.
        tokenizer: tokenizer description (or ``"none"``).
        special_ids: ids counted as special tokens in part 3.
    """

    tokens: np.ndarray
    sources: tuple[str, ...]
    preview: str
    tokenizer: str
    special_ids: tuple[int, ...]


def _special_ids(tok: ModelTokenizer | None) -> tuple[int, ...]:
    """GPT-2's end-of-text id (mapped into a restricted vocabulary when kept); none for bytes."""
    if tok is None or tok.name != "gpt2":
        return ()
    if tok.vocab_map is None:
        return (GPT2_EOT,) if tok.vocab_size > GPT2_EOT else ()
    kept = np.asarray(tok.vocab_map.kept_ids)
    pos = int(np.searchsorted(kept, GPT2_EOT))
    return (pos,) if pos < kept.size and kept[pos] == GPT2_EOT else ()


def _read_ids(spec: str) -> np.ndarray:
    """``--ids``: a ``.npy`` / ``.npz`` (key ``tokens``) file, a text file of ints, or ``1,2,3``."""
    path = Path(spec)
    if path.suffix == ".npy" and path.is_file():
        return np.load(path)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path) as data:
            if "tokens" not in data.files:
                raise ValueError(f"{path}: no 'tokens' array (has {data.files})")
            return data["tokens"]
    text = path.read_text() if path.is_file() else spec
    rows = [r for r in text.replace(";", "\n").splitlines() if r.strip()]
    return np.asarray([[int(x) for x in r.replace(",", " ").split()] for r in rows])


def build_inputs(
    cfg: Any,
    *,
    tokens: np.ndarray | str | None = None,
    text: str | None = None,
    dataset: str | None = None,
    data_files: Mapping[str, Any] | Sequence[str] | None = None,
    random: bool = False,
    seq_len: int | None = None,
    batch: int | None = None,
    seed: int = 0,
    tokenizer: str = "auto",
    special_ids: Sequence[int] | None = None,
    saved_tokenizer: ModelTokenizer | None = None,
) -> ReportInputs:
    """The input batch for the report, first match wins: ``tokens``, ``random``, ``dataset``,
    ``text``, else a built-in text (random ids when no tokenizer fits the vocabulary).

    Args:
        cfg: the model config (vocabulary, ``max_seq_len``).
        tokens: explicit ids ``[N]`` / ``[B, N]`` or an ``--ids`` spec (file or ``1,2,3``).
        text: input text; longer than ``seq_len`` tokens gives up to ``batch`` windows.
        dataset: ``wikitext-2`` / ``wikitext-103`` / ``embedded`` validation windows.
        data_files: local WikiText-format files (``{split: [paths]}`` or ``["split=path"]``).
        random: random ids in ``[0, V)``.
        seq_len: tokens per sequence (default and cap: ``cfg.max_seq_len``).
        batch: sequences ``B`` (default 1; explicit 2-D ids keep all rows).
        seed: seed of random ids.
        tokenizer: ``auto`` / ``gpt2`` / ``bytes``.
        special_ids: override the special-token ids (default: GPT-2's end-of-text when GPT-2).
        saved_tokenizer: the checkpoint's tokenizer (used unless ``tokenizer`` names another).
    """
    seq_len = min(int(seq_len or cfg.max_seq_len), cfg.max_seq_len)
    count = max(1, int(batch or 1))
    if isinstance(data_files, (list, tuple)):
        data_files = C.parse_data_files(data_files)
    tok: ModelTokenizer | None = None
    if tokens is not None:
        arr = _read_ids(tokens) if isinstance(tokens, str) else np.asarray(tokens)
        arr = np.atleast_2d(arr).astype(np.int64)
        if arr.ndim != 2:
            raise ValueError(f"token ids must be [N] or [B, N], got shape {arr.shape}")
        arr = arr[: int(batch)] if batch else arr
        arr = arr[:, :seq_len]
        try:
            tok = C.pick_tokenizer(cfg.vocab_size, tokenizer, saved_tokenizer)
        except ValueError:
            tok = None
        seqs = [C.sequence_from_ids(r, tok, f"given ids, row {k}") for k, r in enumerate(arr)]
    elif random:
        seqs = C.random_sequences(cfg.vocab_size, seq_len=seq_len, count=count, seed=seed,
                                  high=cfg.vocab_size)
    elif dataset is not None:
        tok = C.pick_tokenizer(cfg.vocab_size, tokenizer, saved_tokenizer, vocab_dataset=dataset,
                               data_files=data_files)
        seqs = C.validation_sequences(dataset, tok, seq_len=seq_len, count=count,
                                      data_files=data_files)
    else:
        source = "user-provided text" if text else "built-in example text"
        try:
            tok = C.pick_tokenizer(cfg.vocab_size, tokenizer, saved_tokenizer)
        except ValueError:
            if text:
                raise
            tok = None
        if tok is None:
            seqs = C.random_sequences(cfg.vocab_size, seq_len=seq_len, count=count, seed=seed,
                                      high=cfg.vocab_size)
        else:
            body = text or DEFAULT_TEXT
            n_tok = tok.encode(body).size
            if count > 1 and n_tok >= 2 * seq_len:
                seqs = C.text_windows(body, tok, seq_len=seq_len, count=count, source=source)
            else:
                seqs = [C.text_sequence(body, tok, max_len=seq_len, source=source)]
    if not seqs:
        raise ValueError("no input sequences")
    ids = np.stack([s.ids for s in seqs]).astype(np.int32)
    if ids.shape[1] < 2:
        raise ValueError("the report needs at least 2 tokens per sequence (next-token targets)")
    if ids.min() < 0 or ids.max() >= cfg.vocab_size:
        raise ValueError(f"token ids outside the model vocabulary [0, {cfg.vocab_size})")
    specials = _special_ids(tok) if special_ids is None else tuple(int(s) for s in special_ids)
    return ReportInputs(ids, tuple(s.source for s in seqs), seqs[0].preview(),
                        "none (ids only)" if tok is None else tok.describe(), specials)


# ------------------------------------------------------------------------------------------------
# Capture
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Beliefs:
    """One inference forward: attention of every layer and the beliefs entering it (host arrays).

    Attributes:
        beta, kl: ``[L, B, H, N, N]``.
        mu: ``[L, B, N, K]`` means entering each layer's attention (after its input norm).
        phi: ``[L, B, N, 3]`` frames entering each layer.
        sigma_diag: ``[L, B, N, K]`` covariance diagonals entering each layer (None when the
            model keeps diagonal covariances, which are not recorded).
        logits: ``[B, N, V]``.
    """

    beta: np.ndarray
    kl: np.ndarray
    mu: np.ndarray
    phi: np.ndarray
    sigma_diag: np.ndarray | None
    logits: np.ndarray


def capture_beliefs(model: Any, tokens: np.ndarray) -> Beliefs:
    """Inference forward (``train=False``) recording attention and beliefs of every layer."""
    ids = jnp.asarray(np.atleast_2d(tokens), jnp.int32)
    got = jax.device_get(capture_jit(model, ids, beliefs=True))
    sigma = None if got.sigma_in is None else np.diagonal(got.sigma_in, axis1=-2, axis2=-1)
    return Beliefs(*(np.asarray(x, np.float32) for x in (got.beta, got.kl, got.mu_in, got.phi_in)),
                   None if sigma is None else np.asarray(sigma, np.float32),
                   np.asarray(got.logits, np.float32))


def _strong_types(model: Any) -> None:
    """Drop weak types from the model's arrays (a freshly initialised scalar parameter such as the
    FFN step size is weakly typed, a loaded one is not), so trained, converted and random models
    of one config share every compiled function."""
    nnx.update(model, ckpt.strong_types(nnx.state(model)))


def model_mask(cfg: Any, n: int) -> np.ndarray:
    """The model's key-validity mask ``[N, N]``: its causal pattern, the diagonal cleared (except
    in rows with no other key) when ``mask_self_attention``."""
    return model_valid_keys(cfg, n)


# ------------------------------------------------------------------------------------------------
# Gradient flow
# ------------------------------------------------------------------------------------------------


def param_group(path: Sequence[Any]) -> str:
    """Report group of a parameter path (finer than the optimiser's groups).

    ``embed.mu`` (μ table, or the gauge-fixed base μ), ``embed.sigma`` (log σ), ``embed.phi``
    (φ table), ``positional.mu`` (learned positional μ), ``positional.phi`` (learned positional
    frames), ``blocks.{l}.ffn.step_size`` (VFE step size), ``blocks.{l}.ffn.mlp``,
    ``blocks.{l}.norm``, ``final_norm``, ``output``; anything else by its dotted path.
    """
    names = [str(p) for p in path]
    leaf = names[-1]
    if names[0] == "embed":
        return {"mu_embed": "embed.mu", "base_mu": "embed.mu", "log_sigma_diag": "embed.sigma",
                "base_log_sigma_diag": "embed.sigma", "phi_embed": "embed.phi",
                "pos_embed": "positional.mu"}.get(leaf, ".".join(names))
    if names == ["pos_phi"]:
        return "positional.phi"
    if names == ["out_proj"]:
        return "output"
    if names[0] == "final_norm":
        return "final_norm"
    if names[0] == "blocks" and len(names) >= 3:
        head = f"blocks.{names[1]}"
        if names[2] in ("norm1", "norm2"):
            return f"{head}.norm"
        if names[2] == "ffn":
            return f"{head}.ffn.step_size" if leaf == "lr" else f"{head}.ffn.mlp"
        if names[2] == "attn":
            return f"{head}.attention"
    return ".".join(names)


_RANK = ("embed.mu", "embed.sigma", "embed.phi", "positional.mu", "positional.phi")


def _group_rank(name: str) -> tuple:
    """Model order: embeddings, positional, blocks by index, final norm, output, the rest."""
    if name in _RANK:
        return (0, _RANK.index(name), "")
    if name.startswith("blocks."):
        idx = name.split(".")[1]
        return (1, int(idx) if idx.isdigit() else 0, name)
    return (2, {"final_norm": 0, "output": 1}.get(name, 2), name)


@dataclasses.dataclass(frozen=True)
class GroupFlow:
    """Gradient of one parameter group.

    Attributes:
        name: group name (:func:`param_group`).
        params: number of scalars.
        norm: ``‖∂L/∂θ‖`` of the training loss.
        norm_detached: the same with every layer's attention β held constant.
        via_attention: ``‖∂L/∂θ − ∂L/∂θ|β const‖``, the part that flows through β.
    """

    name: str
    params: int
    norm: float
    norm_detached: float
    via_attention: float

    @property
    def through_attention(self) -> bool:
        return self.via_attention > VIA_ATTENTION_RTOL * max(self.norm, self.norm_detached, 1e-30)


@dataclasses.dataclass(frozen=True)
class GradientFlow:
    """:func:`gradient_flow` result.

    Attributes:
        loss: free-energy training loss (next-token targets).
        loss_detached: the same loss with β passed back as a constant (equal forward values).
        groups: per parameter group, in model order.
        dbeta: per layer ``‖∂L/∂β_l‖`` (loss sensitivity to that layer's attention weights).
        attention_params: number of learnable attention parameters (0 for this model).
    """

    loss: float
    loss_detached: float
    groups: tuple[GroupFlow, ...]
    dbeta: tuple[float, ...]
    attention_params: int

    def norms(self) -> dict[str, float]:
        return {g.name: g.norm for g in self.groups}

    def counts(self) -> dict[str, int]:
        return {g.name: g.params for g in self.groups}


def _gradients(model, tokens, targets):
    """Live and β-detached gradients of the free-energy loss (one compile)."""
    n_layers = model.cfg.n_layers

    def live(m):
        (loss, _), state = nnx.capture(
            lambda mm: free_energy_loss(mm, tokens, targets), nnx.Intermediate)(m)
        cache = flatten(nnx.to_pure_dict(state))
        betas = tuple(cache[f"blocks.{i}.attn.hook_pattern"] for i in range(n_layers))
        return loss, betas

    (loss, betas), g_live = nnx.value_and_grad(live, has_aux=True)(model)
    betas = tuple(jax.lax.stop_gradient(b) for b in betas)

    def detached(m, ov):
        return free_energy_loss(m, tokens, targets, beta_override=ov)[0]

    loss_det, (g_det, g_beta) = nnx.value_and_grad(detached, argnums=(0, 1))(model, betas)
    dbeta = jnp.stack([jnp.sqrt(jnp.sum(jnp.square(g))) for g in g_beta])
    return loss, loss_det, g_live, g_det, dbeta


_gradients_jit = nnx.jit(_gradients)


def _flat_params(state) -> list[tuple[tuple, np.ndarray]]:
    out = []
    for path, var in nnx.to_flat_state(state):
        value = var.get_value() if hasattr(var, "get_value") else var
        out.append((tuple(path), np.asarray(value, np.float64)))
    return out


def next_token_targets(tokens: np.ndarray) -> np.ndarray:
    """``[B, N]`` targets of the training loss: ``tokens[:, 1:]``, the last position ignored."""
    t = np.asarray(tokens, np.int32)
    return np.concatenate([t[:, 1:], np.full((t.shape[0], 1), -100, np.int32)], axis=1)


def gradient_flow(model: Any, tokens: np.ndarray) -> GradientFlow:
    """Per-group gradient norms of the free-energy training loss, and what flows through β.

    The loss is :func:`gaugeformer.loss.free_energy_loss` in training mode (the reference's grad
    mode: the FFN's φ step runs) on next-token targets. The second gradient passes the β that
    the same forward computed back in as ``beta_override`` for every layer, so the forward values
    are unchanged but no gradient flows through the attention weights; the difference per group is
    the gradient that reaches it through attention. The VFE FFN's own β is left live.
    """
    ids = jnp.asarray(np.atleast_2d(tokens), jnp.int32)
    loss, loss_det, g_live, g_det, dbeta = _gradients_jit(
        model, ids, jnp.asarray(next_token_targets(ids)))
    live, det = _flat_params(g_live), _flat_params(g_det)
    order: list[str] = []
    acc: dict[str, list[float]] = {}
    for (path, a), (path_d, b) in zip(live, det, strict=True):
        assert path == path_d
        name = param_group(path)
        if name not in acc:
            order.append(name)
            acc[name] = [0, 0.0, 0.0, 0.0]
        acc[name][0] += a.size
        acc[name][1] += float(np.sum(a * a))
        acc[name][2] += float(np.sum(b * b))
        acc[name][3] += float(np.sum((a - b) ** 2))
    order.sort(key=_group_rank)
    groups = tuple(GroupFlow(n, int(acc[n][0]), math.sqrt(acc[n][1]), math.sqrt(acc[n][2]),
                             math.sqrt(acc[n][3])) for n in order)
    attn_params = sum(int(np.size(v)) for blk in model.blocks
                      for _, v in nnx.to_flat_state(nnx.state(blk.attn, nnx.Param)))
    return GradientFlow(float(loss), float(loss_det), groups,
                        tuple(float(x) for x in np.asarray(dbeta)), attn_params)


# ------------------------------------------------------------------------------------------------
# Ablation
# ------------------------------------------------------------------------------------------------


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

    ``causal_uniform``: uniform over the keys the model may attend (:func:`model_mask`);
    ``uniform``: 1/N on every key, future ones included (the reference's override);
    ``local``: uniform over keys ``max(0, i−4) … i``.
    """
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    mask = model_mask(cfg, n).astype(np.float64)
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


# ------------------------------------------------------------------------------------------------
# κ sweep
# ------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("alibi", "floor"))
def _resoftmax(kl, kappa, mask, *, alibi, floor):
    return attention_weights(attention_logits(kl, kappa, mask, alibi), floor)


def attention_kappa_sweep(cfg: Any, kl: np.ndarray, kappas: Sequence[float], *,
                          beta: np.ndarray | None = None) -> tuple[V.KappaSweep, float | None]:
    """Per-head row_std against κ with the beliefs held fixed: each layer's captured KL
    ``[L, B, H, N, N]`` is re-softmaxed at temperature κ with the model's mask, self-masking,
    ALiBi and floor (κ is traced: one compile for every κ).

    Returns:
        ``(sweep, err)``: ``err`` is the max deviation of the re-softmaxed β at the model's own κ
        from the captured ``beta`` (a consistency check, 0 up to rounding; None without ``beta``).
    """
    n = kl.shape[-1]
    kw = {"alibi": float(cfg.alibi_slope) if cfg.alibi_slope else None,
          "floor": cfg.attention_floor}
    kl_dev, mk = jnp.asarray(kl), model_mask(cfg, n)

    def beta_fn(kappa: float):
        return _resoftmax(kl_dev, jnp.float32(kappa), mk, **kw)

    sweep = V.kappa_sweep(beta_fn, kappas, mask=model_mask(cfg, n), labels=cfg.head_labels)
    err = None
    if beta is not None:
        err = float(np.max(np.abs(np.asarray(beta_fn(cfg.kappa_beta)) - np.asarray(beta))))
    return sweep, err


def model_kappa_sweep(model: Any, tokens: np.ndarray, kappas: Sequence[float]) -> V.KappaSweep:
    """Per-head row_std against κ with the whole model re-run at each κ (attention and VFE FFN
    temperature). κ is a config constant, so every κ compiles the forward once (cached)."""
    cfg = model.cfg
    state = nnx.state(model)

    def beta_fn(kappa: float):
        if math.isclose(kappa, cfg.kappa_beta):
            return C.capture_attention(model, tokens).beta
        m2 = GaugeTransformerLM(cfg.replace(kappa_beta=float(kappa)), rngs=nnx.Rngs(0))
        nnx.update(m2, state)
        return C.capture_attention(m2, tokens).beta

    n = np.atleast_2d(tokens).shape[-1]
    return V.kappa_sweep(beta_fn, kappas, mask=model_mask(cfg, n), labels=cfg.head_labels)


# ------------------------------------------------------------------------------------------------
# Report assembly
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunResult:
    """What :func:`run_report` returns.

    Attributes:
        report: the :class:`~diagnostics.validate.ValidationReport` (JSON meta included).
        console: the printed text.
        inputs: the batch.
        beliefs: the captured forward.
        metrics: host metrics of the analysed layers (``all_metrics`` keys).
        layers: the analysed layer indices.
        gradflow / ablation / sweep: the optional analyses (None when skipped).
        kappa_check: max |β(κ_model) − β| of the attention-mode sweep (None otherwise).
        files: written files (JSON, markdown, figures).
        cfg / description: model config and checkpoint description.
    """

    report: V.ValidationReport
    console: str
    inputs: ReportInputs
    beliefs: Beliefs
    metrics: dict[str, np.ndarray]
    layers: tuple[int, ...]
    gradflow: GradientFlow | None
    ablation: Ablation | None
    sweep: V.KappaSweep | None
    kappa_check: float | None
    files: list[Path]
    cfg: Any
    description: str


def _parse_layers(spec: str | Sequence[int] | None, n_layers: int) -> tuple[int, ...]:
    if spec is None or spec == "all":
        return tuple(range(n_layers))
    if spec == "last":
        return (n_layers - 1,)
    items = [int(x) for x in spec.split(",")] if isinstance(spec, str) else [int(x) for x in spec]
    bad = [x for x in items if not -n_layers <= x < n_layers]
    if bad or not items:
        raise ValueError(f"--layers {spec!r}: the model has {n_layers} layers (all, last, or "
                         f"indices 0..{n_layers - 1})")
    return tuple(dict.fromkeys(x % n_layers for x in items))


def _per_layer_key(key: str, value: Any, n_layers: int) -> bool:
    """Whether an ``all_metrics`` entry has a leading layer axis (per :data:`METRIC_KEYS`)."""
    if key in METRIC_KEYS:
        return METRIC_KEYS[key][0].startswith("L ")
    return np.ndim(value) >= 1 and np.shape(value)[0] == n_layers


def _grad_lines(gf: GradientFlow, layer: int) -> tuple[str, ...]:
    lines = [
        f"  Attention parameters: {gf.attention_params or 'none'} (β = softmax(−KL/κ) of the "
        "beliefs; gradient reaches other parameters *through* β).",
        "  Free-energy loss, next-token targets; 'via β' = |∇ (β live) − ∇ (every layer's β held "
        "constant)|:",
        f"    {'group':<24s} {'|∇| β const':>11s} {'|∇ via β|':>10s}  through attention",
    ]
    for g in gf.groups:
        lines.append(f"    {g.name:<24s} {g.norm_detached:11.3e} {g.via_attention:10.3e}  "
                     f"{'yes' if g.through_attention else 'no'}")
    via = [g.name for g in gf.groups if g.through_attention]
    lines.append(f"  Groups receiving gradient through attention: {', '.join(via) or 'none'}")
    if layer < len(gf.dbeta):
        lines.append(f"  ‖∂L/∂β‖ of layer {layer}: {gf.dbeta[layer]:.3e} (loss sensitivity to "
                     "this layer's attention weights)")
    lines.append(f"  Loss {gf.loss:.4f} with β live, {gf.loss_detached:.4f} with β constant "
                 "(same forward values)")
    return tuple(lines)


def _ablation_lines(ab: Ablation, n_layers: int) -> tuple[str, ...]:
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


def _augment(report: V.ValidationReport, layers: Sequence[int], gf: GradientFlow | None,
             ab: Ablation | None, n_layers: int) -> V.ValidationReport:
    """Real layer numbers, gradient-flow and ablation notes, totals with real layer numbers."""
    new_layers = []
    for lay, li in zip(report.layers, layers, strict=True):
        parts = list(lay.parts)
        if gf is not None:
            parts[7] = dataclasses.replace(parts[7], notes=parts[7].notes + _grad_lines(gf, li))
        if ab is not None:
            parts[8] = dataclasses.replace(parts[8], notes=parts[8].notes
                                           + _ablation_lines(ab, n_layers))
        new_layers.append(dataclasses.replace(lay, layer=li, parts=tuple(parts)))
    totals = {}
    for md in report.summaries:
        sums = [(lay.layer, lay.summaries[md]) for lay in new_layers]
        crit = [f"layer {li}: {i}" for li, s in sums for i in s.issues[: s.critical_failures]]
        warn = [f"layer {li}: {i}" for li, s in sums for i in s.issues[s.critical_failures:]]
        totals[md] = V.Summary(sum(s.total_tests for _, s in sums), sum(s.passed for _, s in sums),
                               len(crit), len(warn), tuple(crit + warn))
    return dataclasses.replace(report, layers=tuple(new_layers), summaries=totals,
                               conclusions={md: V.conclude(s) for md, s in totals.items()})


def render_report(report: V.ValidationReport, n_layers: int) -> str:
    """Seed 000's console format for every analysed layer, then the totals."""
    modes = V.MODES[report.metrics_mode]
    blocks = [V.render_layer(lay, report.metrics_mode, n_layers) for lay in report.layers]
    tail: list[str] = []
    for md in modes:
        title = (f"OVERALL ({len(report.layers)} of {n_layers} layers"
                 + ("" if len(modes) == 1 else f", {md} metrics") + ")")
        tail += V._render_summary(report.summaries[md], report.conclusions[md], title) + [""]
    return "\n\n".join(blocks) + "\n\n" + "\n".join(tail + [V.RULE])


def _header(desc: str, cfg: Any, inputs: ReportInputs, layers: Sequence[int], mode: str) -> str:
    b, n = inputs.tokens.shape
    src = inputs.sources[0] + (f" (+{b - 1} more)" if b > 1 else "")
    return "\n".join([
        V.RULE,
        "ATTENTION VALIDATION",
        V.RULE,
        f"Checkpoint: {desc}",
        f"Model:      {cfg.n_layers} layer(s), {cfg.n_heads} heads "
        f"({', '.join(dict.fromkeys(cfg.head_labels))}), K={cfg.embed_dim}, "
        f"κ={cfg.kappa_beta:.4g}, FFN={cfg.ffn}, self-attention masked: "
        f"{'yes' if cfg.mask_self_attention else 'no'}",
        f"Input:      {src}",
        f"            “{inputs.preview}…”  [{b}×{n} tokens; tokenizer: {inputs.tokenizer}]",
        f"Layers:     {', '.join(map(str, layers))} of {cfg.n_layers}; metrics: {mode}; beliefs "
        "for part 7: those entering each layer's attention",
    ])


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _json_meta(base: dict, gf: GradientFlow | None, ab: Ablation | None,
               sweep: V.KappaSweep | None, kappa_mode: str, kappa_check: float | None,
               layers: Sequence[int]) -> dict:
    meta = dict(base)
    if gf is not None:
        meta["gradient_flow"] = {
            "loss": _finite(gf.loss), "loss_detached": _finite(gf.loss_detached),
            "attention_params": gf.attention_params,
            "dL_dbeta": [_finite(x) for x in gf.dbeta],
            "groups": [{"name": g.name, "params": g.params, "norm": _finite(g.norm),
                        "norm_detached": _finite(g.norm_detached),
                        "via_attention": _finite(g.via_attention),
                        "through_attention": g.through_attention} for g in gf.groups],
        }
    if ab is not None:
        meta["ablation"] = {
            "targets": "next-token", "predictions": ab.predictions,
            "losses": {k: _finite(v) for k, v in ab.losses.items()},
            "ppl": {k: _finite(v) for k, v in ab.ppl.items()},
            "override_layers": "all", "override_ffn_beta": ab.override_ffn_beta,
            "ffn": ab.ffn, "local_window": LOCAL_WINDOW,
            "passthrough_error": _finite(ab.passthrough_error),
        }
    if sweep is not None:
        meta["kappa_sweep"] = {
            "mode": kappa_mode, "kappas": list(sweep.kappas), "layers": list(layers),
            "check_max_abs_error": _finite(kappa_check),
            "row_std": {md: [[[_finite(float(x)) for x in v[li]] for li in layers]
                             for v in arr] for md, arr in sweep.row_std.items()},
        }
    return meta


def _markdown_extra(gf: GradientFlow | None, ab: Ablation | None, sweep: V.KappaSweep | None,
                    kappa_mode: str, layers: Sequence[int], n_layers: int) -> str:
    out: list[str] = []
    if gf is not None:
        out += ["", "## Gradient flow", "",
                f"The attention has no learnable parameters ({gf.attention_params}). Loss "
                f"{gf.loss:.4f}; \"via β\" is the gradient that disappears when every layer's β is "
                "held constant.", "",
                "| Group | Params | ‖∇‖ | ‖∇‖, β constant | ‖∇ via β‖ | Through attention |",
                "|---|---|---|---|---|---|"]
        out += [f"| {g.name} | {g.params} | {g.norm:.3e} | {g.norm_detached:.3e} | "
                f"{g.via_attention:.3e} | {'yes' if g.through_attention else 'no'} |"
                for g in gf.groups]
        out += ["", "| Layer | ‖∂L/∂β‖ |", "|---|---|"]
        out += [f"| {li} | {gf.dbeta[li]:.3e} |" for li in range(len(gf.dbeta))]
    if ab is not None:
        ppl = ab.ppl
        base = ab.losses["learned"]
        out += ["", "## Ablation (next-token targets)", "",
                f"All {n_layers} layer(s) overridden at once; FFN β overridden: "
                f"{ab.ffn_override_text}.", "",
                "| Attention | CE | PPL | PPL change vs learned |", "|---|---|---|---|"]
        for k, v in ab.losses.items():
            pct = 100.0 * math.expm1(v - base) if v - base < 700 else math.inf
            out.append(f"| {k} | {v:.4f} | {ppl[k]:.2f} | {pct:+.1f}% |")
    if sweep is not None:
        out += ["", f"## κ sweep ({kappa_mode} mode)", ""]
        for li in layers:
            for md in sweep.row_std:
                out += ["```", V.render_kappa_sweep(sweep, md, li), "```"]
    return "\n".join(out) + ("\n" if out else "")


def run_report(
    checkpoint: str | Path | None = None,
    *,
    config: str | Path | None = None,
    model: Any = None,
    seq_len: int | None = 128,
    text: str | None = None,
    dataset: str | None = None,
    data_files: Mapping[str, Any] | Sequence[str] | None = None,
    random: bool = False,
    tokens: np.ndarray | str | None = None,
    batch: int | None = None,
    seed: int = 0,
    tokenizer: str = "auto",
    special_ids: Sequence[int] | None = None,
    layers: str | Sequence[int] = "all",
    metrics: str = "both",
    gradflow: bool = True,
    ablation: bool = True,
    ablate_ffn_beta: bool = False,
    kappas: Sequence[float] | None = None,
    kappa_mode: str = "attention",
    json_path: str | Path | None = None,
    markdown_path: str | Path | None = None,
    plot_dir: str | Path | None = None,
    dpi: int = 120,
    echo: Callable[[str], Any] | None = print,
) -> RunResult:
    """Run the whole validation report (see the module docstring).

    Args:
        checkpoint: reference ``.pt``, converted/native checkpoint directory, or None for random
            weights (``config`` then defines the model).
        config: model config file (YAML/JSON; :func:`gaugeformer.convert.recover.config_from_dict`).
        model: an already-built model (overrides ``checkpoint``/``config``).
        seq_len, text, dataset, data_files, random, tokens, batch, seed, tokenizer, special_ids:
            the input batch (:func:`build_inputs`).
        layers: ``"all"``, ``"last"`` or layer indices.
        metrics: ``"legacy"``, ``"valid"`` or ``"both"`` (legacy decides, valid shown beside).
        gradflow: run the gradient-flow part (two gradients in one compile).
        ablation: run the ablation part.
        ablate_ffn_beta: the ablation also replaces the VFE FFN's own β.
        kappas: κ values of the sweep (default: 0.3, 0.5, 1, 2, 5 and the model's κ; empty: no
            sweep).
        kappa_mode: ``"attention"`` (captured KL re-softmaxed, beliefs fixed) or ``"model"``
            (the whole model re-run per κ; one compile per κ).
        json_path, markdown_path: report files.
        plot_dir: κ-sweep and per-irrep figures (None: no figures).
        dpi: figure resolution.
        echo: prints the console report (None: silent).
    """
    if metrics not in V.MODES:
        raise ValueError(f"metrics must be one of {tuple(V.MODES)}, got {metrics!r}")
    if kappa_mode not in ("attention", "model"):
        raise ValueError(f"kappa_mode must be 'attention' or 'model', got {kappa_mode!r}")
    saved_tokenizer = None
    if model is not None:
        cfg, desc = model.cfg, "given model"
    else:
        hint = C.BYTE_VOCAB if tokenizer == "bytes" else C.GPT2_VOCAB
        loaded = (load(checkpoint, config=config) if checkpoint is not None
                  else random_model(config, vocab_size=hint, seed=seed))
        model, cfg, desc = loaded.model, loaded.config, loaded.description
        saved_tokenizer = loaded.tokenizer
        _strong_types(model)
    inputs = build_inputs(cfg, tokens=tokens, text=text, dataset=dataset, data_files=data_files,
                          random=random, seq_len=seq_len, batch=batch, seed=seed,
                          tokenizer=tokenizer, special_ids=special_ids,
                          saved_tokenizer=saved_tokenizer)
    idx = _parse_layers(layers, cfg.n_layers)
    sel = list(idx)
    n = inputs.tokens.shape[1]
    mask = model_mask(cfg, n)

    bel = capture_beliefs(model, inputs.tokens)
    # every layer in one compiled call (one compile per model shape, whatever --layers says),
    # then the analysed layers are selected on the host
    met = jax.device_get(all_metrics(
        bel.beta, bel.kl, mask, inputs.tokens, mu=bel.mu, phi=bel.phi, sigma_diag=bel.sigma_diag,
        special_ids=inputs.special_ids, query_var_batches=1))
    met = {k: np.asarray(v)[sel] if _per_layer_key(k, v, cfg.n_layers) else np.asarray(v)
           for k, v in met.items()}

    gf = gradient_flow(model, inputs.tokens) if gradflow else None
    ab = (ablation_study(model, inputs.tokens, learned_logits=bel.logits, learned_beta=bel.beta,
                         override_ffn_beta=ablate_ffn_beta) if ablation else None)

    sweep, kappa_check = None, None
    kap = (sorted(set(V.DEFAULT_KAPPAS) | {round(float(cfg.kappa_beta), 6)}) if kappas is None
           else [float(k) for k in kappas])
    if kap:
        if kappa_mode == "attention":
            sweep, kappa_check = attention_kappa_sweep(cfg, bel.kl, kap, beta=bel.beta)
        else:
            sweep = model_kappa_sweep(model, inputs.tokens, kap)

    base_meta = {
        "checkpoint": desc, "seq_len": int(n), "batch": int(inputs.tokens.shape[0]),
        "input": inputs.sources[0], "tokenizer": inputs.tokenizer,
        "layers_analysed": list(idx), "n_layers": int(cfg.n_layers),
        "kappa_beta": float(cfg.kappa_beta), "beliefs": "entering each layer's attention",
    }
    report = V.validate(
        met, head_labels=cfg.head_labels, head_dims=cfg.layout.dims, mode=metrics,
        special_ids=inputs.special_ids, grad_norms=None if gf is None else gf.norms(),
        param_counts=None if gf is None else gf.counts(),
        ablation=None if ab is None else ab.losses, meta=base_meta)
    report = _augment(report, idx, gf, ab, cfg.n_layers)

    text_out = [_header(desc, cfg, inputs, idx, metrics), "", render_report(report, cfg.n_layers)]
    if sweep is not None:
        mode_txt = ("captured KL re-softmaxed at each κ, beliefs held fixed" if kappa_mode ==
                    "attention" else "whole model re-run at each κ")
        text_out += ["", V.RULE, f"κ SWEEP ({mode_txt}; model κ = {cfg.kappa_beta:.4g})", V.RULE]
        for li in idx:
            for md in V.MODES[metrics]:
                text_out += [V.render_kappa_sweep(sweep, md, li), ""]
        if kappa_check is not None:
            text_out.append(f"Check: β re-softmaxed at the model's κ matches the captured β "
                            f"(max |Δ| = {kappa_check:.1e}).")

    files: list[Path] = []
    full = dataclasses.replace(report, meta=_json_meta(base_meta, gf, ab, sweep, kappa_mode,
                                                       kappa_check, idx))
    if json_path is not None:
        files.append(report_io.write_json(full, json_path))
    if markdown_path is not None:
        path = report_io.write_markdown(report, markdown_path)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(_markdown_extra(gf, ab, sweep, kappa_mode, idx, cfg.n_layers))
        files.append(path)
    if plot_dir is not None:
        files += _plots(Path(plot_dir), report, sweep, cfg.head_labels, idx, dpi)
    if files:
        text_out += ["", *[f"saved: {p}" for p in files]]
    console = "\n".join(text_out)
    if echo is not None:
        echo(console)
    return RunResult(full, console, inputs, bel, met, idx, gf, ab, sweep, kappa_check, files,
                     cfg, desc)


def _plots(out: Path, report: V.ValidationReport, sweep: V.KappaSweep | None,
           labels: Sequence[str], layers: Sequence[int], dpi: int) -> list[Path]:
    from diagnostics.plots import plot_irrep_summary, plot_kappa_sweep

    files = []
    valid = np.asarray([[h.row_std_valid for h in lay.heads] for lay in report.layers])
    legacy = np.asarray([[h.row_std for h in lay.heads] for lay in report.layers])
    files.append(plot_irrep_summary(valid, labels, out / "irrep_summary_valid.png",
                                    metric="row_std (valid keys)", dpi=dpi).path)
    files.append(plot_irrep_summary(legacy, labels, out / "irrep_summary_legacy.png",
                                    metric="row_std (legacy: all j≠i)", dpi=dpi).path)
    if sweep is not None:
        for li in layers:
            files.append(plot_kappa_sweep(sweep.kappas, sweep.row_std["valid"][:, li], labels,
                                          out / f"kappa_sweep_L{li}.png", dpi=dpi).path)
    return files


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

EPILOG = """examples:
  python scripts/validate_attention.py --checkpoint tests/fixtures/T_A_v256/best_model.pt \\
      --text "def f(x): return x" --json report.json --markdown report.md
  python scripts/validate_attention.py --checkpoint runs/tiny/checkpoints --dataset wikitext-2 \\
      --data-files validation=wiki.valid.raw --seq_len 128 --batch 4
  python scripts/validate_attention.py --config configs/tiny.yaml --random --seq_len 64 \\
      --layers last --metrics valid --kappas 0.1 0.5 1 2
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="validate_attention.py",
        description="The 9-part attention validation report for every layer, with real "
                    "gradient flow, ablation, κ sweep and per-irrep table.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("--checkpoint", help="gaugeformer checkpoint directory or reference .pt "
                   "(converted on the fly); omitted: random weights")
    p.add_argument("--config", help="model config (YAML/JSON): defines the random model, or "
                   "overrides the config files beside a .pt")
    p.add_argument("--seq_len", "--seq-len", dest="seq_len", type=int, default=128,
                   help="tokens per sequence (capped at the model's max_seq_len)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", help="input text")
    src.add_argument("--dataset", choices=("wikitext-2", "wikitext-103", "embedded"),
                     help="validation windows of a dataset (real data)")
    src.add_argument("--random", action="store_true", help="random token ids")
    src.add_argument("--ids", help="explicit ids: .npy, .npz (key 'tokens'), a text file of ints "
                     "(one sequence per line) or '1,2,3'")
    p.add_argument("--data-files", nargs="+", metavar="[SPLIT=]PATH",
                   help="local WikiText-format files for --dataset (offline)")
    p.add_argument("--batch", type=int, default=None, help="sequences analysed (default 1)")
    p.add_argument("--layers", default="all", help="all, last, or comma-separated indices")
    p.add_argument("--metrics", choices=tuple(V.MODES), default="both",
                   help="legacy (the reference's numbers), valid (causally valid keys), or both "
                   "(legacy decides, valid shown beside)")
    p.add_argument("--kappas", type=float, nargs="*", default=None,
                   help="κ values of the sweep (default 0.3 0.5 1 2 5 + the model's; none given: "
                   "no sweep)")
    p.add_argument("--kappa-mode", choices=("attention", "model"), default="attention",
                   help="attention: re-softmax the captured KL (beliefs fixed, one compile); "
                   "model: re-run the whole model per κ")
    p.add_argument("--no-ablation", action="store_true", help="skip part 9")
    p.add_argument("--no-gradflow", action="store_true", help="skip part 8")
    p.add_argument("--ablate-ffn-beta", action="store_true",
                   help="the ablation also replaces the VFE FFN's own β (head-mean of the "
                   "override)")
    p.add_argument("--special-ids", type=int, nargs="*", default=None,
                   help="special-token ids for part 3 (default: GPT-2 end-of-text when GPT-2)")
    p.add_argument("--json", help="write the JSON report (schema v1) here")
    p.add_argument("--markdown", help="write the markdown report here")
    p.add_argument("--plot-dir", default="attention_validation",
                   help="κ-sweep and per-irrep figures (default: ./attention_validation)")
    p.add_argument("--no-plots", action="store_true", help="write no figures")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights / random ids")
    p.add_argument("--tokenizer", default="auto", choices=("auto", "gpt2", "bytes"))
    return p


def main(argv: Sequence[str] | None = None) -> RunResult:
    """CLI entry point (``scripts/validate_attention.py``)."""
    args = build_parser().parse_args(argv)
    enable_compilation_cache()
    try:
        return run_report(
            args.checkpoint, config=args.config, seq_len=args.seq_len, text=args.text,
            dataset=args.dataset, data_files=args.data_files, random=args.random, tokens=args.ids,
            batch=args.batch, seed=args.seed, tokenizer=args.tokenizer,
            special_ids=args.special_ids, layers=args.layers, metrics=args.metrics,
            gradflow=not args.no_gradflow, ablation=not args.no_ablation,
            ablate_ffn_beta=args.ablate_ffn_beta, kappas=args.kappas, kappa_mode=args.kappa_mode,
            json_path=args.json, markdown_path=args.markdown,
            plot_dir=None if args.no_plots else args.plot_dir)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
