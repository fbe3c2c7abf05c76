"""Read a PyTorch reference checkpoint and recover its model config: the one config interpreter.

:func:`config_from_dict` interprets every kind of config mapping the project meets (a gaugeformer
``ModelConfig`` dict, a run config with a ``model:`` section, a reference model-config dict, a
reference ``experiment_config.json``); :func:`recover_config` finds the config of a checkpoint file
(see :mod:`gaugeformer.convert.convert`, step 2, for the order); :func:`load_reference` is read +
recover + check + build, shared by the converter and :func:`gaugeformer.load`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from flax import nnx

from gaugeformer.config import ModelConfig, from_reference_dict, resolve_reference_kappa
from gaugeformer.convert.reference import (
    _flat,
    check_generators,
    check_state_dict,
    model_from_reference,
    torch_key_of,
)
from gaugeformer.convert.torch_pt import load_pt, load_safetensors, split_checkpoint
from gaugeformer.model.common import Buffer
from gaugeformer.model.lm import GaugeTransformerLM
from gaugeformer.ops.positional import sinusoidal_table
from gaugeformer.train.config import build_run_config

Log = Callable[[str], None]
PT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")

# What the reference's evaluate_checkpoint.py assumes for keys an embedded model config lacks.
EVALUATOR_DEFAULTS: dict[str, Any] = dict(
    max_seq_len=40, n_layers=2, kappa_beta=1.0, pos_encoding_mode="learned", evolve_sigma=False,
    evolve_phi=False, tie_embeddings=True, irrep_spec=[("ℓ0", 5, 1), ("ℓ1", 2, 3)])
_SAFETENSORS_CONFIG_KEYS = ("model_config", "config", "gaugeformer_config")


class ConversionError(ValueError):
    """A checkpoint cannot be converted (config missing or contradicting the weights, ...)."""


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


def require_yaml_or_json(path: str | os.PathLike) -> Path:
    """``path`` if it names a YAML/JSON file; a Python config (seed 000's ``--config
    transformer/config.py``) or other text is refused with the way to convert it."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml", ".json"):
        raise ConversionError(
            f"{path}: config files are YAML or JSON only (got {path.suffix or 'no suffix'}); fix: "
            "write the settings as a mapping, e.g. python -c 'import json; from m import cfg; "
            "print(json.dumps(cfg))' > config.json, or start from configs/tiny.yaml")
    return path


def read_config_file(path: str | os.PathLike) -> dict:
    """A YAML/JSON mapping (see :func:`require_yaml_or_json`)."""
    path = require_yaml_or_json(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such config file")
    text = path.read_text()
    if Path(path).suffix in (".yaml", ".yml"):
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


def _vocab_from_weights(sd: Mapping[str, np.ndarray] | None) -> int:
    if sd is None or "token_embed.phi_embed.weight" not in sd:
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


def config_from_dict(d: dict, sd: Mapping | None = None, source: str = "config"
                     ) -> RecoveredConfig:
    """Interpret a config mapping of any supported kind: the project's one config interpreter.

    Args:
      d: a gaugeformer ``ModelConfig`` dict, a run config (``model:`` section, ``configs/*.yaml``),
        a reference model-config dict or a reference ``experiment_config.json``.
      sd: reference weights, for what the dict lacks (the vocabulary); None without weights.
      source: where ``d`` came from (for messages and notes).
    """
    if isinstance(d.get("model"), dict):  # run config (configs/*.yaml)
        return RecoveredConfig(build_run_config(d).model, f"{source} (model section)")
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


def config_from_file(path: str | os.PathLike, sd: Mapping | None = None) -> RecoveredConfig:
    """:func:`config_from_dict` of a YAML/JSON file."""
    return config_from_dict(read_config_file(path), sd, str(path))


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



def _quiet(msg: str) -> None:
    del msg


def echo(msg: str) -> None:
    """The converter's console log: print and flush."""
    print(msg, flush=True)


def load_reference(path: str | os.PathLike, config: str | os.PathLike | None = None,
                   log: Log = _quiet) -> tuple[GaugeTransformerLM, RecoveredConfig, CheckpointParts]:
    """Read a reference checkpoint file, recover and check its config, and build the model.

    Args:
      path: ``.pt``/``.pth``/``.ckpt`` (torch.save) or ``.safetensors``.
      config: optional config file overriding the recovery order.
      log: progress printer (silent by default).

    Returns:
      ``(model, recovered config, checkpoint parts)``.
    """
    parts = read_checkpoint(path)
    n_opt = len((parts.optimizer or {}).get("state") or {})
    groups = [(g.get("name"), len(g["params"]))
              for g in (parts.optimizer or {}).get("param_groups", [])]
    log(f"read {parts.path} ({parts.kind}, {parts.path.stat().st_size / 1024:.0f} KiB): "
        f"{len(parts.state_dict)} state-dict entries, step {parts.step}, "
        + (f"AdamW state for {n_opt} tensors in groups {groups}" if parts.optimizer is not None
           else "no optimizer state"))
    rec = recover_config(parts, config)
    c = rec.cfg
    log(f"model config: {rec.source}")
    log(f"  vocab_size={c.vocab_size} embed_dim={c.embed_dim} n_layers={c.n_layers} "
        f"max_seq_len={c.max_seq_len} irreps={c.irreps} kappa_beta={c.kappa_beta:.6g} "
        f"gauge_fixed_priors={c.gauge_fixed_priors} tie_embeddings={c.tie_embeddings} "
        f"pos_encoding_mode={c.pos_encoding_mode} evolve_sigma={c.evolve_sigma} "
        f"evolve_phi={c.evolve_phi} use_layernorm={c.use_layernorm} use_residual={c.use_residual}")
    for note in rec.notes:
        log(f"  {note}")
    check_state_dict(parts.state_dict, rec.cfg, rec.source)
    check_values(parts.state_dict, rec.cfg, rec.source)
    model = model_from_reference(parts.state_dict, rec.cfg)
    n_params = sum(int(np.size(v)) for _, v in _flat(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
    log(f"loaded {n_params} parameters into GaugeTransformerLM (profile={rec.cfg.profile}, "
        f"basis={rec.cfg.basis})")
    return model, rec, parts
