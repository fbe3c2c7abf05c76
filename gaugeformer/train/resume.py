"""A run's starting state: resumed from its own last checkpoint, initialised from another
(``train.init_from``), or fresh.

Resuming continues exactly as an uninterrupted run would: the model and optimizer state, the step
(hence the batches, a pure function of the step) and the best/last evaluation come back from the
checkpoint's ``meta``.  The model and data settings must match the checkpoint's; optimiser changes
are allowed with a notice.
"""

import dataclasses
import json
from collections.abc import Callable

from flax import nnx

from gaugeformer import checkpoint as ckpt_lib
from gaugeformer.config import ModelConfig
from gaugeformer.model.lm import GaugeTransformerLM
from gaugeformer.train.config import ConfigError, RunConfig
from gaugeformer.train.runtime import Placement

Log = Callable[[str], None]


@dataclasses.dataclass
class StartState:
    """Where a run starts.

    Attributes:
      model, optimizer: replicated over the mesh.
      step: the next step to run (completed updates so far).
      resumed_from: the run's own checkpoint step it resumed from, or None.
      best: the restored best-evaluation record (None: keep the run's fresh one).
      last_eval: the restored last evaluation (None: nothing restored).
    """

    model: GaugeTransformerLM
    optimizer: nnx.Optimizer
    step: int
    resumed_from: int | None = None
    best: dict | None = None
    last_eval: dict | None = None


def config_diff(a: dict, b: dict) -> list[str]:
    """``["key: old -> new", ...]`` for the keys whose values differ."""
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def fresh_state(cfg: RunConfig, tx, place: Placement) -> tuple[GaugeTransformerLM, nnx.Optimizer]:
    """A new model (seed ``train.seed``) and optimizer, replicated."""
    model = GaugeTransformerLM(cfg.model, rngs=nnx.Rngs(cfg.train.seed))
    nnx.update(model, place.replicate(ckpt_lib.strong_types(nnx.state(model))))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    nnx.update(optimizer, place.replicate(ckpt_lib.strong_types(nnx.state(optimizer))))
    return model, optimizer


def optimizer_template(cfg: ModelConfig, tx) -> nnx.Optimizer:
    """The abstract optimizer (``nnx.eval_shape``) a checkpoint's optimizer state restores into."""
    return nnx.eval_shape(lambda: nnx.Optimizer(GaugeTransformerLM(cfg, rngs=nnx.Rngs(0)),
                                                 tx, wrt=nnx.Param))


def check_model(restored: ckpt_lib.Restored, cfg: ModelConfig) -> None:
    """The checkpoint's model config must equal the run's."""
    if restored.model_config != cfg:
        diff = config_diff(restored.model_config.to_dict(), cfg.to_dict())
        raise ConfigError("the checkpoint's model config differs from the run's "
                          f"(model.*): {diff}; use a new --workdir")


def check_resume(restored: ckpt_lib.Restored, cfg: RunConfig, log: Log) -> None:
    """Model and data must match the checkpoint's; optimiser changes are allowed, with a
    notice (e.g. a longer ``train.steps`` stretches the derived cosine schedule)."""
    check_model(restored, cfg.model)
    saved_cfg = restored.meta.get("run_config") or {}
    now = json.loads(json.dumps(cfg.to_dict()))
    saved = saved_cfg.get("data")
    if saved is not None and saved != now["data"]:
        raise ConfigError("the checkpoint was trained on different data settings (data.*): "
                          f"{config_diff(saved, now['data'])}; use a new --workdir")
    if saved_cfg.get("optim") not in (None, now["optim"]):
        log("[train] note: optim.* differs from the checkpoint's run: "
            f"{config_diff(saved_cfg['optim'], now['optim'])}")


def _restore_init_from(path: str, cfg: RunConfig, tx, place: Placement, log: Log
                       ) -> ckpt_lib.Restored:
    manager, step = ckpt_lib.open_checkpoint(path)
    try:
        restored = ckpt_lib.restore_step(manager, step,
                                         optimizer_template=optimizer_template(cfg.model, tx),
                                         sharding=place.replicated)
    except ValueError as err:  # an optimizer state of another structure: start it afresh
        log(f"[train] init_from: optimizer state not usable ({err}); fresh one")
        restored = ckpt_lib.restore_step(manager, step, sharding=place.replicated)
    check_model(restored, cfg.model)
    log(f"[train] initialised from {path} (step {restored.step})")
    return restored


def _from_restored(r: ckpt_lib.Restored, cfg: RunConfig, tx, place: Placement, best_metric: str
                   ) -> StartState:
    model = ckpt_lib.model_from_restored(r)
    nnx.update(model, place.replicate(ckpt_lib.strong_types(nnx.state(model))))
    if r.opt_state is not None:
        optimizer = optimizer_template(cfg.model, tx)
        nnx.update(optimizer, r.opt_state)
    else:
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    nnx.update(optimizer, place.replicate(ckpt_lib.strong_types(nnx.state(optimizer))))
    best = r.meta.get("best")
    keep = best and best.get("metric") == best_metric and best.get("value") is not None
    step = int((r.meta.get("data") or {}).get("next_step", r.meta.get("step", r.step)))
    if r.opt_state is None:
        step = int(r.meta.get("step", 0) or 0)
    return StartState(model, optimizer, step, best=dict(best) if keep else None,
                      last_eval=dict(r.meta.get("eval") or {}))


def start_state(cfg: RunConfig, checkpointer: ckpt_lib.Checkpointer, tx, place: Placement,
                log: Log) -> StartState:
    """The run's last checkpoint if it has one, else ``train.init_from``, else a fresh state.

    Raises:
      ConfigError: the checkpoint holds another model, other data settings, or an optimizer
        state of another structure (``optim.accumulate_steps`` changed).
    """
    latest = checkpointer.latest_step()
    if latest is not None:
        try:
            restored = checkpointer.restore(latest,
                                            optimizer_template=optimizer_template(cfg.model, tx),
                                            sharding=place.replicated)
        except ValueError as err:  # orbax: the optimizer state's tree differs
            raise ConfigError(
                f"checkpoint {latest} has an optimizer state of another structure (was "
                "optim.accumulate_steps changed?); keep the run's optim settings or use a "
                f"new --workdir ({str(err).splitlines()[0]})") from err
        check_resume(restored, cfg, log)
        state = _from_restored(restored, cfg, tx, place, cfg.train.best_metric)
        state.resumed_from = latest
        return state
    if cfg.train.init_from:
        restored = _restore_init_from(cfg.train.init_from, cfg, tx, place, log)
        return _from_restored(restored, cfg, tx, place, cfg.train.best_metric)
    model, optimizer = fresh_state(cfg, tx, place)
    return StartState(model, optimizer, 0)
