"""Convert PyTorch reference checkpoints into gaugeformer orbax checkpoints.

``scripts/convert_checkpoint.py CKPT --out DIR`` is :func:`run`.  The steps, each one function:

1. :func:`~gaugeformer.convert.recover.read_checkpoint`: a ``torch.save`` zip (the reference's
   ``FastTrainer`` dict, another trainer's dict, or a bare state dict) through the torch-free,
   allow-listed reader of :mod:`gaugeformer.convert.torch_pt`, or a ``.safetensors`` file (tensors
   + string metadata).
2. :func:`~gaugeformer.convert.recover.recover_config`, first match wins:

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
   e. :func:`~gaugeformer.convert.recover.infer_config` from the state dict alone (printing what
      was inferred and what assumed).

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
5. ``--validate golden.npz`` and ``--validate-live REPO``: :mod:`gaugeformer.convert.validation`
   (:func:`~gaugeformer.convert.validation.validate_golden`,
   :func:`~gaugeformer.convert.validation.validate_live`), beside the verdict rule of
   :mod:`gaugeformer.convert.verdict`.

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

import dataclasses
import hashlib
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from gaugeformer import checkpoint as ckpt
from gaugeformer.convert.optimizer import ConvertedOptimizer, torch_adamw_to_optax
from gaugeformer.convert.recover import (
    CheckpointParts,
    ConversionError,
    Log,
    RecoveredConfig,
    echo,
    load_reference,
)
from gaugeformer.convert.validation import live_tokens, validate_golden, validate_live
from gaugeformer.convert.verdict import summarize
from gaugeformer.data.tokenizer import default_tokenizer
from gaugeformer.train.optim import build_optimizer

FORMAT = "gaugeformer.converted/1"
SOURCE = "pytorch:cdenn016/VFE-Sim-GPU-Refactor"
OutputExistsError = ckpt.OutputExistsError

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
                       include_optimizer: bool = True, log: Log = echo) -> Conversion:
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
# CLI driver
# =============================================================================================


def run(checkpoint: str | os.PathLike, out: str | os.PathLike, *,
        config: str | os.PathLike | None = None, force: bool = False,
        validate: str | os.PathLike | None = None,
        validate_live_repo: str | os.PathLike | None = None,
        json_out: str | os.PathLike | None = None, include_optimizer: bool = True,
        x64: bool = False, log: Log = echo) -> int:
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
                                 live_tokens(golden, cfg), log, x64=x64)
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
