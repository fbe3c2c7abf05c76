"""Run configuration: one YAML file per run, validated into frozen dataclasses.

A run file has five sections that mirror :class:`RunConfig`::

    model: {embed_dim: 11, irreps: "3x0e+1x1e+1x2e", n_layers: 1, kappa_beta: 1.0}  # ModelConfig
    data:  {dataset: embedded, tokenizer: gpt2, vocab_size: 2048, seq_len: 64, batch_size: 16}
    optim: {mu_lr: 0.2, phi_lr: 0.05, ffn_lr: 0.2, warmup_steps: 25}                  # OptimConfig
    train: {steps: 300, eval_every: 100, checkpoint_every: 100}
    log:   {log_every: 10, attention_figures: true}

:func:`load_run_config` reads the file, applies dotted overrides (``train.steps=200``,
``model.kappa_beta=0.5``; values are parsed as YAML, so ``null``, ``true``, ``[1, 2]`` work), and
validates: an unknown section or key is an error that lists the valid ones, a value of the wrong
type is an error that names ``section.key``, and the sections are checked against each other.

Derived defaults (filled in when the key is absent or ``null``):

* ``model.vocab_size``: ``data.vocab_size`` if set, else the tokenizer's (GPT-2: 50257, bytes: 256).
  A ``model.vocab_size`` below the tokenizer's restricts the vocabulary like the reference does.
* ``model.max_seq_len``: ``data.seq_len``.
* ``optim.max_steps`` (length of the cosine schedule, in updates): ``train.steps`` divided by
  ``optim.accumulate_steps`` (rounded up).
"""

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from gaugeformer.config import ModelConfig
from gaugeformer.train.optim import OptimConfig

