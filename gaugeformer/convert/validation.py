"""Validating a converted checkpoint: our model against the reference's golden tensors or the live
PyTorch reference, each tensor classified by :mod:`gaugeformer.convert.verdict`.

* :func:`validate_golden` (``--validate golden.npz``): every tensor of a ``golden.npz`` (the
  fixtures' format, see their KEYS.md), with ``golden64.npz`` beside it as the float64 reference;
* :func:`validate_live` (``--validate-live REPO``): the logits of the live reference, run from a
  checkout when torch is installed.

Our float64 side is the model cast to float64 (:func:`to_float64`) and run with the reference's
per-pair KL (:func:`with_direct_kl`) inside :func:`float64_mode`.  The conversion itself:
:mod:`gaugeformer.convert.convert`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gaugeformer.config import ModelConfig
from gaugeformer.convert.recover import Log, RecoveredConfig, echo
from gaugeformer.convert.reference import map_torch_key
from gaugeformer.convert.verdict import LABELS, TensorVerdict, classify, summarize
from gaugeformer.loss import cross_entropy, free_energy_loss
from gaugeformer.model.lm import GaugeTransformerLM, run_with_cache
from gaugeformer.ops import so3
from gaugeformer.testing import golden_to_hook


@dataclasses.dataclass
class ValidationReport:
    """One :class:`~gaugeformer.convert.verdict.TensorVerdict` per compared tensor, keys that were
    not compared, and the status (``fail`` iff any tensor fails; :mod:`~.verdict`)."""

    name: str
    rows: list[TensorVerdict]
    skipped: list[str]

    @property
    def max_rel_err(self) -> float:
        return max((r.err32 for r in self.rows), default=0.0)

    @property
    def ok(self) -> bool:
        return summarize(self.rows)["status"] == "pass"

    def to_json(self) -> dict:
        return {"name": self.name, **summarize(self.rows), "max_rel_err": self.max_rel_err,
                "skipped": self.skipped,
                "tensors": [{**dataclasses.asdict(r), "ok": r.ok} for r in self.rows]}


@contextlib.contextmanager
def float64_mode():
    """``jax.enable_x64`` for a block, leaving no trace in the rest of the process.

    JAX 0.12 reuses traces across an x64 switch: a function traced in float32 mode and called again
    in float64 mode (or the reverse) fails with "lax.add requires arguments to have the same dtypes,
    got int32, int64" in an index normalisation.  Clearing JAX's caches on entry and exit avoids it
    (the persistent compilation cache still serves the compiles).
    """
    jax.clear_caches()
    try:
        with jax.enable_x64(True):
            yield
    finally:
        jax.clear_caches()


def with_direct_kl(model: nnx.Module) -> nnx.Module:
    """``model`` with the reference's per-pair KL (``kl_impl="direct"``), sharing its values.

    The float64 side of a validation uses it: the factorized KL moves the reference's ε (by up to
    2e-5 absolute on a KL, ``tests/model/test_parity64.py``), the direct one reproduces the
    reference to ≤ 2.5e-8, which lets the verdict's float64 tolerance be 1e-6 and still resolve κ off by 1%
    on a trained model (6e-5).
    """
    if model.cfg.kl_impl == "direct":
        return model
    direct = GaugeTransformerLM(model.cfg.replace(kl_impl="direct"), rngs=nnx.Rngs(0))
    nnx.update(direct, nnx.state(model))
    return direct


def to_float64(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` with every floating parameter and buffer cast to float64.

    Call (and evaluate the copy) inside ``with float64_mode():``; outside it JAX would silently
    compute in float32.  Buffers built in float32 (generators, the sinusoidal table) keep their
    float32 values, as the reference's ``model.double()`` does with its float32-built buffers.
    """
    copy = nnx.clone(model)
    state = nnx.state(copy)
    nnx.update(copy, jax.tree.map(
        lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, state))
    return copy


def _plan(golden: Mapping[str, np.ndarray], cfg: ModelConfig):
    """Classify golden keys: ``{key: ("fwd", regime, hook) | ("ce",) | ("loss", metric) |
    ("grad", path)}`` plus the keys that are not compared."""
    plan, skipped = {}, []
    for key in golden:
        hooked = golden_to_hook(key, cfg.n_layers)
        if key in ("tokens", "targets"):
            continue
        if hooked is not None:
            plan[key] = ("fwd",) + hooked
        elif key == "ce_nograd":
            plan[key] = ("ce",)
        elif key == "train_loss_total" or key.startswith("train_metric_"):
            plan[key] = ("loss", None if key == "train_loss_total"
                         else key[len("train_metric_"):].replace("_", "/", 1))
        elif key.startswith(("grad_", "gradnorm_")):
            try:
                path = map_torch_key(key.split("_", 1)[1])
            except KeyError:
                path = None
            if path == ("out_proj",) and cfg.tie_embeddings:
                path = ("embed", "mu_embed")
            plan[key] = ("grad", path) if path else None
        else:
            plan[key] = None
        if plan.get(key) is None:
            plan.pop(key, None)
            skipped.append(key)
    return plan, skipped


