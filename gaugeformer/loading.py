"""The one loader: ``gaugeformer.load(path) -> Loaded(model, config, tokenizer, meta)``.

``path`` may be:

* a PyTorch reference checkpoint file (``.pt``/``.pth``/``.ckpt``/``.safetensors``, read without
  torch): its config is ``config``, else one inside the file, else ``model_config.json`` /
  ``experiment_config.json`` beside it, else inferred from the weights
  (:func:`gaugeformer.convert.recover.recover_config`);
* a reference run directory holding ``best_model.pt``;
* a converted directory (``gaugeformer-convert``) or one checkpoint step;
* a training run directory: its ``best/`` checkpoint when there is one, else the latest in
  ``checkpoints/`` (``best/`` or ``checkpoints/`` themselves also work).

:func:`random_model` builds the untrained model the CLIs use without ``--checkpoint``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from flax import nnx

from gaugeformer import checkpoint as ckpt
from gaugeformer.config import ModelConfig
from gaugeformer.convert.recover import PT_SUFFIXES, config_from_file, load_reference
from gaugeformer.data.tokenizer import Tokenizer, default_tokenizer
from gaugeformer.model.lm import GaugeTransformerLM

__all__ = ["CheckpointLoadError", "Loaded", "irreps_for_heads", "load", "random_model"]

DEFAULT_RANDOM_SEQ_LEN = 128


class CheckpointLoadError(ValueError):
    """The checkpoint or config could not be turned into a model (the message says why and how)."""


@dataclasses.dataclass
class Loaded:
    """A model and what belongs with it.

    Attributes:
      model: the :class:`~gaugeformer.model.lm.GaugeTransformerLM`.
      config: its :class:`~gaugeformer.config.ModelConfig`.
      tokenizer: a :class:`~gaugeformer.data.tokenizer.Tokenizer` (``encode``/``decode`` model
        ids), or None when the vocabulary's tokenizer is unknown (a restricted reference vocabulary
        whose kept ids were never saved, or a random model of an odd V).
      meta: the checkpoint's metadata (``step``, ``format``, ...) and ``kind`` (``"reference"``,
        ``"converted"``, ``"trained"`` or ``"random"``) and ``description`` (one line for captions).
    """

    model: GaugeTransformerLM
    config: ModelConfig
    tokenizer: Tokenizer | None
    meta: dict[str, Any]

    @property
    def description(self) -> str:
        return str(self.meta.get("description", ""))


def _tokenizer_of(meta: dict, cfg: ModelConfig) -> Tokenizer | None:
    """The checkpoint's tokenizer record; for older trainer checkpoints the run config's
    (unrestricted) tokenizer; without either, what V implies."""
    record = meta.get("tokenizer")
    if isinstance(record, dict):
        if record.get("kept_ids") is not None:
            return Tokenizer.from_meta(record)
        kind = record.get("kind")
    else:
        data = (meta.get("run_config") or {}).get("data") or {}
        if not data:
            return default_tokenizer(cfg.vocab_size)
        kind = None if data.get("vocab_size") is not None else data.get("tokenizer")
    v = cfg.vocab_size
    if (kind == "bytes" and v >= 256) or (kind == "gpt2" and v >= 50257):
        return Tokenizer(kind, v)
    return None  # a restricted vocabulary whose kept ids were not saved


def _load_reference_file(path: Path, config: str | os.PathLike | None) -> Loaded:
    model, rec, parts = load_reference(path, config)
    meta = {"kind": "reference", "format": f"pytorch-reference ({parts.kind})",
            "source": str(path.absolute()), "step": parts.step, "config_source": rec.source,
            "config_notes": list(rec.notes), "best_val_loss": parts.best_val_loss,
            "description": f"{path.parent.name}/{path.name} (reference "
                           f"{'.pt' if parts.kind == 'torch.save' else parts.kind}, "
                           f"{rec.source.removesuffix(' beside the checkpoint')})"}
    return Loaded(model, rec.cfg, default_tokenizer(rec.cfg.vocab_size), meta)


def _run_checkpoint(path: Path) -> Path:
    """A training run directory's ``best/`` when it holds a complete step, else the path."""
    best = path / "best"
    if (path / "checkpoints").is_dir() and best.is_dir() and any(
            p.name.isdigit() and (p / "params").is_dir() for p in best.iterdir()):
        return best
    return path


