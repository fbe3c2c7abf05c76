"""The reference's torch AdamW state -> the optax state of ``train.optim.make_optimizer``.

Torch side (``optimizer.state_dict()`` as :func:`~gaugeformer.convert.torch_pt.load_pt` reads it)::

    {"state": {id: {"step": 300.0, "exp_avg": array, "exp_avg_sq": array}, ...},
     "param_groups": [{"name": "phi_embed", "params": [0, 1], "initial_lr": 0.05, "lr": ...,
                       "weight_decay": 0.0, "betas": (0.9, 0.999), "eps": 1e-8, ...}, ...]}

Ids number the trainable parameters group after group; inside a group they follow
``model.named_parameters()``, i.e. the state-dict order without buffers and without the tied
duplicate ``out_proj.weight``.  ``state`` is empty until the first ``optimizer.step()``.

Optax side: ``chain(clip, multi_transform({label: adamw}))``; each label's ``MaskedState`` holds
``(ScaleByAdamState(count, mu, nu), EmptyState(), ScaleByScheduleState(count))`` over the whole
parameter tree, with ``MaskedNode`` for the other labels' leaves.  The mapping is exact:

* torch group ``mu_embed``/``phi_embed``/``ffn``/``output`` -> optax label ``mu``/``phi``/``ffn``/
  ``output`` (checked parameter by parameter against :func:`~gaugeformer.train.optim.group_of`);
* ``exp_avg``/``exp_avg_sq`` -> ``mu``/``nu``; torch ``step`` (completed updates) -> both counts, so
  the next update uses bias corrections ``1 - b^(step+1)`` and the schedule factor at ``step``, as
  torch's ``AdamW`` + ``LambdaLR`` do;
* :class:`~gaugeformer.train.optim.OptimConfig` lrs from the groups' ``initial_lr`` (``lr`` without
  a scheduler), ``weight_decay`` from the ``ffn`` group, betas/eps from the groups, and
  ``grad_clip``, ``warmup_steps``, ``max_steps`` from the checkpoint's training config when present.

Whatever cannot be represented (AMSGrad, ``maximize``, per-group betas, an ``output`` lr different
from ``ffn``'s, decay outside ``ffn``, groups the model cannot reproduce) is an
:class:`OptimizerConversionError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gaugeformer.config import ModelConfig
from gaugeformer.convert.reference import map_torch_key
from gaugeformer.train.optim import OptimConfig, group_of, make_optimizer

TORCH_GROUP_TO_LABEL = {"mu_embed": "mu", "phi_embed": "phi", "ffn": "ffn", "output": "output"}


class OptimizerConversionError(ValueError):
    """The torch optimizer state cannot be expressed as the gaugeformer optax state."""


@dataclasses.dataclass(frozen=True)
class ConvertedOptimizer:
    """Result of :func:`torch_adamw_to_optax`.

    Attributes:
      opt_state: ``make_optimizer(optim).init(params)`` with the torch moments and counts filled in.
      optim: the optimiser hyper-parameters recovered from the torch groups.
      step: completed optimizer updates (torch's ``step``; 0 when ``state`` is empty).
      groups: ``{label: number of parameters}``.
      notes: what was derived or assumed, for the conversion summary.
    """

    opt_state: Any
    optim: OptimConfig
    step: int
    groups: dict[str, int]
    notes: tuple[str, ...]


def trainable_parameters(state_dict: Mapping[str, Any], cfg: ModelConfig,
                         param_paths: set[tuple]) -> list[tuple[str, tuple]]:
    """``(torch key, gaugeformer path)`` of each trainable parameter, ``named_parameters()`` order.

    Args:
      state_dict: the reference state dict (its key order is the module order).
      cfg: the model config (decides the tied ``out_proj``).
      param_paths: paths of the model's ``nnx.Param`` leaves (buffers sharing a key are excluded).
    """
    out = []
    for key in state_dict:
        path = map_torch_key(key)
        if path is None or path not in param_paths:
            continue
        if cfg.tie_embeddings and path == ("out_proj",):
            continue
        out.append((key, path))
    return out


def _group_lr(group: Mapping[str, Any]) -> float:
    return float(group["initial_lr"] if group.get("initial_lr") is not None else group["lr"])


def _check_group_flags(groups: list[Mapping[str, Any]]) -> tuple[float, float, float]:
    """Shared (b1, b2, eps); refuses AMSGrad, maximize and per-group betas/eps."""
    for g in groups:
        for flag in ("amsgrad", "maximize"):
            if g.get(flag):
                raise OptimizerConversionError(
                    f"torch param group {g.get('name')!r} uses {flag}=True, which the gaugeformer "
                    "optimizer does not implement; fix: convert with --no-optimizer")
        if g.get("decoupled_weight_decay") is False:
            raise OptimizerConversionError(
                f"torch param group {g.get('name')!r} is Adam with L2 decay, not AdamW; fix: "
                "convert with --no-optimizer")
    hyper = {(tuple(map(float, g.get("betas", (0.9, 0.999)))), float(g.get("eps", 1e-8)))
             for g in groups}
    if len(hyper) != 1:
        raise OptimizerConversionError(
            f"torch param groups use different betas/eps {sorted(hyper)}; gaugeformer uses one "
            "setting for all groups; fix: convert with --no-optimizer")
    (b1, b2), eps = hyper.pop()
    return b1, b2, eps


def optim_config_from_torch(opt_sd: Mapping[str, Any],
                            training_config: Mapping[str, Any] | None = None
                            ) -> tuple[OptimConfig, list[str]]:
    """Recover :class:`OptimConfig` from torch param groups (plus the checkpoint's training config).

    Returns:
      ``(config, notes)``.
    """
    groups = list(opt_sd["param_groups"])
    unnamed = [i for i, g in enumerate(groups) if "name" not in g]
    if unnamed:
        raise OptimizerConversionError(
            f"torch param groups {unnamed} have no 'name'; the reference names every group "
            "(mu_embed, phi_embed, ffn, output); fix: convert with --no-optimizer")
    b1, b2, eps = _check_group_flags(groups)
    by_name = {g["name"]: g for g in groups}
    tc = dict(training_config or {})
    default = OptimConfig()
    notes = []
    kw: dict[str, Any] = dict(b1=b1, b2=b2, eps=eps)
    for field, name in (("mu_lr", "mu_embed"), ("phi_lr", "phi_embed"), ("ffn_lr", "ffn")):
        if name in by_name:
            kw[field] = _group_lr(by_name[name])
        else:
            kw[field] = float(tc.get(field, getattr(default, field)))
            where = "the training config" if field in tc else "the default"
            notes.append(f"{field}={kw[field]:g} from {where} (no torch group {name!r}: no "
                         "parameter of this model uses it)")
    if "output" in by_name and not np.isclose(_group_lr(by_name["output"]), kw["ffn_lr"]):
        raise OptimizerConversionError(
            f"torch group 'output' has lr {_group_lr(by_name['output'])} but 'ffn' has "
            f"{kw['ffn_lr']}; gaugeformer's optimizer uses ffn_lr for out_proj; fix: convert with "
            "--no-optimizer")
    for g in groups:
        if g["name"] != "ffn" and float(g.get("weight_decay", 0.0)) != 0.0 and g["params"]:
            raise OptimizerConversionError(
                f"torch group {g['name']!r} has weight_decay {g['weight_decay']}; gaugeformer "
                "decays only the 'ffn' group; fix: convert with --no-optimizer")
    kw["weight_decay"] = float(by_name["ffn"]["weight_decay"] if "ffn" in by_name
                               else tc.get("weight_decay", default.weight_decay))
    for field in ("grad_clip", "warmup_steps", "max_steps"):
        if tc.get(field) is not None:
            kw[field] = type(getattr(default, field))(tc[field])
        else:
            notes.append(f"{field}={getattr(default, field)} (not in the checkpoint: default)")
    if tc.get("lr_decay", "cosine") != "cosine":
        notes.append(f"lr_decay={tc['lr_decay']!r} in the checkpoint, but gaugeformer's schedule "
                     "is warmup + cosine")
    if int(tc.get("grad_accumulation_steps", 1) or 1) != 1:
        notes.append(f"grad_accumulation_steps={tc['grad_accumulation_steps']} is not reproduced")
    return OptimConfig(**kw), notes


def _assign_ids(opt_sd: Mapping[str, Any], params: list[tuple[str, tuple]]
                ) -> dict[tuple, tuple[int, str]]:
    """``{path: (torch id, torch group name)}``, checking every group against :func:`group_of`."""
    out: dict[tuple, tuple[int, str]] = {}
    seen_labels: set[str] = set()
    for g in opt_sd["param_groups"]:
        name, ids = g["name"], list(g["params"])
        if not ids:
            continue
        label = TORCH_GROUP_TO_LABEL.get(name)
        if label is None:
            raise OptimizerConversionError(
                f"torch param group {name!r} ({len(ids)} parameters) has no gaugeformer equivalent "
                f"(known groups: {sorted(TORCH_GROUP_TO_LABEL)}); fix: convert with --no-optimizer")
        members = [(k, p) for k, p in params if group_of(p) == label]
        if label in seen_labels or len(members) != len(ids):
            raise OptimizerConversionError(
                f"torch param group {name!r} holds {len(ids)} parameters, but gaugeformer's group "
                f"{label!r} holds {len(members)} ({[k for k, _ in members]}); the optimizer state "
                "belongs to another model layout; fix: convert with --no-optimizer")
        seen_labels.add(label)
        for i, (_, path) in zip(ids, members):
            out[path] = (int(i), name)
    orphans = [k for k, p in params if p not in out]
    if orphans:
        raise OptimizerConversionError(
            f"parameters {orphans} are in no torch param group; fix: convert with --no-optimizer")
    return out


def _key(entry) -> Any:
    return getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry)))


def _fill_state(state0, moments: dict[str, dict[tuple, np.ndarray]], counts: dict[str, int]):
    """Replace the zero moments and counts of a fresh optax state (see the module docstring)."""

    def fill(path, leaf):
        keys = [_key(k) for k in path]
        label = keys[keys.index("inner_states") + 1]
        fields = [i for i, k in enumerate(path) if isinstance(k, jax.tree_util.GetAttrKey)
                  and k.name in ("mu", "nu", "count")]
        if not fields:
            raise OptimizerConversionError(f"unexpected optax state leaf {keys}")
        at = fields[-1]
        if path[at].name == "count":
            return jnp.asarray(counts[label], dtype=leaf.dtype)
        return jnp.asarray(moments[path[at].name][tuple(keys[at + 1:])], dtype=leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, state0)


def torch_adamw_to_optax(opt_sd: Mapping[str, Any], state_dict: Mapping[str, Any], cfg: ModelConfig,
                         model: nnx.Module, training_config: Mapping[str, Any] | None = None
                         ) -> ConvertedOptimizer:
    """Map a torch AdamW ``optimizer_state_dict`` onto the optax state of ``model``.

    Args:
      opt_sd: torch ``optimizer.state_dict()`` (numpy arrays).
      state_dict: the reference model state dict it belongs to (for the parameter order).
      cfg: the model config (reference basis: moments are stored per reference coordinate).
      model: the converted model; the state is built over
        ``nnx.as_pure(nnx.state(model, nnx.Param))``.
      training_config: the checkpoint's ``config`` (``vars(FastTrainingConfig)``), if any.

    Returns:
      :class:`ConvertedOptimizer`; its ``opt_state`` matches
      ``jax.eval_shape(make_optimizer(optim).init, nnx.as_pure(nnx.state(model, nnx.Param)))``.

    Raises:
      OptimizerConversionError: see the module docstring.
    """
    if cfg.basis != "reference":
        raise OptimizerConversionError(
            f"basis={cfg.basis!r}: AdamW second moments cannot be re-expressed in another basis; "
            "fix: convert with basis='reference' or --no-optimizer")
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    flat = {tuple(_key(k) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    order = trainable_parameters(state_dict, cfg, set(flat))
    optim, notes = optim_config_from_torch(opt_sd, training_config)
    ids = _assign_ids(opt_sd, order)
    state = opt_sd.get("state") or {}
    moments: dict[str, dict[tuple, np.ndarray]] = {"mu": {}, "nu": {}}
    steps: dict[str, set[int]] = {}
    stateless = []
    for key, path in order:
        pid, _ = ids[path]
        label = group_of(path)
        entry = state.get(pid)
        shape = tuple(np.shape(flat[path]))
        if not entry:
            stateless.append(key)
            moments["mu"][path] = moments["nu"][path] = np.zeros(shape, np.float32)
            continue
        for name in ("exp_avg", "exp_avg_sq"):
            if tuple(np.shape(entry[name])) != shape:
                raise OptimizerConversionError(
                    f"AdamW {name} of {key} (torch id {pid}) has shape {np.shape(entry[name])}, "
                    f"the parameter {shape}; fix: convert with --no-optimizer")
        moments["mu"][path] = np.asarray(entry["exp_avg"], np.float32)
        moments["nu"][path] = np.asarray(entry["exp_avg_sq"], np.float32)
        steps.setdefault(label, set()).add(round(float(np.asarray(entry["step"]))))
    mixed = {g: sorted(s) for g, s in steps.items() if len(s) > 1}
    if mixed:
        raise OptimizerConversionError(
            f"AdamW steps differ inside a group {mixed}; optax keeps one count per group; fix: "
            "convert with --no-optimizer")
    counts = {label: next(iter(steps[label])) if label in steps else 0 for label in
              ("mu", "phi", "ffn", "output")}
    if stateless and steps:
        notes.append(f"no AdamW state for {stateless} (never updated): zero moments, and optax "
                     "uses the group's count for their bias correction")
    step = max(counts.values())
    opt_state = _fill_state(make_optimizer(optim).init(params), moments, counts)
    sizes = {}
    for _, path in order:
        sizes[group_of(path)] = sizes.get(group_of(path), 0) + 1
    return ConvertedOptimizer(opt_state, optim, step, sizes, tuple(notes))