def _golden_outputs(model, tokens, targets, with_forward: bool, with_loss: bool):
    """Outputs of the three regimes (eval/no-grad, grad-enabled, training) and loss + grads."""
    caches = {}
    if with_forward:
        @nnx.jit
        def forwards(m, t):
            return (run_with_cache(m, t), run_with_cache(m, t, train=True),
                    run_with_cache(m, t, train=True, training_forward=True))

        outs = jax.device_get(forwards(model, tokens))
        caches = {regime: {**cache, "logits": logits}
                  for regime, (logits, cache) in zip(("nograd", "grad", "train"), outs)}
    loss = metrics = grads = None
    if with_loss:
        @nnx.jit
        def loss_and_grad(m, t, y):
            def loss(m):
                return free_energy_loss(m, t, y, alpha=1.0, lambda_beta=1.0)

            return nnx.value_and_grad(loss, has_aux=True)(m)

        (loss, metrics), grads = loss_and_grad(model, tokens, targets)
        grads = nnx.to_pure_dict(grads)
    return caches, loss, metrics, grads


def golden_values(model: nnx.Module, cfg: ModelConfig, golden: Mapping[str, np.ndarray],
                  x64: bool = False) -> tuple[dict[str, np.ndarray], list[str]]:
    """Our value of every comparable golden key (``grad_*``/``gradnorm_*``: the gradient), and the
    keys that cannot be compared.  ``x64``: evaluate a float64 copy of ``model``
    (:func:`to_float64`).

    Forward tensors in the three regimes (eval/no-grad, grad-enabled, training forward), the loss
    terms (``alpha=1, lambda_beta=1`` as the fixtures are generated) and the parameter gradients.
    """
    plan, skipped = _plan(golden, cfg)
    with_forward = any(p[0] in ("fwd", "ce") for p in plan.values())
    with_loss = any(p[0] in ("loss", "grad") for p in plan.values())
    tokens, targets = np.asarray(golden["tokens"]), np.asarray(golden["targets"])
    with float64_mode() if x64 else contextlib.nullcontext():
        if x64:
            model = to_float64(model)
        caches, loss, metrics, grads = _golden_outputs(model, tokens, targets, with_forward,
                                                       with_loss)
        values = {}
        for key, p in plan.items():
            if p[0] == "fwd":
                ours = caches[p[1]].get(p[2])
                if ours is None:
                    skipped.append(key)
                    continue
            elif p[0] == "ce":
                ours = cross_entropy(caches["nograd"]["logits"], targets)
            elif p[0] == "loss":
                ours = loss if p[1] is None else metrics[p[1]]
            else:
                ours = functools.reduce(lambda node, k: node[k], p[1], grads)
            values[key] = np.asarray(ours)
    return values, skipped


def validate_golden(model: nnx.Module, cfg: ModelConfig, golden: Mapping[str, np.ndarray],
                    log: Log = echo, name: str = "golden",
                    golden64: Mapping[str, np.ndarray] | None = None,
                    x64: bool = False) -> ValidationReport:
    """Compare ``model`` with a reference ``golden.npz`` (the fixtures' format, see their KEYS.md).

    Every tensor of :func:`golden_values` is classified by :func:`~.verdict.classify`.  ``model``
    is also evaluated in float64 (with the per-pair KL, :func:`with_direct_kl`) when ``x64``, when
    a float64 reference ``golden64`` is given, or when a tensor fails the strict check;
    ``golden64`` supplies the float64 reference values.
    """
    plan, _ = _plan(golden, cfg)
    log(f"validating against {name}: {len(plan)} tensors in float32"
        f"{' and float64' if x64 or golden64 is not None else ''}"
        f"{' (float64 reference: golden64)' if golden64 is not None else ''} (jit-compiling...)")
    ours32, skipped = golden_values(model, cfg, golden)
    ours64 = None
    if x64 or golden64 is not None or not all(
            classify(k, v, golden[k]).verdict == "pass" for k, v in ours32.items()):
        if not (x64 or golden64 is not None):
            log("  a tensor is outside the strict tolerance: evaluating the model in float64 too")
        ours64, _ = golden_values(with_direct_kl(model), cfg, golden, x64=True)
    rows = [classify(key, value, golden[key], None if ours64 is None else ours64[key],
                     None if golden64 is None or key not in golden64 else golden64[key])
            for key, value in ours32.items()]
    report = ValidationReport(name, rows, skipped)
    _print_report(report, log)
    return report


