"""The one checkpoint I/O: orbax checkpoints that carry their own configuration (fixes
ref-diagnostics §0.8 / §8.1), written by the trainer and the converter, read by both and by
:func:`gaugeformer.load`.

Layout under the run directory (absolute paths; orbax commits a step atomically by renaming a
temporary directory, so a run killed during a save leaves only an ignored
``<step>.orbax-checkpoint-tmp`` directory and resumes from the last complete step)::

    <workdir>/checkpoints/<step>/   the latest ``train.keep_checkpoints`` saves
    <workdir>/best/<step>/          the best evaluation so far (``train.keep_best``)
        params/     nnx pure dict of ``nnx.state(model)`` (Params and the small constant buffers)
        opt_state/  nnx pure dict of ``nnx.state(optimizer)`` (optax state and its step counter)
        config/     JSON: ``ModelConfig.to_dict()``, enough to rebuild the model with no other file
        meta/       JSON: ``{"format", "step", "tokenizer", "data", "rng", "run_config", "best",
                    "eval", ...}``; ``tokenizer`` is ``Tokenizer.to_meta()``: kind and, for a
                    restricted vocabulary, the kept ids

``step`` is the number of completed optimizer updates (the reference stored the 0-based loop index).
``meta["data"]["next_step"]`` is the index of the next training batch
(:meth:`~gaugeformer.data.batches.TrainBatches.batch`), which together with ``shuffle_seed`` fixes
the data position exactly.  The model takes no random numbers during training, so ``meta["rng"]`` holds
the seeds that determine the run (init and shuffle).

The converter writes the same items into a one-step directory with :func:`write` (atomically:
a temp directory renamed into place), so :func:`restore` opens a converted checkpoint as well as a
training one, and the trainer resumes from either (a checkpoint without ``opt_state`` starts a
fresh optimizer).  ``opt_state`` is always the state of
:func:`gaugeformer.train.optim.build_optimizer` of the run's (or the converted) ``OptimConfig``.
"""

import dataclasses
import json
import os
import shutil
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from gaugeformer.config import ModelConfig
from gaugeformer.model.lm import GaugeTransformerLM
from gaugeformer.train.optim import OptimConfig, build_optimizer

FORMAT = "gaugeformer-train-v1"
ITEMS = ("params", "opt_state", "config", "meta")


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read (the message says why and what to do)."""


class OutputExistsError(CheckpointError):
    """The output directory exists and ``force`` was not given."""


def _manager(directory: Path, keep: int | None, async_save: bool, read_only: bool = False):
    """A manager over ``directory``; ``read_only`` opens an existing one for loading (it neither
    creates, deletes nor cleans anything)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep,
        enable_async_checkpointing=async_save,
        create=not read_only,
        cleanup_tmp_directories=not read_only,
    )
    return ocp.CheckpointManager(directory, options=options, item_names=ITEMS)


