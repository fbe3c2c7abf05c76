"""Convert PyTorch reference checkpoints into gaugeformer orbax checkpoints, and validate them.

``scripts/convert_checkpoint.py CKPT --out DIR`` is :func:`run`.  The steps, each a function here:

1. :func:`read_checkpoint`: a ``torch.save`` zip (the reference's ``FastTrainer`` dict, another
   trainer's dict, or a bare state dict) through the torch-free, allow-listed reader of
   :mod:`gaugeformer.convert.torch_pt`, or a ``.safetensors`` file (tensors + string metadata).
2. :func:`recover_config`, first match wins:

   a. ``--config FILE`` (JSON/YAML): a gaugeformer ``ModelConfig`` dict, a reference model-config
      dict, or an ``experiment_config.json``;
   b. a model config inside the checkpoint: the older format the reference's
      ``evaluate_checkpoint.py`` reads (``ckpt["config"]`` holding ``embed_dim``, ``irrep_spec``...;
      its defaults fill the gaps), or a JSON config in safetensors metadata
      (``model_config``/``config``) or a sidecar ``<stem>.json``;
   c. ``model_config.json`` beside the checkpoint (the exact dict given to the reference model);
   d. ``experiment_config.json`` beside it: its ``config`` is written *before* the reference sets
      ``vocab_size`` (a placeholder) and ``kappa_beta`` (auto-scaled), so V comes from the weights
      and κ from :func:`~gaugeformer.config.resolve_reference_kappa`, and the summary says so;
   e. :func:`infer_config` from the state dict alone (printing what was inferred and what assumed).

   Every config is then checked against the weights: keys and shapes
   (:func:`~gaugeformer.convert.reference.check_state_dict`, one error listing every problem;
   generator buffers and a tied ``out_proj`` may be absent, as in a de-duplicated safetensors
   export), and the generator buffers present, the tied ``out_proj`` and every fixed buffer
   (sinusoidal/zero ``pos_phi``, constant ``log_sigma_diag``, fixed FFN step size) must match what
   the config rebuilds.
3. the torch AdamW state, when present, becomes the optax state
   (:mod:`gaugeformer.convert.optimizer`).
4. :func:`save_converted` writes an orbax checkpoint through :func:`gaugeformer.checkpoint.write`;
   :func:`gaugeformer.load` (or :func:`gaugeformer.checkpoint.restore`) reads it back.
5. ``--validate golden.npz`` (:func:`validate_golden`) and ``--validate-live REPO``
   (:func:`validate_live`).

Steps 1-2 live in :mod:`gaugeformer.convert.recover`.  Orbax layout (the trainer's, written by
:mod:`gaugeformer.checkpoint`, so ``gaugeformer.load`` and ``train.init_from`` open a converted
checkpoint; ``DIR`` is made absolute, written to a temp dir
beside it and renamed into place)::

    DIR/<step>/          one ocp.CheckpointManager step; <step> = meta["step"]
      params/            StandardSave: nnx.to_pure_dict(nnx.state(model)): the nnx.Param leaves
                         and the constant buffers (generators are not state); int keys for blocks
      config/metadata    JsonSave: ModelConfig.to_dict()  (plain JSON, readable without orbax)
      meta/metadata      JsonSave: {"format": "gaugeformer.converted/1",
                         "step": completed optimizer updates, "step_source",
                         "reference_step": the checkpoint's 0-based "step", "source",
                         "converted_from", "checkpoint_kind", "sha256", "config_source",
                         "config_notes", "best_val_loss", "training_config",
                         "optim": OptimConfig fields | None, "has_opt_state", "optimizer_notes",
                         "tokenizer": {"kind", "vocab_size", "kept_ids"}}
      opt_state/         only when has_opt_state. StandardSave: nnx.to_pure_dict(nnx.state(opt))
                         of opt = nnx.Optimizer(model, build_optimizer(OptimConfig(**meta["optim"])),
                         wrt=nnx.Param) holding the converted AdamW moments:
                         {"opt_state": the optax state as a pure dict, "step": meta["step"]}

``gaugeformer.checkpoint.restore(DIR, optimizer=True)`` then ``optimizer_from_restored`` resume
the optimizer; :func:`install_opt_state` puts a pure optax state into an ``nnx.Optimizer``.
"""


from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gaugeformer import checkpoint as ckpt
from gaugeformer.config import ModelConfig
from gaugeformer.convert.optimizer import ConvertedOptimizer, torch_adamw_to_optax
from gaugeformer.convert.recover import (  # noqa: F401 (re-exported: the converter's steps 1-2)
    EVALUATOR_DEFAULTS,
    CheckpointParts,
    ConversionError,
    RecoveredConfig,
    check_values,
    config_from_dict,
    config_from_file,
    infer_config,
    load_reference,
    read_checkpoint,
    read_config_file,
    recover_config,
)
from gaugeformer.convert.reference import map_torch_key
from gaugeformer.convert.verdict import LABELS, TensorVerdict, classify, summarize
from gaugeformer.data.tokenizer import default_tokenizer
from gaugeformer.loss import cross_entropy, free_energy_loss
from gaugeformer.model.lm import run_with_cache
from gaugeformer.ops import so3
from gaugeformer.testing import golden_error, golden_to_hook
from gaugeformer.train.optim import build_optimizer