def _print_report(report: ValidationReport, log: Log) -> None:
    width = max((len(r.key) for r in report.rows), default=10)
    for r in report.rows:
        log(f"  {LABELS[r.verdict]:<4}  {r.key:<{width}}  {str(r.shape):<16} "
            f"max_abs={r.max_abs:.3e}  {r.describe()}")
    if report.skipped:
        log(f"  not compared ({len(report.skipped)}): {report.skipped}")
    c = summarize(report.rows)["counts"]
    log(f"{report.name}: {len(report.rows)} tensors: {c['pass']} pass, {c['pass-f32']} pass within "
        f"float32 rounding, {c['fail']} fail")


def to_reference_dict(cfg: ModelConfig) -> dict:
    """A reference ``GaugeTransformerLM`` config dict for a reference-profile ``cfg``."""
    keys = ("vocab_size", "embed_dim", "n_layers", "max_seq_len", "kappa_beta",
            "gauge_fixed_priors", "evolve_sigma", "evolve_phi", "diagonal_covariance",
            "mu_init_std", "mu_normalize", "mu_max_norm", "use_positional_embedding",
            "tie_embeddings", "pos_encoding_mode", "pos_encoding_scale", "attention_pattern",
            "attention_window", "alibi_slope", "mask_self_attention", "use_layernorm",
            "use_residual", "hidden_dim", "ffn_n_iterations", "ffn_learnable_lr",
            "ffn_lambda_belief", "ffn_update_sigma", "alpha", "phi_lr", "phi_max_norm")
    d = {k: getattr(cfg, k) for k in keys}
    d.update(irrep_spec=[tuple(e) for e in so3.parse_irreps(cfg.irreps)], use_multi_irrep=True,
             gauge_group="SO3", gauge_dim=3, ffn_mode="VFE_dynamic")
    return d


def validate_live(model: nnx.Module, rec: RecoveredConfig, state_dict: Mapping[str, np.ndarray],
                  repo_dir: str | os.PathLike, tokens: np.ndarray, log: Log = echo,
                  x64: bool = False) -> ValidationReport | None:
    """Run the live PyTorch reference (``REPO/transformer/model.py``) and compare the logits.

    The logits get the three-class verdict (:func:`~gaugeformer.convert.verdict.classify`): when the
    strict float32 check fails, or with ``x64``, our model is evaluated in float64 and the reference
    is run again in float64 (``model.double()``, when it has one).

    Returns None (after saying why) when torch or the reference checkout cannot be imported, or the
    config is not the reference profile.
    """
    repo = Path(repo_dir).absolute()
    try:
        import torch
    except ImportError:
        log("--validate-live skipped: torch is not installed (optional; pip install torch)")
        return None
    if rec.cfg.profile != "reference":
        log(f"--validate-live skipped: profile={rec.cfg.profile!r} is not the reference's")
        return None
    if not (repo / "transformer" / "model.py").is_file():
        log(f"--validate-live skipped: {repo} has no transformer/model.py (not a reference "
            "checkout)")
        return None
    sys.path.insert(0, str(repo))
    try:
        from transformer import attention as ref_attention
        from transformer.model import GaugeTransformerLM as ReferenceLM
    except Exception as exc:  # noqa: BLE001 - any import failure of foreign code means "skip"
        log(f"--validate-live skipped: cannot import the reference from {repo} ({exc})")
        return None
    finally:
        sys.path.remove(str(repo))
    if hasattr(ref_attention, "NUMBA_AVAILABLE"):
        ref_attention.NUMBA_AVAILABLE = False  # the torch path, as the fixtures were generated
    log(f"--validate-live: running the PyTorch reference from {repo}")
    torch.manual_seed(0)
    ref = ReferenceLM(dict(rec.reference or to_reference_dict(rec.cfg)))
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()},
                        strict=True)
    ref.eval()

    def reference_logits():
        with torch.no_grad():
            out = ref(torch.from_numpy(np.asarray(tokens, np.int64)))
        return np.asarray((out[0] if isinstance(out, (tuple, list)) else out).numpy())

    def our_logits(as64: bool):
        with float64_mode() if as64 else contextlib.nullcontext():
            m = to_float64(with_direct_kl(model)) if as64 else model
            return np.asarray(nnx.jit(lambda m, t: m(t))(m, jnp.asarray(tokens)))

    ref32, ours32 = reference_logits(), our_logits(False)
    ours64 = ref64 = None
    if x64 or classify("logits", ours32, ref32).verdict != "pass":
        ours64 = our_logits(True)
        if hasattr(ref, "double"):
            log("--validate-live: running the PyTorch reference in float64 (model.double())")
            ref.double()
            ref64 = reference_logits()
    report = ValidationReport("live reference",
                              [classify("logits", ours32, ref32, ours64, ref64)], [])
    _print_report(report, log)
    return report


def live_tokens(golden: Mapping | None, cfg: ModelConfig) -> np.ndarray:
    """The tokens of a live validation: the golden file's, else 2 random rows of ≤ 32 ids."""
    if golden is not None:
        return np.asarray(golden["tokens"])
    rng = np.random.default_rng(0)
    return rng.integers(0, cfg.vocab_size, (2, min(32, cfg.max_seq_len)))