def _abstract(tree, sharding: jax.sharding.Sharding | None):
    """Arrays / ShapeDtypeStructs -> strong-typed ShapeDtypeStructs (optionally with a sharding)."""

    def one(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(one, tree)


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


@dataclasses.dataclass
class Restored:
    """What :meth:`Checkpointer.restore` returns."""

    step: int
    model_config: ModelConfig
    params: dict
    opt_state: dict | None
    meta: dict


class Checkpointer:
    """Latest-k and best checkpoints of one run directory.

    Args:
      workdir: run directory (made absolute).
      keep: latest checkpoints to keep.
      keep_best: also maintain ``best/``.
      async_save: write in a background thread (call :meth:`wait` / :meth:`close`).
    """

    def __init__(self, workdir: str | Path, *, keep: int = 3, keep_best: bool = True,
                 async_save: bool = True):
        self.workdir = Path(workdir).resolve()
        self.latest = _manager(self.workdir / "checkpoints", keep, async_save)
        self.best = _manager(self.workdir / "best", 1, async_save) if keep_best else None

    # -------------------------------------------------------------------- save
    def save(self, step: int, model: nnx.Module, optimizer: nnx.Optimizer | None, meta: Mapping,
             *, best: bool = False, force: bool = True) -> None:
        """Save ``step`` to ``checkpoints/`` (and to ``best/`` when ``best``)."""
        args = make_save_args(model, optimizer, {**meta, "step": int(step)})
        if step not in self.latest.all_steps():
            self.latest.save(step, args=args, force=force)
        if best and self.best is not None:
            if step in self.best.all_steps():
                return
            self.best.save(step, args=args, force=True)

    def wait(self) -> None:
        """Block until background saves are committed."""
        self.latest.wait_until_finished()
        if self.best is not None:
            self.best.wait_until_finished()

    def close(self) -> None:
        """Wait and release the managers."""
        self.wait()
        self.latest.close()
        if self.best is not None:
            self.best.close()

    # -------------------------------------------------------------------- restore
    def latest_step(self) -> int | None:
        """Last complete step in ``checkpoints/`` (``None`` if there is none)."""
        self.latest.reload()
        return self.latest.latest_step()

    def restore(self, step: int | None = None, *, optimizer_template: nnx.Optimizer | None = None,
                sharding: jax.sharding.Sharding | None = None) -> Restored:
        """Restore ``step`` (default: latest) from ``checkpoints/``; see :func:`restore_step`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint under {self.workdir / 'checkpoints'}")
        return restore_step(self.latest, step, optimizer_template=optimizer_template,
                            sharding=sharding)


def make_save_args(model: nnx.Module, optimizer: nnx.Optimizer | None, meta: Mapping):
    """``ocp.args.Composite`` of the four items."""
    items = {
        "params": ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(model))),
        "config": ocp.args.JsonSave(_json_safe(model.cfg.to_dict())),
        "meta": ocp.args.JsonSave(_json_safe({"format": FORMAT, **meta})),
    }
    if optimizer is not None:
        items["opt_state"] = ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(optimizer)))
    return ocp.args.Composite(**items)


def abstract_model(cfg: ModelConfig) -> GaugeTransformerLM:
    """The model as ``nnx.eval_shape`` builds it: structure and shapes, no arrays."""
    return nnx.eval_shape(lambda: GaugeTransformerLM(cfg, rngs=nnx.Rngs(0)))


def restore_step(manager: ocp.CheckpointManager, step: int, *,
                 optimizer_template: nnx.Optimizer | None = None,
                 sharding: jax.sharding.Sharding | None = None) -> Restored:
    """Read one step: config and meta first, then params into the abstract model's shapes.

    Args:
      manager: an orbax manager over a directory of steps.
      step: step to read.
      optimizer_template: an (abstract or concrete) optimizer whose state structure the
        ``opt_state`` item is restored into; ``None`` skips the optimizer.
      sharding: placement of every restored array (e.g. replicated over the mesh).
    """
    head = read_head(manager, step)
    cfg = ModelConfig.from_dict(head["config"])
    target = _abstract(nnx.to_pure_dict(nnx.state(abstract_model(cfg))), sharding)
    items = {"params": ocp.args.StandardRestore(target)}
    has_opt = "opt_state" in _present_items(manager, step)
    if optimizer_template is not None and has_opt:
        opt_target = _abstract(nnx.to_pure_dict(nnx.state(optimizer_template)), sharding)
        items["opt_state"] = ocp.args.StandardRestore(opt_target)
    body = manager.restore(step, args=ocp.args.Composite(**items))
    return Restored(step=int(step), model_config=cfg, params=body["params"],
                    opt_state=body.get("opt_state"), meta=dict(head["meta"] or {}))


def _present_items(manager: ocp.CheckpointManager, step: int) -> set[str]:
    path = Path(manager.directory) / str(step)
    return {p.name for p in path.iterdir() if p.is_dir()} if path.is_dir() else set()


def model_from_restored(restored: Restored) -> GaugeTransformerLM:
    """Fill the abstract model with the restored arrays (``nnx.update`` on ``nnx.eval_shape``)."""
    model = abstract_model(restored.model_config)
    nnx.update(model, restored.params)
    return model


def open_checkpoint(path: str | Path, step: int | None = None
                    ) -> tuple[ocp.CheckpointManager, int]:
    """Resolve a checkpoint location to ``(manager, step)`` for reading.

    Args:
      path: a run directory (its ``checkpoints/``), a ``checkpoints/`` or ``best/`` directory, a
        converter output directory, or one step directory (``.../checkpoints/300``).
      step: step to open (default: the latest, or the one ``path`` names).

    Raises:
      FileNotFoundError: no complete checkpoint there.
    """
    path = Path(path).resolve()
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if (path / "params").is_dir() and path.name.isdigit():
        step, path = (int(path.name) if step is None else step), path.parent
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {path}")
    manager = _manager(path, None, False, read_only=True)
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
        raise FileNotFoundError(f"no complete checkpoint {'' if step is None else step} under "
                                f"{path}")
    return manager, int(step)


def restore(path: str | Path, step: int | None = None, *, optimizer: bool = False,
            sharding: jax.sharding.Sharding | None = None) -> Restored:
    """Read a checkpoint location (see :func:`open_checkpoint`) in one call.

    Args:
      path: a run directory, ``checkpoints/``, ``best/``, a converted directory or a step.
      step: step to read (default: the latest, or the one ``path`` names).
      optimizer: also read ``opt_state`` (when present) into the structure of
        ``build_optimizer(optim_config_of(meta))``.
      sharding: placement of every restored array.
    """
    manager, step = open_checkpoint(path, step)
    try:
        template = None
        if optimizer:
            head = read_head(manager, step)
            optim = optim_config_of(head["meta"])
            if optim is not None:
                template = optimizer_template(ModelConfig.from_dict(head["config"]),
                                              build_optimizer(optim))
        return restore_step(manager, step, optimizer_template=template, sharding=sharding)
    finally:
        manager.close()


def read_head(manager: ocp.CheckpointManager, step: int) -> dict:
    """The ``config`` and ``meta`` items of one step (small JSON, no arrays)."""
    return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore(),
                                                         meta=ocp.args.JsonRestore()))


def optim_config_of(meta: Mapping[str, Any]) -> OptimConfig | None:
    """The :class:`OptimConfig` a checkpoint's ``opt_state`` belongs to (None without one):
    ``meta["optim"]`` (converted) or ``meta["run_config"]["optim"]`` (trained)."""
    optim = meta.get("optim") or (meta.get("run_config") or {}).get("optim")
    return OptimConfig(**optim) if optim else None


def optimizer_template(cfg: ModelConfig, tx) -> nnx.Optimizer:
    """An abstract ``nnx.Optimizer(model, tx, wrt=nnx.Param)``: the ``opt_state`` structure."""
    return nnx.eval_shape(lambda: nnx.Optimizer(GaugeTransformerLM(cfg, rngs=nnx.Rngs(0)), tx,
                                                 wrt=nnx.Param))


def optimizer_from_restored(restored: Restored, model: nnx.Module, tx=None) -> nnx.Optimizer:
    """``nnx.Optimizer`` over ``model`` holding the restored state (step included).

    ``tx`` defaults to ``build_optimizer(optim_config_of(restored.meta))``.
    """
    if restored.opt_state is None:
        raise CheckpointError("the checkpoint has no optimizer state (opt_state); fix: restore "
                              "with optimizer=True, or start a fresh optimizer")
    tx = tx if tx is not None else build_optimizer(optim_config_of(restored.meta))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    nnx.update(opt, restored.opt_state)
    return opt


def write(out_dir: str | Path, step: int, model: nnx.Module, optimizer: nnx.Optimizer | None,
          meta: Mapping, *, force: bool = False) -> Path:
    """Write one checkpoint step into ``out_dir`` atomically (the converter's output).

    Everything is written to ``.<name>.tmp-<id>`` beside ``out_dir`` and renamed into place; on any
    failure the temp dir is removed and ``out_dir`` is untouched.  ``meta`` must be plain JSON.

    Raises:
      OutputExistsError: ``out_dir`` exists and not ``force``.
      CheckpointError: ``meta`` or the config is not plain JSON.
    """
    out = Path(out_dir).absolute()
    if out.exists() and not force:
        raise OutputExistsError(f"{out} exists; fix: pass --force to replace it")
    for name, item in (("config", model.cfg.to_dict()), ("meta", meta)):
        try:
            json.dumps(item, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"the {name} item is not plain JSON ({exc})") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        _write_step(tmp, step, make_save_args(model, optimizer, {**meta, "step": int(step)}))
        _commit(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_step(directory: Path, step: int, args) -> None:
    """One synchronous ``CheckpointManager`` save."""
    before = set(threading.enumerate())
    manager = _manager(directory, None, False)
    try:
        manager.save(step, args=args)
        manager.wait_until_finished()
    except BaseException:
        # one failed item does not stop the writer threads of the others: let them finish, so
        # that the caller's cleanup removes everything
        for thread in set(threading.enumerate()) - before:
            thread.join(timeout=60)
        raise
    finally:
        manager.close()


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


def strong_types(tree):
    """Replace weakly-typed leaves by strong ones of the same dtype (a weak leaf that becomes
    strong after the first update would otherwise recompile the train step once)."""

    def one(x):
        if isinstance(x, jax.Array) and getattr(x, "weak_type", False):
            return jnp.asarray(x, dtype=x.dtype)
        return x

    return jax.tree.map(one, tree)


def remove_run(workdir: str | Path) -> None:
    """Delete a run's checkpoints (``checkpoints/`` and ``best/``)."""
    for sub in ("checkpoints", "best"):
        shutil.rmtree(Path(workdir) / sub, ignore_errors=True)