FORMAT = "gaugeformer.converted/1"
SOURCE = "pytorch:cdenn016/VFE-Sim-GPU-Refactor"
Log = Callable[[str], None]
OutputExistsError = ckpt.OutputExistsError


def _print(msg: str) -> None:
    print(msg, flush=True)


# =============================================================================================
# 3. Conversion
# =============================================================================================


@dataclasses.dataclass
class Conversion:
    """A converted checkpoint in memory: ``model``, its ``config`` record, optimizer, ``meta``."""

    model: nnx.Module
    config: RecoveredConfig
    optimizer: ConvertedOptimizer | None
    meta: dict
    parts: CheckpointParts


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray) and obj.ndim == 0 or isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_checkpoint(path: str | os.PathLike, *, config: str | os.PathLike | None = None,
                       include_optimizer: bool = True, log: Log = _print) -> Conversion:
    """Read, recover the config, check, build the model and map the optimizer (no writing).

    Args:
      path: the checkpoint file.
      config: optional ``--config`` file.
      include_optimizer: map the torch AdamW state when present.
      log: progress printer.
    """
    model, rec, parts = load_reference(path, config, log)
    opt = None
    if include_optimizer and parts.optimizer is not None:
        opt = torch_adamw_to_optax(parts.optimizer, parts.state_dict, rec.cfg, model,
                                   parts.training_config)
        o = opt.optim
        log(f"optimizer: torch AdamW -> optax, step {opt.step}, groups {opt.groups}, lr mu/phi/ffn "
            f"{o.mu_lr:g}/{o.phi_lr:g}/{o.ffn_lr:g}, weight_decay(ffn) {o.weight_decay:g}, "
            f"warmup {o.warmup_steps}, max_steps {o.max_steps}")
        for note in opt.notes:
            log(f"  {note}")
    step, step_source = _step_of(parts, opt)
    meta = dict(
        format=FORMAT, step=step, step_source=step_source, reference_step=parts.step,
        source=SOURCE, converted_from=str(parts.path.absolute()), checkpoint_kind=parts.kind,
        sha256=_sha256(parts.path), config_source=rec.source, config_notes=list(rec.notes),
        best_val_loss=parts.best_val_loss, training_config=parts.training_config,
        optim=dataclasses.asdict(opt.optim) if opt else None, has_opt_state=opt is not None,
        optimizer_notes=list(opt.notes) if opt else [],
        tokenizer=_tokenizer_record(rec.cfg.vocab_size))
    return Conversion(model, rec, opt, _jsonable(meta), parts)


def _tokenizer_record(vocab_size: int) -> dict:
    """The tokenizer a reference vocabulary implies; a restricted one's kept ids are unknown."""
    tok = default_tokenizer(vocab_size)
    if tok is not None:
        return tok.to_meta()
    return {"kind": "gpt2", "vocab_size": int(vocab_size), "kept_ids": None,
            "note": "restricted GPT-2 vocabulary: the reference checkpoint does not store its kept "
                    "ids (rebuild them from the training corpus)"}


def _step_of(parts: CheckpointParts, opt: ConvertedOptimizer | None) -> tuple[int, str]:
    if opt is not None:
        return opt.step, "completed AdamW updates (torch optimizer 'step')"
    if parts.step is not None:
        return parts.step, "the checkpoint's 'step' (no optimizer state)"
    return 0, "no step in the checkpoint"


# =============================================================================================
# 4. Writing (through gaugeformer.checkpoint, the trainer's layout)
# =============================================================================================


def install_opt_state(optimizer: nnx.Optimizer, opt_state: Any, step: int) -> None:
    """Put a pure optax state (and the update count) into an ``nnx.Optimizer`` to resume training.

    Args:
      optimizer: ``nnx.Optimizer(model, build_optimizer(optim), wrt=nnx.Param)``.
      opt_state: a pure optax state of that ``tx`` (a converted AdamW state).
      step: completed updates (``meta["step"]``).
    """
    have = jax.tree.structure(nnx.as_pure(optimizer.opt_state))
    if have != jax.tree.structure(opt_state):
        raise ConversionError("the optimizer's state does not have the converted state's structure "
                              "(another OptimConfig group layout, other parameters, or a tx whose "
                              "init sees Param nodes; build it with build_optimizer)")
    nnx.update(optimizer.opt_state, nnx.state(opt_state))
    optimizer.step[...] = step