def _load_orbax(path: Path, step: int | None) -> Loaded:
    target = _run_checkpoint(path)
    try:
        restored = ckpt.restore(target, step)
    except FileNotFoundError as exc:
        raise CheckpointLoadError(
            f"{path}: no checkpoint found ({exc}); fix: pass a reference .pt, a directory written "
            "by gaugeformer-convert, or a training run directory") from None
    meta = dict(restored.meta)
    converted = str(meta.get("format", "")).startswith("gaugeformer.converted")
    if converted:
        origin = Path(str(meta.get("converted_from") or "PyTorch reference")).name
        desc = f"{path.name} (converted from {origin}, step {restored.step})"
    else:
        name = path.name
        if name in ("best", "checkpoints") or name.isdigit():
            name = f"{path.parent.name}/{name}"
        which = " best" if target.name == "best" and target != path else ""
        desc = f"{name} (gaugeformer{which} checkpoint, step {restored.step})"
    meta.update(kind="converted" if converted else "trained", description=desc,
                path=str(Path(target).absolute()))
    cfg = restored.model_config
    return Loaded(ckpt.model_from_restored(restored), cfg, _tokenizer_of(meta, cfg), meta)


def load(path: str | os.PathLike, *, config: str | os.PathLike | None = None,
         step: int | None = None) -> Loaded:
    """Open any checkpoint the project knows (see the module docstring).

    Args:
      path: checkpoint file or directory.
      config: model config file (YAML/JSON) for a reference file; overrides the files beside it.
      step: the step of an orbax checkpoint (default: best, else latest).

    Raises:
      CheckpointLoadError: unusable path (the message says what to pass instead).
    """
    p = Path(path)
    if p.is_file():
        if p.suffix in PT_SUFFIXES:
            return _load_reference_file(p, config)
        raise CheckpointLoadError(f"{p}: unsupported checkpoint file (expected one of "
                                  f"{'/'.join(PT_SUFFIXES)} or a checkpoint directory)")
    if not p.is_dir():
        raise CheckpointLoadError(f"{p}: no such checkpoint file or directory")
    is_orbax = any(c.name.isdigit() for c in p.iterdir()) or (p / "params").is_dir() or any(
        (p / sub).is_dir() for sub in ("checkpoints", "best"))
    if not is_orbax and (p / "best_model.pt").is_file():
        return _load_reference_file(p / "best_model.pt", config)
    return _load_orbax(p, step)


def irreps_for_heads(embed_dim: int, n_heads: int) -> str:
    """An irreps layout of ``n_heads`` heads summing to ``embed_dim``, head sizes as equal as
    SO(3) allows (every head is an irrep of odd dimension 2ℓ+1).

    >>> irreps_for_heads(256, 4)
    '2x31e+2x32e'
    """
    if n_heads < 1 or embed_dim < n_heads or (embed_dim - n_heads) % 2:
        raise ValueError(
            f"--embedding-dimension {embed_dim} cannot be split into {n_heads} heads of odd "
            f"dimension (2l+1); fix: use an embedding dimension of the same parity as the head "
            f"count, e.g. {embed_dim + 1 if (embed_dim - n_heads) % 2 else n_heads}")
    dims = [1 + 2 * ((embed_dim - n_heads) // 2 // n_heads)] * n_heads
    for i in range(((embed_dim - n_heads) // 2) % n_heads):
        dims[-1 - i] += 2
    counts: dict[int, int] = {}
    for d in dims:
        counts[d] = counts.get(d, 0) + 1
    return "+".join(f"{n}x{(d - 1) // 2}e" for d, n in sorted(counts.items()))


def random_model(config: str | os.PathLike | ModelConfig | None = None, *,
                 vocab_size: int = 50257, seed: int = 0, embed_dim: int | None = None,
                 n_heads: int | None = None, n_layers: int | None = None) -> Loaded:
    """An untrained model: ``config`` (file or ``ModelConfig``), else a small default.

    ``embed_dim``/``n_heads``/``n_layers`` (seed 004's flags) override the default's; the heads
    become an irreps layout (:func:`irreps_for_heads`), stated in the description.
    """
    if isinstance(config, ModelConfig):
        cfg, what = config, "given config"
    elif config is not None:
        cfg, what = config_from_file(config).cfg, f"config {Path(config).name}"
    else:
        cfg = ModelConfig(vocab_size=int(vocab_size), embed_dim=11, n_layers=2,
                          max_seq_len=DEFAULT_RANDOM_SEQ_LEN, irreps="3x0e+1x1e+1x2e",
                          kappa_beta=1.0)
        what = "small default config"
    changes: dict[str, Any] = {}
    if embed_dim is not None or n_heads is not None:
        k = embed_dim or cfg.embed_dim
        changes.update(embed_dim=k, irreps=irreps_for_heads(k, n_heads or cfg.n_heads))
    if n_layers is not None:
        changes["n_layers"] = n_layers
    if changes:
        cfg = cfg.replace(**changes)
        what += ", " + " ".join(f"{k}={v}" for k, v in changes.items())
    meta = {"kind": "random", "step": 0, "description": f"random weights ({what}, seed {seed})"}
    return Loaded(GaugeTransformerLM(cfg, rngs=nnx.Rngs(seed)), cfg,
                  default_tokenizer(cfg.vocab_size), meta)