DATASETS = ("embedded", "wikitext-2", "wikitext-103")
TOKENIZERS = ("gpt2", "bytes")
TOKENIZER_VOCAB = {"gpt2": 50257, "bytes": 256}
BEST_METRICS = ("eval/ce", "eval/loss_total")
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """An invalid run configuration (the message names the offending ``section.key``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class DataConfig:
    """Corpus, tokenizer and batch shape.

    Attributes:
      dataset: ``embedded`` (Botchan, shipped, no network), ``wikitext-2`` or ``wikitext-103``.
      tokenizer: ``gpt2`` (offline tiktoken BPE) or ``bytes`` (UTF-8 bytes, V=256).
      vocab_size: restrict to the most frequent ids (reference rule); ``None`` = full vocabulary.
      seq_len: N, tokens per training window (stride-1 windows, shuffled).
      batch_size: global batch B (split over the ``data`` mesh axis).
      eval_batch_size: batch of the evaluation pass (default: ``batch_size``).
      max_eval_batches: score only the first batches of the validation split (``None`` = all).
      val_fraction: validation share of the embedded corpus.
      train_files / validation_files: local WikiText-format files instead of the hub dataset.
      cache_dir: token ``.npy`` cache (default ``$GAUGEFORMER_DATA_CACHE`` or ``~/.cache/...``).
      hf_cache_dir: ``datasets`` cache directory.
      shuffle_seed: seed of the per-epoch window order.
      fixed_sequence: validation window (``tokens[w*N : (w+1)*N]``) drawn in attention figures.
    """

    dataset: str = "embedded"
    tokenizer: str = "gpt2"
    vocab_size: int | None = None
    seq_len: int = 64
    batch_size: int = 16
    eval_batch_size: int | None = None
    max_eval_batches: int | None = None
    val_fraction: float = 0.1
    train_files: tuple[str, ...] | None = None
    validation_files: tuple[str, ...] | None = None
    cache_dir: str | None = None
    hf_cache_dir: str | None = None
    shuffle_seed: int = 0
    fixed_sequence: int = 0

    def __post_init__(self):
        _choice("data.dataset", self.dataset, DATASETS)
        _choice("data.tokenizer", self.tokenizer, TOKENIZERS)
        _at_least("data.seq_len", self.seq_len, 2)
        _at_least("data.batch_size", self.batch_size, 1)
        _at_least("data.eval_batch_size", self.eval_batch_size, 1)
        _at_least("data.max_eval_batches", self.max_eval_batches, 1)
        _at_least("data.vocab_size", self.vocab_size, 2)
        _at_least("data.fixed_sequence", self.fixed_sequence, 0)
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if (self.train_files is None) != (self.validation_files is None):
            raise ConfigError("data.train_files and data.validation_files go together")
        if self.train_files is not None and self.dataset == "embedded":
            raise ConfigError("data.train_files needs data.dataset wikitext-2 or wikitext-103")

    @property
    def eval_batch(self) -> int:
        """Evaluation batch size."""
        return self.eval_batch_size or self.batch_size

    @property
    def data_files(self) -> dict[str, tuple[str, ...]] | None:
        """``{"train": ..., "validation": ...}`` for
        :func:`~gaugeformer.data.corpus.load_wikitext`."""
        if self.train_files is None:
            return None
        return {"train": self.train_files, "validation": self.validation_files}


@dataclasses.dataclass(frozen=True, slots=True)
class TrainConfig:
    """Loop length, loss weights, evaluation and checkpoint cadence.

    Attributes:
      steps: optimizer steps of the run (a rerun on the same workdir continues up to it).
      seed: model initialisation seed.
      lambda_beta: belief-alignment weight λ_β (the reference's ``beta``).
      alpha: self-consistency weight (``None``: ``model.alpha``, as the reference shares it).
      eval_every: evaluate (whole validation split) every this many steps, and at the end.
      eval_at_start: also evaluate the initial model (step 0) of a fresh run.
      checkpoint_every: save every this many steps, at the end and on Ctrl-C.
      keep_checkpoints: latest checkpoints kept under ``checkpoints/``.
      keep_best: also keep the best evaluation in ``best/``.
      best_metric: ``eval/ce`` or ``eval/loss_total`` (lower is better).
      async_checkpointing: write checkpoints in a background thread.
      distributed: call ``jax.distributed.initialize()`` first (multi-host; see README).
      stop_on_nonfinite: stop at the first NaN/inf in the loss, a gradient or an activation.
      init_from: checkpoint (run dir, ``checkpoints/`` or a step dir; e.g. a converted reference
        checkpoint) that a fresh run starts from: params, and optimizer state and step if stored.
      profile_steps: ``[first, last]``: a ``jax.profiler`` trace of train steps first…last
        (1-based, inclusive) in ``<workdir>/profile/`` (``None``: no trace).
    """

    steps: int = 300
    seed: int = 0
    lambda_beta: float = 1.0
    alpha: float | None = None
    eval_every: int = 100
    eval_at_start: bool = False
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    keep_best: bool = True
    best_metric: str = "eval/ce"
    async_checkpointing: bool = True
    distributed: bool = False
    stop_on_nonfinite: bool = True
    init_from: str | None = None
    profile_steps: tuple[int, ...] | None = None

    def __post_init__(self):
        for name in ("steps", "eval_every", "checkpoint_every", "keep_checkpoints"):
            _at_least(f"train.{name}", getattr(self, name), 1)
        _choice("train.best_metric", self.best_metric, BEST_METRICS)
        span = self.profile_steps
        if span is not None and not (len(span) == 2 and 1 <= span[0] <= span[1]):
            raise ConfigError(f"train.profile_steps={list(span)}: expected [first, last] with "
                              "1 <= first <= last (1-based train steps)")


@dataclasses.dataclass(frozen=True, slots=True)
class LogConfig:
    """What is written where (all under the workdir).

    Attributes:
      log_every: a training row in ``metrics.jsonl`` every this many steps.
      progress: tqdm progress bar (loss, PPL, tokens/s).
      csv: also write ``metrics.csv`` (one row per logged step, eval columns merged).
      curves: loss / PPL curves ``curves.png`` at each evaluation.
      attention_figures: per-layer, per-head attention figures of the fixed validation sequence
        (``attention/step_XXXXXX/``) and the row_std table at each evaluation.
      console_diagnostics: print the diversity line and the row_std table at evaluations.
      tensorboard: also write every ``metrics.jsonl`` scalar to ``<workdir>/tensorboard/``
        (needs ``tensorboardX``: ``pip install 'gaugeformer[tensorboard]'``).
    """

    log_every: int = 10
    progress: bool = True
    csv: bool = True
    curves: bool = True
    attention_figures: bool = True
    console_diagnostics: bool = True
    tensorboard: bool = False

    def __post_init__(self):
        _at_least("log.log_every", self.log_every, 1)


SECTION_TYPES: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "log": LogConfig,
}


@dataclasses.dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything one training run needs (see the module docstring for the YAML layout)."""

    model: ModelConfig
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)

    def __post_init__(self):
        if self.data.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len="
                f"{self.model.max_seq_len}"
            )
        vocab = effective_vocab(self.data)
        if self.model.vocab_size != vocab:
            raise ConfigError(
                f"model.vocab_size={self.model.vocab_size} does not match the data vocabulary "
                f"{vocab} (tokenizer {self.data.tokenizer!r}, data.vocab_size="
                f"{self.data.vocab_size}); leave model.vocab_size out to derive it"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-serialisable) that :meth:`from_dict` reads back."""
        return {name: _section_dict(getattr(self, name)) for name in SECTION_TYPES}

    def to_yaml(self) -> str:
        """The resolved configuration as YAML."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RunConfig":
        """Validate a nested dict (unknown sections / keys are errors)."""
        return build_run_config(raw)

    def replace(self, **sections) -> "RunConfig":
        """Copy with whole sections replaced."""
        return dataclasses.replace(self, **sections)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def load_run_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML run file, apply ``section.key=value`` overrides, validate.

    Args:
      path: YAML file.
      overrides: dotted assignments such as ``"train.steps=200"``.

    Returns:
      The validated :class:`RunConfig`.

    Raises:
      ConfigError: unknown keys, wrong types, inconsistent sections (message names the key).
      FileNotFoundError: ``path`` does not exist.
    """
    text = Path(path).read_text(encoding="utf-8")
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return build_run_config(apply_overrides(raw, overrides))


def parse_override(item: str) -> tuple[str, str, Any]:
    """``"train.steps=200"`` -> ``("train", "steps", 200)`` (the value is parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.key=value")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(
            f"override {item!r}: the key must be section.key, the section one of "
            f"{list(SECTION_TYPES)}"
        )
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from err
    return parts[0], parts[1], parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of ``raw`` with the dotted overrides applied (keys checked later)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for item in overrides:
        section, key, value = parse_override(item)
        _check_section(section)
        if out.get(section) is None:
            out[section] = {}
        out[section][key] = value
    return out