def save_converted(out_dir: str | os.PathLike, model: nnx.Module, meta: dict,
                   opt_state: Any = None, *, force: bool = False) -> Path:
    """Write a converted model (and its optax state) with :func:`gaugeformer.checkpoint.write`.

    Args:
      out_dir: destination directory (made absolute; written atomically).
      model: the model; its whole ``nnx.state`` (params and buffers) is saved.
      meta: JSON-able metadata; ``meta["step"]`` names the orbax step, ``meta["optim"]`` (the
        :class:`OptimConfig` fields) is required with ``opt_state``.
      opt_state: optional pure optax state of ``build_optimizer(OptimConfig(**meta["optim"]))``.
      force: replace an existing ``out_dir``.
    """
    step = int(meta.get("step", 0))
    optimizer = None
    if opt_state is not None:
        optimizer = nnx.Optimizer(model, build_optimizer(ckpt.optim_config_of(meta)),
                                  wrt=nnx.Param)
        install_opt_state(optimizer, opt_state, step)
    meta = {**meta, "has_opt_state": opt_state is not None}
    return ckpt.write(out_dir, step, model, optimizer, meta, force=force)


# =============================================================================================
# 5. Validation
# =============================================================================================



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
    2e-5 absolute on a KL, ``tests/model/test_parity64.py``), the direct one reproduces the reference
    to ≤ 2.5e-8, which lets the verdict's float64 tolerance be 1e-6 and still resolve κ off by 1%
    on a trained model (6e-5).
    """
    from gaugeformer.model.lm import GaugeTransformerLM

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
                    log: Log = _print, name: str = "golden",
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
                  repo_dir: str | os.PathLike, tokens: np.ndarray, log: Log = _print,
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


# =============================================================================================
# CLI driver
# =============================================================================================


def _live_tokens(golden: Mapping | None, cfg: ModelConfig) -> np.ndarray:
    if golden is not None:
        return np.asarray(golden["tokens"])
    rng = np.random.default_rng(0)
    return rng.integers(0, cfg.vocab_size, (2, min(32, cfg.max_seq_len)))


def run(checkpoint: str | os.PathLike, out: str | os.PathLike, *,
        config: str | os.PathLike | None = None, force: bool = False,
        validate: str | os.PathLike | None = None,
        validate_live_repo: str | os.PathLike | None = None,
        json_out: str | os.PathLike | None = None, include_optimizer: bool = True,
        x64: bool = False, log: Log = _print) -> int:
    """Convert ``checkpoint`` into ``out``, optionally validate; the body of the CLI.

    Returns:
      0 on success, 1 when a validation fails, 2 on an error (printed as one line to stderr).
    """
    try:
        out_path = Path(out).absolute()
        if out_path.exists() and not force:
            raise OutputExistsError(f"{out_path} exists; fix: pass --force to replace it")
        golden = dict(np.load(validate)) if validate is not None else None
        golden64_path = None if validate is None else Path(validate).with_name("golden64.npz")
        golden64 = dict(np.load(golden64_path)) if golden64_path and golden64_path.is_file() \
            else None
        conv = convert_checkpoint(checkpoint, config=config, include_optimizer=include_optimizer,
                                  log=log)
        cfg = conv.config.cfg
        log(f"writing {out_path} ...")
        save_converted(out_path, conv.model, conv.meta,
                       conv.optimizer.opt_state if conv.optimizer else None, force=force)
        items = "params, config, meta" + (", opt_state" if conv.optimizer else "")
        log(f"wrote {out_path} (orbax step {conv.meta['step']}: {items})")
        reports = []
        if golden is not None:
            restored = ckpt.restore(out_path)
            model, cfg = ckpt.model_from_restored(restored), restored.model_config
            reports.append(validate_golden(model, cfg, golden, log, name=str(validate),
                                           golden64=golden64, x64=x64))
        if validate_live_repo is not None:
            live = validate_live(conv.model, conv.config, conv.parts.state_dict, validate_live_repo,
                                 _live_tokens(golden, cfg), log, x64=x64)
            if live is not None:
                reports.append(live)
        ok = all(r.ok for r in reports)
        if json_out is not None:
            payload = {"checkpoint": str(Path(checkpoint).absolute()), "out": str(out_path),
                       "config": cfg.to_dict(), "meta": conv.meta,
                       "validation": [r.to_json() for r in reports],
                       "status": ("pass" if ok else "fail") if reports else "converted"}
            Path(json_out).write_text(json.dumps(_jsonable(payload), indent=2, ensure_ascii=False))
            log(f"report written to {json_out}")
        if reports:
            n = {v: sum(summarize(r.rows)["counts"][v] for r in reports)
                 for v in ("pass", "pass-f32", "fail")}
            log(f"max_rel_err={max(r.max_rel_err for r in reports):.3e} "
                f"status={'pass' if ok else 'fail'} ({n['pass']} pass, {n['pass-f32']} pass within "
                f"float32 rounding, {n['fail']} fail)")
        return 0 if ok else 1
    except (ValueError, OSError, KeyError) as exc:
        message = str(exc) if not isinstance(exc, KeyError) else f"missing key {exc}"
        print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
        return 2
