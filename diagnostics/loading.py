"""One entry point that turns whatever the user points the diagnostics scripts at into a model.

:func:`load_any_checkpoint` accepts:

* ``None``: random weights. The config is ``config`` (a YAML/JSON file, see below) or a small
  default (:func:`gaugeformer.testing.tiny_config` with ``max_seq_len`` 128); the description
  says "random weights".
* a PyTorch reference ``.pt``/``.pth``/``.ckpt`` file (read without torch). Its model config is,
  first match wins: ``config``; ``model_config.json`` beside it; ``experiment_config.json``
  beside it (whose ``config`` is written before the vocabulary is set, so V comes from the
  weights).
* a directory: an orbax checkpoint converted by ``scripts/convert_checkpoint.py``
  (``gaugeformer.convert.convert.load_converted``), a native trainer checkpoint
  (``gaugeformer.train.checkpoint``, when that module exists), or a reference run directory that
  holds ``best_model.pt``.

Config files (``config``) may hold a gaugeformer ``ModelConfig`` dict, a run config with a
``model:`` section (``configs/*.yaml``), a reference model-config dict (``embed_dim``,
``irrep_spec``...) or a reference ``experiment_config.json``.

Optional modules are imported lazily; a missing one gives a :class:`CheckpointLoadError` that says
what is missing and what to do instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from flax import nnx

from gaugeformer.config import ModelConfig, from_reference_dict

__all__ = ["CheckpointLoadError", "load_any_checkpoint", "model_config_from_file",
           "model_config_from_dict"]

PT_SUFFIXES = (".pt", ".pth", ".ckpt")
DEFAULT_RANDOM_SEQ_LEN = 128


class CheckpointLoadError(ValueError):
    """The checkpoint or config could not be turned into a model (the message says why and how)."""


def _read_mapping(path: Path) -> dict[str, Any]:
    from gaugeformer.convert.convert import ConversionError, read_config_file

    if not path.is_file():
        raise CheckpointLoadError(f"{path}: no such config file")
    try:
        return read_config_file(path)
    except ConversionError as exc:
        raise CheckpointLoadError(str(exc)) from None


def _vocab_from_weights(state_dict: dict | None) -> int | None:
    for key in ("token_embed.phi_embed.weight", "token_embed.mu_embed.weight"):
        if state_dict is not None and key in state_dict:
            return int(state_dict[key].shape[0])
    return None


def model_config_from_dict(d: dict[str, Any], *, source: str = "config",
                           state_dict: dict | None = None) -> ModelConfig:
    """Interprets a config mapping of any supported kind (module docstring).

    Args:
        d: the mapping.
        source: where it came from (for messages).
        state_dict: reference weights, used for the vocabulary when the dict has none.

    Returns:
        The model config.
    """
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    if isinstance(d.get("model"), dict):  # run config (configs/*.yaml)
        from gaugeformer.train.config import build_run_config

        return build_run_config(d).model
    if isinstance(d.get("config"), dict) and "embed_dim" in d["config"]:  # experiment_config.json
        return from_reference_dict(d["config"], vocab_size=_vocab_from_weights(state_dict))
    if "irreps" in d or ("profile" in d and set(d) <= names | {"irrep_spec"}):
        return ModelConfig.from_dict(d)
    if "embed_dim" in d and "irrep_spec" in d:  # reference model_config.json
        vocab = _vocab_from_weights(state_dict)
        if vocab is None and d.get("vocab_size") is None:
            raise CheckpointLoadError(f"{source}: no vocab_size")
        return from_reference_dict(d, vocab_size=vocab)
    raise CheckpointLoadError(
        f"{source}: not a model config (expected gaugeformer keys such as 'irreps', a run config "
        "with a 'model' section, or reference keys 'embed_dim' and 'irrep_spec')")


def model_config_from_file(path: str | os.PathLike[str], *,
                           state_dict: dict | None = None) -> ModelConfig:
    """:func:`model_config_from_dict` of a YAML/JSON file."""
    p = Path(path)
    return model_config_from_dict(_read_mapping(p), source=str(p), state_dict=state_dict)


def _random_model(config: str | os.PathLike[str] | None, vocab_size_hint: int | None,
                  seed: int) -> tuple[nnx.Module, ModelConfig, str]:
    from gaugeformer.model.lm import GaugeTransformerLM
    from gaugeformer.testing import tiny_config

    if config is not None:
        cfg = model_config_from_file(config)
        what = f"config {Path(config).name}"
    else:
        cfg = tiny_config(vocab_size=int(vocab_size_hint or 50257),
                          max_seq_len=DEFAULT_RANDOM_SEQ_LEN)
        what = "tiny default config"
    desc = f"random weights ({what}, seed {seed})"
    return GaugeTransformerLM(cfg, rngs=nnx.Rngs(seed)), cfg, desc


def _load_pt(path: Path, config: str | os.PathLike[str] | None
             ) -> tuple[nnx.Module, ModelConfig, str]:
    from gaugeformer.convert.reference import check_state_dict, model_from_reference
    from gaugeformer.convert.torch_pt import load_pt, split_checkpoint

    sd = split_checkpoint(load_pt(path))["model_state_dict"]
    if config is not None:
        cfg, src = model_config_from_file(config, state_dict=sd), Path(config).name
    elif (path.parent / "model_config.json").is_file():
        src = "model_config.json"
        cfg = model_config_from_file(path.parent / src, state_dict=sd)
    elif (path.parent / "experiment_config.json").is_file():
        src = "experiment_config.json"
        cfg = model_config_from_file(path.parent / src, state_dict=sd)
    else:
        raise CheckpointLoadError(
            f"{path}: no model config; pass --config, put the run's model_config.json or "
            "experiment_config.json beside it, or convert it with scripts/convert_checkpoint.py "
            "(which can infer one) and pass the converted directory")
    check_state_dict(sd, cfg, src)
    model = model_from_reference(sd, cfg)
    return model, cfg, f"{path.parent.name}/{path.name} (reference .pt, {src})"


def _orbax_format(directory: Path) -> str | None:
    """``meta["format"]`` of the newest step of an orbax checkpoint directory, if readable."""
    steps = sorted((p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()),
                   key=lambda p: int(p.name))
    for step in reversed(steps):
        meta = step / "meta" / "metadata"
        if meta.is_file():
            try:
                return str(json.loads(meta.read_text()).get("format"))
            except (json.JSONDecodeError, AttributeError):
                return None
    return None


def _load_converted(directory: Path) -> tuple[nnx.Module, ModelConfig, str]:
    try:
        from gaugeformer.convert.convert import load_converted
    except ImportError as exc:
        raise CheckpointLoadError(
            f"{directory}: looks like a converted checkpoint, but gaugeformer.convert.convert "
            f"cannot be imported ({exc})") from None
    model, cfg, _, meta = load_converted(directory)
    origin = meta.get("converted_from") or meta.get("source") or "PyTorch reference"
    desc = f"{directory.name} (converted from {Path(str(origin)).name}, step {meta.get('step')})"
    return model, cfg, desc


def _load_native(directory: Path) -> tuple[nnx.Module, ModelConfig, str]:
    try:
        from gaugeformer.train.checkpoint import load_model
    except ImportError:
        raise CheckpointLoadError(
            f"{directory}: not a converted checkpoint, and native trainer checkpoints need "
            "gaugeformer.train.checkpoint, which is not available in this checkout; "
            "pass a reference .pt or a directory written by scripts/convert_checkpoint.py"
        ) from None
    try:
        model, meta = load_model(directory)
    except FileNotFoundError as exc:
        raise CheckpointLoadError(f"{directory}: no checkpoint found ({exc})") from None
    name = directory.name
    if name in ("best", "checkpoints") or name.isdigit():
        name = f"{directory.parent.name}/{name}"
    return model, model.cfg, f"{name} (gaugeformer checkpoint, step {meta.get('step')})"


def load_any_checkpoint(
    path: str | os.PathLike[str] | None,
    *,
    config: str | os.PathLike[str] | None = None,
    vocab_size_hint: int | None = None,
    seed: int = 0,
) -> tuple[nnx.Module, ModelConfig, str]:
    """Loads a model from a reference ``.pt``, a converted/native directory, or random weights.

    Args:
        path: checkpoint file or directory; ``None`` for random weights.
        config: model config file (YAML/JSON; see the module docstring). For random weights it
            defines the model; for a ``.pt`` it overrides the config files beside it.
        vocab_size_hint: vocabulary of the tiny default config (random weights without
            ``config``); default 50257 (GPT-2).
        seed: initialisation seed for random weights.

    Returns:
        ``(model, cfg, description)``; the description names the checkpoint and the config
        source, or says "random weights".

    Raises:
        CheckpointLoadError: unusable path or config (the message says what to do).
    """
    if path is None:
        return _random_model(config, vocab_size_hint, seed)
    p = Path(path)
    if p.is_file():
        if p.suffix in PT_SUFFIXES:
            return _load_pt(p, config)
        raise CheckpointLoadError(
            f"{p}: unsupported checkpoint file (expected {'/'.join(PT_SUFFIXES)}; convert "
            ".safetensors files with scripts/convert_checkpoint.py)")
    if not p.is_dir():
        raise CheckpointLoadError(f"{p}: no such checkpoint file or directory")
    fmt = _orbax_format(p)
    if fmt is not None and fmt.startswith("gaugeformer.converted"):
        return _load_converted(p)
    if fmt is None and (p / "best_model.pt").is_file():
        return _load_pt(p / "best_model.pt", config)
    return _load_native(p)