def build_run_config(raw: dict[str, Any]) -> RunConfig:
    """Nested dict -> :class:`RunConfig`, filling the derived defaults (module docstring)."""
    for section in raw:
        _check_section(section)
    if raw.get("model") is None:
        raise ConfigError("the model section is required")
    sections = {}
    for name in ("data", "train", "log"):
        sections[name] = _build_section(name, raw.get(name) or {})
    model_raw = dict(raw["model"])
    if "irrep_spec" in model_raw and "irreps" not in model_raw:
        model_raw["irreps"] = model_raw.pop("irrep_spec")
    if model_raw.get("vocab_size") is None:
        model_raw["vocab_size"] = effective_vocab(sections["data"])
    elif sections["data"].vocab_size is None:
        restricted = int(model_raw["vocab_size"]) < TOKENIZER_VOCAB[sections["data"].tokenizer]
        if restricted:
            sections["data"] = dataclasses.replace(
                sections["data"], vocab_size=int(model_raw["vocab_size"])
            )
    if model_raw.get("max_seq_len") is None:
        model_raw["max_seq_len"] = sections["data"].seq_len
    if isinstance(model_raw.get("irreps"), list):
        model_raw["irreps"] = [tuple(e) if isinstance(e, list) else e for e in model_raw["irreps"]]
    sections["model"] = _build_section("model", model_raw)
    optim_raw = dict(raw.get("optim") or {})
    derive_max = optim_raw.get("max_steps") is None
    if derive_max:
        optim_raw["max_steps"] = sections["train"].steps
    sections["optim"] = _build_section("optim", optim_raw)
    if derive_max:  # the schedule counts updates: one per optim.accumulate_steps batches
        updates = math.ceil(sections["train"].steps / sections["optim"].accumulate_steps)
        sections["optim"] = dataclasses.replace(sections["optim"], max_steps=updates)
    return RunConfig(**sections)


def effective_vocab(data: DataConfig) -> int:
    """Model vocabulary implied by the data section (restriction only below the tokenizer's)."""
    full = TOKENIZER_VOCAB[data.tokenizer]
    return full if data.vocab_size is None else min(int(data.vocab_size), full)


def valid_keys(section: str) -> list[str]:
    """Field names of a section (what the YAML may contain)."""
    keys = [f.name for f in dataclasses.fields(SECTION_TYPES[section])]
    return keys + (["irrep_spec"] if section == "model" else [])


# ----------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------


def _check_section(section: str) -> None:
    if section not in SECTION_TYPES:
        raise ConfigError(f"unknown section {section!r}; valid sections: {list(SECTION_TYPES)}")


def _build_section(section: str, raw: Any):
    """Type-check and coerce ``raw`` against the section's dataclass, then construct it."""
    cls = SECTION_TYPES[section]
    if not isinstance(raw, dict):
        raise ConfigError(f"section {section!r} must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {[f'{section}.{k}' for k in unknown]}; valid keys of {section!r}: "
            f"{sorted(fields)}"
        )
    missing = [n for n, f in fields.items() if n not in raw and _required(f)]
    if missing:
        raise ConfigError(f"missing required key(s) {[f'{section}.{k}' for k in missing]}")
    values = {k: _coerce(f"{section}.{k}", v, fields[k].type) for k, v in raw.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{section}: {err}") from err


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field annotation; ints become floats where floats are wanted."""
    if annotation is Any or annotation is typing.Any:  # model.irreps: a string or a list
        if not isinstance(value, (str, list, tuple)):
            raise ConfigError(f"{key}: expected a string or a list, got {value!r}")
        return value
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, arg)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of "
                          f"{[_type_name(a) for a in args]}")
    if origin is tuple:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(key, v, args[0]) for v in items)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _type_name(t: Any) -> str:
    return "null" if t is type(None) else getattr(t, "__name__", str(t))


def _choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r}: expected one of {list(choices)}")


def _at_least(key: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise ConfigError(f"{key} must be >= {low}, got {value}")


def _section_dict(obj: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out
