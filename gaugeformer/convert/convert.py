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
4. :func:`save_converted` writes an orbax checkpoint; :func:`load_converted` reads it back.
5. ``--validate golden.npz`` (:func:`validate_golden`) and ``--validate-live REPO``
   (:func:`validate_live`).

Orbax layout (the same items as :mod:`gaugeformer.train.checkpoint`, so the trainer's ``load_model``
and ``train.init_from`` open a converted checkpoint; ``DIR`` is made absolute, written to a temp dir
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
                         "optim": OptimConfig fields | None, "has_opt_state", "optimizer_notes"}
      opt_state/         only when has_opt_state. StandardSave: nnx.to_pure_dict(nnx.state(opt))
                         of opt = nnx.Optimizer(model, resumable_tx(OptimConfig(**meta["optim"])),
                         wrt=nnx.Param) holding the converted AdamW moments:
                         {"opt_state": the optax state as a pure dict, "step": meta["step"]}

:func:`load_converted` returns ``(model, cfg, opt_state | None, meta)`` with ``opt_state`` as a
plain optax state; :func:`install_opt_state` puts it into an ``nnx.Optimizer``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gaugeformer.config import ModelConfig, from_reference_dict, resolve_reference_kappa
from gaugeformer.convert.optimizer import ConvertedOptimizer, torch_adamw_to_optax
from gaugeformer.convert.reference import (
    _flat,
    check_generators,
    check_state_dict,
    model_from_reference,
    torch_key_of,
)
from gaugeformer.convert.torch_pt import load_pt, load_safetensors, split_checkpoint
from gaugeformer.convert.verdict import LABELS, TensorVerdict, classify, summarize
from gaugeformer.ops import so3
from gaugeformer.ops.positional import sinusoidal_table
from gaugeformer.train.optim import OptimConfig, make_optimizer

FORMAT = "gaugeformer.converted/1"
SOURCE = "pytorch:cdenn016/VFE-Sim-GPU-Refactor"
Log = Callable[[str], None]

# What the reference's evaluate_checkpoint.py assumes for keys an embedded model config lacks.
EVALUATOR_DEFAULTS: dict[str, Any] = dict(
    max_seq_len=40, n_layers=2, kappa_beta=1.0, pos_encoding_mode="learned", evolve_sigma=False,
    evolve_phi=False, tie_embeddings=True, irrep_spec=[("ℓ0", 5, 1), ("ℓ1", 2, 3)])
_SAFETENSORS_CONFIG_KEYS = ("model_config", "config", "gaugeformer_config")


class ConversionError(ValueError):
    """A checkpoint cannot be converted (config missing or contradicting the weights, ...)."""


class OutputExistsError(ConversionError):
    """The output directory exists and ``force`` was not given."""


def _print(msg: str) -> None:
    print(msg, flush=True)


# =============================================================================================
# 1. Reading
# =============================================================================================


@dataclasses.dataclass(frozen=True)
class CheckpointParts:
    """What a checkpoint file holds, normalised.

    Attributes:
      path: the file.
      kind: ``"torch.save"`` or ``"safetensors"``.
      state_dict: ``{reference key: np.ndarray}`` in saved order.
      optimizer: torch ``optimizer.state_dict()`` or None.
      training_config: the checkpoint's ``config`` dict (``vars(FastTrainingConfig)``) or None.
      embedded_config: a model config found inside the file (older format / safetensors metadata).
      step: the checkpoint's ``step`` (the reference's 0-based index of the last update) or None.
      best_val_loss: float or None.
    """

    path: Path
    kind: str
    state_dict: dict[str, np.ndarray]
    optimizer: dict | None = None
    training_config: dict | None = None
    embedded_config: tuple[str, dict] | None = None
    step: int | None = None
    best_val_loss: float | None = None


def _has_model_keys(d: Any) -> bool:
    return isinstance(d, Mapping) and "embed_dim" in d and ("irrep_spec" in d or "n_layers" in d)


def _safetensors_config(path: Path, metadata: dict[str, str]) -> tuple[str, dict] | None:
    for key in _SAFETENSORS_CONFIG_KEYS:
        if key in metadata:
            try:
                value = json.loads(metadata[key])
            except json.JSONDecodeError as exc:
                raise ConversionError(f"{path}: safetensors metadata {key!r} is not JSON ({exc}); "
                                      "fix: store json.dumps(config) there") from None
            if isinstance(value, dict):
                return f"safetensors metadata {key!r}", value
    for side in (path.with_suffix(".json"), path.with_name(path.stem + ".config.json")):
        if side.is_file():
            return f"sidecar {side.name}", read_config_file(side)
    return None


def read_checkpoint(path: str | os.PathLike) -> CheckpointParts:
    """Read a ``.pt``/``.pth``/``.ckpt`` (torch.save zip) or ``.safetensors`` checkpoint.

    Raises:
      FileNotFoundError, CheckpointError (unsafe pickle, legacy/corrupt file, ...), ConversionError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        tensors, metadata = load_safetensors(path)
        step = metadata.get("step")
        return CheckpointParts(path, "safetensors", dict(tensors),
                               embedded_config=_safetensors_config(path, metadata),
                               step=int(step) if step and step.isdigit() else None)
    parts = split_checkpoint(load_pt(path))
    training = parts["config"]
    embedded = None
    if _has_model_keys(training):
        embedded, training = ("the checkpoint's 'config' (older format)", dict(training)), None
    return CheckpointParts(path, "torch.save", parts["model_state_dict"],
                           parts["optimizer_state_dict"],
                           dict(training) if training is not None else None, embedded,
                           parts["step"], parts["best_val_loss"])


# =============================================================================================
# 2. Model config recovery
# =============================================================================================


@dataclasses.dataclass(frozen=True)
class RecoveredConfig:
    """A model config and how it was obtained.

    Attributes:
      cfg: the config.
      source: human-readable origin (``"model_config.json beside the checkpoint"``, ...).
      notes: resolved / inferred / assumed values, one line each.
      reference: the reference-style dict (for ``--validate-live``), when there is one.
    """

    cfg: ModelConfig
    source: str
    notes: tuple[str, ...] = ()
    reference: dict | None = None


def read_config_file(path: Path) -> dict:
    text = Path(path).read_text()
    if Path(path).suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConversionError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: a config file must hold a mapping, got "
                              f"{type(data).__name__}")
    return data


def _vocab_from_weights(sd: Mapping[str, np.ndarray]) -> int:
    if "token_embed.phi_embed.weight" not in sd:
        raise ConversionError("the state dict has no token_embed.phi_embed.weight, so the "
                              "vocabulary size cannot be read from the weights; fix: pass --config "
                              "with vocab_size")
    return int(sd["token_embed.phi_embed.weight"].shape[0])


def _kappa_note(d: Mapping[str, Any], source: str, unresolved: bool = False) -> str:
    kappa = resolve_reference_kappa(d)
    if d.get("kappa_beta_auto_scale", False):
        when = f" ({source} is written before κ is auto-scaled)" if unresolved else ""
        return (f"kappa_beta={kappa:.6g} resolved as train_publication does: kappa_beta_base "
                f"{d.get('kappa_beta_base', 1.0)} * embed_dim {d['embed_dim']} / kappa_beta_k_ref "
                f"{d.get('kappa_beta_k_ref', 11)}{when}")
    how = "its kappa_beta" if d.get("kappa_beta") is not None else "kappa_beta_base (no kappa_beta)"
    return f"kappa_beta={kappa:.6g} from {how}"


def _from_experiment(d: dict, sd: Mapping, source: str) -> RecoveredConfig:
    d = dict(d)
    vocab = _vocab_from_weights(sd)
    notes = [f"vocab_size={vocab} from token_embed.phi_embed.weight ({source} is written before "
             f"the tokenizer sets it; it says {d.get('vocab_size')})",
             _kappa_note(d, source, unresolved=True)]
    d["vocab_size"], d["kappa_beta"] = vocab, resolve_reference_kappa(d)
    return RecoveredConfig(from_reference_dict(d), source, tuple(notes), d)


def _from_embedded(d: dict, sd: Mapping, source: str) -> RecoveredConfig:
    """The older format ``evaluate_checkpoint.py`` reads: its defaults, V and K from the weights."""
    merged = {**EVALUATOR_DEFAULTS, **d}
    notes = [f"defaults of the reference's evaluate_checkpoint.py for absent keys: "
             f"{sorted(k for k in EVALUATOR_DEFAULTS if k not in d)}"]
    table = sd.get("token_embed.mu_embed.weight")
    if table is not None:
        merged["vocab_size"], merged["embed_dim"] = map(int, table.shape)
        notes.append("vocab_size, embed_dim from token_embed.mu_embed.weight (as the evaluator "
                     "does)")
    elif "vocab_size" not in d:
        merged["vocab_size"] = _vocab_from_weights(sd)
        notes.append("vocab_size from token_embed.phi_embed.weight")
    if "use_multi_irrep" not in d:
        merged["use_multi_irrep"] = True
        notes.append("use_multi_irrep=True assumed (generators are checked against the weights)")
    return RecoveredConfig(from_reference_dict(merged), source, tuple(notes), merged)


def config_from_dict(d: dict, sd: Mapping, source: str) -> RecoveredConfig:
    """Interpret a config dict of any supported kind (see the module docstring, step 2)."""
    if isinstance(d.get("config"), dict) and _has_model_keys(d["config"]):
        return _from_experiment(d["config"], sd, source)
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    if "irreps" in d or ("profile" in d and set(d) <= names | {"irrep_spec"}):
        return RecoveredConfig(ModelConfig.from_dict(d), source)
    if _has_model_keys(d):
        d, notes = dict(d), []
        if d.get("vocab_size") is None:
            d["vocab_size"] = _vocab_from_weights(sd)
            notes.append(f"vocab_size={d['vocab_size']} from token_embed.phi_embed.weight "
                         f"(absent from {source})")
        if d.get("kappa_beta") is None or d.get("kappa_beta_auto_scale"):
            notes.append(_kappa_note(d, source))
        return RecoveredConfig(from_reference_dict(d), source, tuple(notes), d)
    raise ConversionError(f"{source}: not a model config (expected gaugeformer keys such as "
                          "'irreps', or reference keys such as 'embed_dim' and 'irrep_spec')")


def _irrep_spec_from_heads(sd: Mapping) -> list[tuple[str, int, int]]:
    prefix = "transformer.blocks.0.attention.head_generators."
    heads = sorted((int(k[len(prefix):].split(".")[0]), v.shape[-1]) for k, v in sd.items()
                   if k.startswith(prefix) and k.endswith(".gen"))
    dims = [d for _, d in heads]
    if not dims or [h for h, _ in heads] != list(range(len(dims))):
        raise ConversionError(f"cannot read the heads: {prefix}{{h}}.gen buffers are missing or "
                              "not numbered 0..H-1; fix: pass --config")
    if any(d % 2 == 0 for d in dims):
        raise ConversionError(f"head dimensions {dims} include even ones, which are not SO(3) "
                              "irreps")
    spec: list[list] = []
    for d in dims:
        if spec and spec[-1][2] == d:
            spec[-1][1] += 1
        else:
            spec.append([f"ℓ{(d - 1) // 2}", 1, d])
    return [tuple(e) for e in spec]


def _embed_dim_from_weights(sd: Mapping[str, np.ndarray]) -> int:
    for key in ("generators", "token_embed.base_mu", "token_embed.mu_embed.weight",
                "token_embed.pos_embed.weight", "out_proj.weight"):
        if key in sd:
            return int(sd[key].shape[-1])
    return sum(d for _, n, d in _irrep_spec_from_heads(sd) for _ in range(n))


def _infer_pos_mode(pos_phi: np.ndarray) -> tuple[str, float, str]:
    """``(mode, scale, evidence)``; a param and a buffer look the same in a state dict."""
    if not np.any(pos_phi):
        return "none", 0.1, "pos_encoding.pos_phi is all zeros (the 'none' buffer)"
    scale = float(f"{pos_phi[0, 1]:.7g}") if pos_phi.shape[1] > 1 else 0.0  # float32 -> 0.1
    table = sinusoidal_table(pos_phi.shape[0], pos_phi.shape[1], scale)
    if scale != 0.0 and np.allclose(pos_phi, table, rtol=0, atol=1e-6 * max(1.0, abs(scale))):
        return "sinusoidal", scale, f"pos_encoding.pos_phi is the sinusoidal table, scale {scale:g}"
    return "learned", 0.1, "pos_encoding.pos_phi is neither zeros nor a sinusoidal table"


def infer_config(sd: Mapping[str, np.ndarray], training_config: Mapping | None = None
                 ) -> RecoveredConfig:
    """Infer a reference-profile :class:`ModelConfig` from a reference state dict alone.

    Read from the weights: vocab, embed dim, layers, max length, head irreps, gauge-fixed vs
    per-token embedding, tying, positional mode (and sinusoidal scale), positional embedding, layer
    norms, evolve_sigma (per-token log σ table), the historic MLP FFN.  Assumed: κ
    (train_publication's auto-scale 1.0·K/11), evolve_phi, evolve_sigma with gauge-fixed priors,
    ffn_learnable_lr, and the model defaults of settings without weights; alpha and phi_lr come from
    the checkpoint's training config when it has them.
    """
    need = ["token_embed.phi_embed.weight", "pos_encoding.pos_phi"]
    if [k for k in need if k not in sd]:
        raise ConversionError(f"cannot infer a model config: the state dict lacks "
                              f"{[k for k in need if k not in sd]} (not a reference "
                              "GaugeTransformerLM checkpoint?); fix: pass --config")
    phi, pos_phi = sd["token_embed.phi_embed.weight"], sd["pos_encoding.pos_phi"]
    if phi.shape[1] != 3:
        raise ConversionError(f"token_embed.phi_embed.weight has {phi.shape[1]} frame coordinates; "
                              "only SO(3) (3) is supported")
    k = _embed_dim_from_weights(sd)
    blocks = sorted({int(key.split(".")[2]) for key in sd if key.startswith("transformer.blocks.")})
    if not blocks or blocks != list(range(len(blocks))):
        raise ConversionError(f"transformer.blocks indices {blocks} are not 0..L-1")
    fixed = "token_embed.base_mu" in sd
    mode, scale, pos_why = _infer_pos_mode(pos_phi)
    d: dict[str, Any] = dict(
        vocab_size=int(phi.shape[0]), embed_dim=k, n_layers=len(blocks),
        max_seq_len=int(pos_phi.shape[0]), irrep_spec=_irrep_spec_from_heads(sd),
        use_multi_irrep=True,
        gauge_fixed_priors=fixed, pos_encoding_mode=mode, pos_encoding_scale=scale,
        use_positional_embedding="token_embed.pos_embed.weight" in sd,
        use_layernorm="transformer.blocks.0.norm1.weight" in sd)
    inferred = [f"vocab_size={d['vocab_size']} (token_embed.phi_embed.weight rows)",
                f"embed_dim={k} (generators / embedding widths)",
                f"n_layers={d['n_layers']} (transformer.blocks.*)",
                f"max_seq_len={d['max_seq_len']} (pos_encoding.pos_phi rows)",
                f"irrep_spec={d['irrep_spec']} (head_generators shapes)",
                f"gauge_fixed_priors={fixed} "
                f"(token_embed.base_mu {'present' if fixed else 'absent'})",
                f"pos_encoding_mode={mode!r} ({pos_why})",
                f"use_positional_embedding={d['use_positional_embedding']} (token_embed.pos_embed)",
                f"use_layernorm={d['use_layernorm']} (norm1/norm2/final_norm)"]
    assumed = []
    if fixed:
        d["tie_embeddings"] = False
        d["evolve_sigma"] = True
        assumed.append("evolve_sigma=True (gauge-fixed priors store base_log_sigma_diag either "
                       "way; train_publication's default)")
    else:
        table, out = sd.get("token_embed.mu_embed.weight"), sd.get("out_proj.weight")
        d["tie_embeddings"] = out is None or out is table or bool(np.array_equal(out, table))
        inferred.append(f"tie_embeddings={d['tie_embeddings']} (out_proj.weight "
                        f"{'absent or identical to' if d['tie_embeddings'] else 'differs from'} "
                        "token_embed.mu_embed.weight)")
        log_sigma = sd.get("token_embed.log_sigma_diag")
        d["evolve_sigma"] = log_sigma is not None and log_sigma.ndim == 2
        inferred.append(f"evolve_sigma={d['evolve_sigma']} (token_embed.log_sigma_diag shape "
                        f"{None if log_sigma is None else log_sigma.shape})")
        assumed.append("diagonal_covariance=False (cannot be told from the weights)")
    d["kappa_beta_auto_scale"], d["kappa_beta_base"], d["kappa_beta_k_ref"] = True, 1.0, 11
    assumed.append(f"kappa_beta={resolve_reference_kappa(d):.6g} (train_publication's auto-scale "
                   "1.0*K/11; κ is stored nowhere in the checkpoint)")
    d["evolve_phi"] = True
    assumed.append("evolve_phi=True (train_publication's default; no weights depend on it)")
    assumed.append("ffn_learnable_lr=True (the step size has the same key as a param or a buffer)")
    d["hidden_dim"] = 508
    assumed.append("hidden_dim=508 (train_publication's value; unused by the VFE FFN)")
    tc = dict(training_config or {})
    for key, default in (("alpha", 1.0), ("phi_lr", 0.05)):
        if tc.get(key) is not None:
            d[key] = float(tc[key])
            inferred.append(f"{key}={d[key]:g} (the checkpoint's training config)")
        else:
            d[key] = default
            assumed.append(f"{key}={default:g} (train_publication's default)")
    assumed.append("model defaults for settings without weights: use_residual=False, "
                   "mask_self_attention=False, alibi_slope=None, attention_pattern='full', "
                   "ffn_n_iterations=1, mu_normalize=False, mu_max_norm=None")
    cfg = from_reference_dict(d)
    mlp = sd.get("transformer.blocks.0.ffn.learned_ffn.0.weight")
    if mlp is not None:
        cfg = cfg.replace(ffn="mlp", hidden_dim=int(mlp.shape[0]))
        inferred.append(f"ffn='mlp', hidden_dim={mlp.shape[0]} (historic learned_ffn weights)")
    notes = [f"inferred: {n}" for n in inferred] + [f"assumed: {n}" for n in assumed]
    return RecoveredConfig(cfg, "inferred from the state dict", tuple(notes), d)


def recover_config(parts: CheckpointParts, config_file: str | os.PathLike | None = None
                   ) -> RecoveredConfig:
    """The model config of a checkpoint, in the order of the module docstring (step 2)."""
    sd = parts.state_dict
    if config_file is not None:
        return config_from_dict(read_config_file(Path(config_file)), sd, f"--config {config_file}")
    if parts.embedded_config is not None:
        source, d = parts.embedded_config
        if parts.kind == "torch.save":
            return _from_embedded(d, sd, source)
        return config_from_dict(d, sd, source)
    here = parts.path.parent
    if (here / "model_config.json").is_file():
        return config_from_dict(read_config_file(here / "model_config.json"), sd,
                                "model_config.json beside the checkpoint")
    if (here / "experiment_config.json").is_file():
        d = read_config_file(here / "experiment_config.json")
        if isinstance(d.get("config"), dict):
            return _from_experiment(d["config"], sd, "experiment_config.json beside the checkpoint")
    return infer_config(sd, parts.training_config)


# =============================================================================================
# Value checks (after the key/shape check)
# =============================================================================================


def check_values(sd: Mapping[str, np.ndarray], cfg: ModelConfig, source: str) -> None:
    """Generators, the tied output and every fixed buffer must be what ``cfg`` rebuilds.

    Raises:
      ConversionError: listing every disagreeing key.
    """
    from gaugeformer.model.common import Buffer
    from gaugeformer.model.lm import GaugeTransformerLM

    check_generators(sd, cfg)
    problems = []
    out, table = sd.get("out_proj.weight"), sd.get("token_embed.mu_embed.weight")
    if cfg.tie_embeddings and out is not None and not np.array_equal(out, table):
        problems.append("out_proj.weight differs from token_embed.mu_embed.weight but the config "
                        "ties them (tie_embeddings=True)")
    fresh = GaugeTransformerLM(cfg, rngs=nnx.Rngs(0))
    for path, value in _flat(nnx.to_pure_dict(nnx.state(fresh, Buffer))):
        key = torch_key_of(path)
        ref = np.asarray(sd[key], np.float64)
        ours = np.asarray(value, np.float64)
        if not np.allclose(ref, ours, rtol=0, atol=1e-6 * max(1.0, float(np.abs(ours).max()))):
            problems.append(f"{key} is fixed by the config (a buffer, e.g. pos_encoding_mode="
                            f"{cfg.pos_encoding_mode!r}) but the checkpoint holds other values "
                            f"(max |diff| {np.abs(ref - ours).max():.3g})")
    if problems:
        raise ConversionError(f"the checkpoint's values contradict the model config from {source}: "
                              + "; ".join(problems))


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


def _summarise_parts(parts: CheckpointParts, log: Log) -> None:
    n_opt = len((parts.optimizer or {}).get("state") or {})
    groups = [(g.get("name"), len(g["params"]))
              for g in (parts.optimizer or {}).get("param_groups", [])]
    log(f"read {parts.path} ({parts.kind}, {parts.path.stat().st_size / 1024:.0f} KiB): "
        f"{len(parts.state_dict)} state-dict entries, step {parts.step}, "
        + (f"AdamW state for {n_opt} tensors in groups {groups}" if parts.optimizer is not None
           else "no optimizer state"))


def _summarise_config(rec: RecoveredConfig, log: Log) -> None:
    c = rec.cfg
    log(f"model config: {rec.source}")
    log(f"  vocab_size={c.vocab_size} embed_dim={c.embed_dim} n_layers={c.n_layers} "
        f"max_seq_len={c.max_seq_len} irreps={c.irreps} kappa_beta={c.kappa_beta:.6g} "
        f"gauge_fixed_priors={c.gauge_fixed_priors} tie_embeddings={c.tie_embeddings} "
        f"pos_encoding_mode={c.pos_encoding_mode} evolve_sigma={c.evolve_sigma} "
        f"evolve_phi={c.evolve_phi} use_layernorm={c.use_layernorm} use_residual={c.use_residual}")
    for note in rec.notes:
        log(f"  {note}")


def convert_checkpoint(path: str | os.PathLike, *, config: str | os.PathLike | None = None,
                       include_optimizer: bool = True, log: Log = _print) -> Conversion:
    """Read, recover the config, check, build the model and map the optimizer (no writing).

    Args:
      path: the checkpoint file.
      config: optional ``--config`` file.
      include_optimizer: map the torch AdamW state when present.
      log: progress printer.
    """
    parts = read_checkpoint(path)
    _summarise_parts(parts, log)
    rec = recover_config(parts, config)
    _summarise_config(rec, log)
    check_state_dict(parts.state_dict, rec.cfg, rec.source)
    check_values(parts.state_dict, rec.cfg, rec.source)
    model = model_from_reference(parts.state_dict, rec.cfg)
    n_params = sum(int(np.size(v)) for _, v in _flat(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
    log(f"loaded {n_params} parameters into GaugeTransformerLM (profile={rec.cfg.profile}, "
        f"basis={rec.cfg.basis})")
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
        optimizer_notes=list(opt.notes) if opt else [])
    return Conversion(model, rec, opt, _jsonable(meta), parts)


def _step_of(parts: CheckpointParts, opt: ConvertedOptimizer | None) -> tuple[int, str]:
    if opt is not None:
        return opt.step, "completed AdamW updates (torch optimizer 'step')"
    if parts.step is not None:
        return parts.step, "the checkpoint's 'step' (no optimizer state)"
    return 0, "no step in the checkpoint"


# =============================================================================================
# 4. Orbax save / load
# =============================================================================================


def _write_orbax(directory: Path, step: int, items: dict[str, Any]) -> None:
    """One synchronous ``CheckpointManager`` save of ``items`` (``config``/``meta`` as JSON)."""
    import orbax.checkpoint as ocp

    for name in ("config", "meta"):
        try:
            json.dumps(items[name], allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConversionError(f"the {name} item is not plain JSON ({exc})") from None
    args = {name: (ocp.args.JsonSave(value) if name in ("config", "meta")
                   else ocp.args.StandardSave(value)) for name, value in items.items()}
    before = set(threading.enumerate())
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        create=True, enable_async_checkpointing=False))
    try:
        mngr.save(step, args=ocp.args.Composite(**args))
        mngr.wait_until_finished()
    except BaseException:
        # one failed item does not stop the writer threads of the others: let them finish, so
        # that the caller's cleanup removes everything
        for thread in set(threading.enumerate()) - before:
            thread.join(timeout=60)
        raise
    finally:
        mngr.close()


def _commit(tmp: Path, out: Path, force: bool) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` (only with ``force``) is removed after."""
    old = None
    if out.exists():
        if not force:
            raise OutputExistsError(f"{out} exists; fix: pass --force to replace it")
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def resumable_tx(optim: OptimConfig) -> optax.GradientTransformation:
    """``make_optimizer(optim)`` whose ``init`` strips the ``Param`` nodes first.

    ``nnx.Optimizer`` calls ``tx.init`` on a state of ``Param`` nodes, whose paths end in
    ``.value``, so :func:`~gaugeformer.train.optim.group_of` would put every parameter in ``ffn``;
    initialising on ``nnx.as_pure`` keeps the real groups (the trainer's ``build_optimizer`` does
    the same).
    """
    tx = make_optimizer(optim)
    return optax.GradientTransformation(lambda params: tx.init(nnx.as_pure(params)), tx.update)


def install_opt_state(optimizer: nnx.Optimizer, opt_state: Any, step: int) -> None:
    """Put a pure optax state (and the update count) into an ``nnx.Optimizer`` to resume training.

    Args:
      optimizer: ``nnx.Optimizer(model, resumable_tx(optim), wrt=nnx.Param)`` (or the trainer's
        equivalent).
      opt_state: the pure optax state (:func:`load_converted`'s third item).
      step: completed updates (``meta["step"]``).
    """
    have = jax.tree.structure(nnx.as_pure(optimizer.opt_state))
    if have != jax.tree.structure(opt_state):
        raise ConversionError("the optimizer's state does not have the converted state's structure "
                              "(another OptimConfig group layout, other parameters, or a tx whose "
                              "init sees Param nodes; build it with resumable_tx)")
    nnx.update(optimizer.opt_state, nnx.state(opt_state))
    optimizer.step[...] = step


def _optimizer_item(model: nnx.Module, opt_state: Any, optim: OptimConfig, step: int) -> dict:
    """``nnx.to_pure_dict(nnx.state(optimizer))`` of an optimizer holding ``opt_state``."""
    optimizer = nnx.Optimizer(model, resumable_tx(optim), wrt=nnx.Param)
    install_opt_state(optimizer, opt_state, step)
    return nnx.to_pure_dict(nnx.state(optimizer))


def save_converted(out_dir: str | os.PathLike, model: nnx.Module, cfg: ModelConfig, meta: dict,
                   opt_state: Any = None, *, force: bool = False) -> Path:
    """Write the orbax checkpoint described in the module docstring, atomically.

    Everything is written to ``.<name>.tmp-<id>`` beside ``out_dir`` and renamed into place; on any
    failure the temp dir is removed and ``out_dir`` is untouched.

    Args:
      out_dir: destination directory (made absolute).
      model: the model; its whole ``nnx.state`` (params and buffers) is saved.
      cfg: its config.
      meta: JSON-able metadata; ``meta["step"]`` names the orbax step, ``meta["optim"]`` (the
        :class:`OptimConfig` fields) is required with ``opt_state``.
      opt_state: optional pure optax state of ``make_optimizer(OptimConfig(**meta["optim"]))``.
      force: replace an existing ``out_dir``.

    Returns:
      The absolute output path.

    Raises:
      OutputExistsError: ``out_dir`` exists and not ``force``.
    """
    out = Path(out_dir).absolute()
    if out.exists() and not force:
        raise OutputExistsError(f"{out} exists; fix: pass --force to replace it")
    step = int(meta.get("step", 0))
    meta = {**meta, "has_opt_state": opt_state is not None}
    items = {"params": nnx.to_pure_dict(nnx.state(model)), "config": cfg.to_dict(), "meta": meta}
    if opt_state is not None:
        items["opt_state"] = _optimizer_item(model, opt_state, optim_config_of(meta), step)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        _write_orbax(tmp, step, items)
        _commit(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def optim_config_of(meta: Mapping[str, Any]) -> OptimConfig | None:
    """The :class:`OptimConfig` of a converted checkpoint's ``opt_state`` (None without one)."""
    return OptimConfig(**meta["optim"]) if meta.get("optim") else None


def load_converted(directory: str | os.PathLike, step: int | None = None
                   ) -> tuple[nnx.Module, ModelConfig, Any, dict]:
    """Load a checkpoint written by :func:`save_converted`.

    Returns:
      ``(model, cfg, opt_state | None, meta)``; ``opt_state`` is the pure optax state for
      ``make_optimizer(optim_config_of(meta))`` (``tx.update(grads, opt_state, params)`` on
      ``params = nnx.as_pure(nnx.state(model, nnx.Param))``, or :func:`install_opt_state`).
    """
    import orbax.checkpoint as ocp

    from gaugeformer.model.lm import GaugeTransformerLM

    path = Path(directory).absolute()
    if not path.is_dir():
        raise ConversionError(f"{path}: no such directory")
    mngr = ocp.CheckpointManager(path)
    try:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise ConversionError(f"{path}: no orbax checkpoint step found")
        head = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore(),
                                                          meta=ocp.args.JsonRestore()))
        cfg, meta = ModelConfig.from_dict(head.config), dict(head.meta)
        model = GaugeTransformerLM(cfg, rngs=nnx.Rngs(0))
        state = nnx.state(model)
        args = {"params": ocp.args.StandardRestore(_abstract(nnx.to_pure_dict(state)))}
        optimizer = None
        if meta.get("has_opt_state"):
            optimizer = nnx.Optimizer(model, resumable_tx(optim_config_of(meta)), wrt=nnx.Param)
            opt_tree = nnx.state(optimizer)
            args["opt_state"] = ocp.args.StandardRestore(_abstract(nnx.to_pure_dict(opt_tree)))
        restored = mngr.restore(step, args=ocp.args.Composite(**args))
    finally:
        mngr.close()
    nnx.replace_by_pure_dict(state, restored.params)
    nnx.update(model, state)
    if optimizer is None:
        return model, cfg, None, meta
    nnx.replace_by_pure_dict(opt_tree, restored.opt_state)
    nnx.update(optimizer, opt_tree)
    return model, cfg, nnx.as_pure(optimizer.opt_state), meta


def _abstract(tree):
    import orbax.checkpoint as ocp

    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


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
    from gaugeformer.convert.reference import map_torch_key
    from gaugeformer.testing import golden_to_hook

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
    from gaugeformer.loss import free_energy_loss
    from gaugeformer.model.lm import run_with_cache

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
    from gaugeformer.loss import cross_entropy

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
        save_converted(out_path, conv.model, cfg, conv.meta,
                       conv.optimizer.opt_state if conv.optimizer else None, force=force)
        items = "params, config, meta" + (", opt_state" if conv.optimizer else "")
        log(f"wrote {out_path} (orbax step {conv.meta['step']}: {items})")
        reports = []
        if golden is not None:
            model, cfg, _, _ = load_converted(out_path)
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
