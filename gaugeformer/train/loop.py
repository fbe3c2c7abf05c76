"""The training loop: ``train_and_evaluate(run_cfg, workdir) -> summary``.

One jitted train step (``nnx.jit`` with the model and optimizer donated) computes the free-energy
loss, its gradients, the optimizer update and every logged scalar
(:mod:`gaugeformer.train.metrics`).
The host dispatches step *s* and only then fetches step *s − 1*'s scalars, so the device never
waits for Python (nanodo's pattern); before a checkpoint or an evaluation the pending scalars are
fetched first, so a checkpoint is only ever written from a state whose every step was checked.

Work at step boundaries, in this order: NaN/inf check and logging of the previous step; evaluation
(``train.eval_every`` and the last step: CE/PPL over the whole validation split, attention figures
and the row_std table on a fixed validation sequence, curves, best checkpoint); checkpoint
(``train.checkpoint_every``, the last step, Ctrl-C, SIGTERM, an orbax preemption point; see
:mod:`gaugeformer.train.integrations`); user hooks ``(every, fn)``.

Parallelism: a 1-D ``jax.sharding.Mesh`` over every device with the axis ``data``. Batches are
sharded along it (each process contributes its rows with ``make_array_from_process_local_data``);
parameters and optimizer state are replicated; XLA inserts the gradient all-reduce. The same code
runs on one CPU, one GPU, a TPU slice and, with ``train.distributed: true`` (which calls
``jax.distributed.initialize()``), on several hosts.

Files in the workdir: ``run_config.yaml`` (resolved), ``metrics.jsonl`` (one JSON object per logged
step, ``"split"`` = ``train`` | ``eval``), ``metrics.csv``, ``curves.png``,
``attention/step_XXXXXX/`` (figures and ``row_std.md``), ``checkpoints/``, ``best/``, and optionally
``tensorboard/`` (``log.tensorboard``) and ``profile/`` (``train.profile_steps``).
"""

import csv
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gaugeformer import checkpoint as ckpt_lib
from gaugeformer import stats
from gaugeformer.capture import capture_jit
from gaugeformer.config import ModelConfig
from gaugeformer.data.batches import EvalBatches, TrainBatches
from gaugeformer.data.corpus import TokenDataset, load_embedded_dataset, load_wikitext
from gaugeformer.data.tokenizer import Tokenizer
from gaugeformer.loss import free_energy_loss
from gaugeformer.model.lm import GaugeTransformerLM
from gaugeformer.model.sow import SowConfig, flatten
from gaugeformer.train import metrics as mlib
from gaugeformer.train.config import ConfigError, DataConfig, RunConfig
from gaugeformer.train.integrations import GracefulInterrupt, StepProfiler, open_tensorboard
from gaugeformer.train.optim import OptimConfig, build_optimizer

DATA_AXIS = "data"
COMPILE_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"


# ----------------------------------------------------------------------------------------------
# Jitted steps
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Static loss weights of the train and eval steps."""

    alpha: float | None = None
    lambda_beta: float = 1.0


def step_hooks(cfg: ModelConfig, n: int) -> SowConfig:
    """The hooks a train step records.  Every hook while the sequence fits one attention tile (the
    per-layer β/KL statistics then cost no extra memory); only the belief hooks once it spans several
    tiles, so the step runs tiled in O(N) memory (per-layer attention statistics come from the
    evaluations' fixed sequence instead)."""
    if cfg.attention_tile is None or n <= cfg.attention_tile:
        return SowConfig()
    return SowConfig(attention=False, ffn=False, beliefs=True)


def _loss_with_hooks(model, x, y, weights: LossWeights, train: bool):
    sow = step_hooks(model.cfg, x.shape[-1])

    def run(m):
        return free_energy_loss(m, x, y, alpha=weights.alpha, lambda_beta=weights.lambda_beta,
                                train=train, sow=sow)

    (loss, metrics), state = nnx.capture(run, nnx.Intermediate)(model)
    return loss, (metrics, flatten(nnx.to_pure_dict(state)))


@functools.partial(nnx.jit, donate_argnames=("model", "optimizer"),
                   static_argnames=("weights", "optim_cfg"))
def train_step(model: GaugeTransformerLM, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array,
               *, weights: LossWeights, optim_cfg: OptimConfig) -> dict[str, jax.Array]:
    """One update on ``x, y [B, N]``; returns every scalar of :func:`metrics.step_metrics`."""
    step = optimizer.step[...]

    def loss_fn(m):
        return _loss_with_hooks(m, x, y, weights, train=True)

    (_, (loss_metrics, hooks)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    out = mlib.step_metrics(model.cfg, optim_cfg, loss_metrics, hooks, grads, step)
    optimizer.update(model, grads)
    return out


@functools.partial(nnx.jit, static_argnames=("weights",))
def eval_step(model: GaugeTransformerLM, x: jax.Array, y: jax.Array, mask: jax.Array, *,
              weights: LossWeights) -> dict[str, jax.Array]:
    """Masked CE sum and the free-energy terms of one validation batch (no φ step)."""
    targets = jnp.where(mask, y, -100)
    _, m = free_energy_loss(model, x, targets, alpha=weights.alpha,
                            lambda_beta=weights.lambda_beta, train=False)
    count = mask.sum()
    return {"ce_sum": m["loss/ce"] * count, "count": count, "full": jnp.all(mask),
            "align": m["loss/belief_align"], "self": m["loss/self_consistency"]}


# ----------------------------------------------------------------------------------------------
# Setup helpers
# ----------------------------------------------------------------------------------------------


def init_distributed() -> None:
    """``jax.distributed.initialize()``; outside auto-detected clusters (TPU pods, SLURM, Open MPI)
    set ``JAX_COORDINATOR_ADDRESS=host:port``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``."""
    if jax.distributed.is_initialized():
        return
    kwargs = {}
    if os.environ.get("JAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if os.environ.get("JAX_PROCESS_ID"):
        kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)


def enable_compilation_cache(path: str | Path | None = None) -> Path:
    """Persistent XLA cache (``$GAUGEFORMER_JAX_CACHE`` or ``~/.cache/gaugeformer/jax``): a
    second run of the same configuration skips compilation."""
    path = Path(path or os.environ.get("GAUGEFORMER_JAX_CACHE")
                or Path.home() / ".cache" / "gaugeformer" / "jax")
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


@dataclasses.dataclass(frozen=True)
class Placement:
    """Mesh and shardings of a run."""

    mesh: Mesh
    batch: NamedSharding
    replicated: NamedSharding

    @classmethod
    def over_all_devices(cls) -> "Placement":
        # Auto axes: XLA propagates the batch sharding through the model (no annotations needed).
        mesh = jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                             axis_types=(jax.sharding.AxisType.Auto,))
        return cls(mesh, NamedSharding(mesh, P(DATA_AXIS)), NamedSharding(mesh, P()))

    def put_batch(self, *arrays: np.ndarray) -> list[jax.Array]:
        """Global ``[B, ...]`` host arrays -> arrays sharded over ``data`` (this process's rows)."""
        n_proc, pid = jax.process_count(), jax.process_index()
        out = []
        for a in arrays:
            rows = a.shape[0] // n_proc
            local = a[pid * rows:(pid + 1) * rows]
            out.append(jax.make_array_from_process_local_data(self.batch, local, a.shape))
        return out

    def replicate(self, tree):
        return jax.device_put(tree, self.replicated)


def load_data(cfg: DataConfig) -> TokenDataset:
    """Token arrays of the configured corpus (raises ``DatasetUnavailableError`` with a hint)."""
    if cfg.dataset == "embedded":
        return load_embedded_dataset(cfg.tokenizer, val_fraction=cfg.val_fraction,
                                     vocab_size=cfg.vocab_size)
    return load_wikitext(cfg.dataset, tokenizer=cfg.tokenizer, data_files=cfg.data_files,
                         cache_dir=cfg.cache_dir, hf_cache_dir=cfg.hf_cache_dir,
                         vocab_size=cfg.vocab_size)


def _config_diff(a: dict, b: dict) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


@dataclasses.dataclass(frozen=True)
class AttentionSnapshot:
    """The attention of the fixed validation sequence at one evaluation, for a figure hook."""

    step: int
    beta: np.ndarray  # [L, 1, H, N, N]
    kl: np.ndarray  # [L, 1, H, N, N]
    pieces: list[bytes]
    text: str
    config: ModelConfig
    caption: dict
    out_dir: Path


class Figures(Protocol):
    """What the trainer draws, supplied by the caller (``diagnostics.training.FIGURES``), so the
    library does not depend on its consumer."""

    def curves(self, series: list[dict], out: Path, title: str) -> None: ...

    def attention(self, snapshot: AttentionSnapshot) -> None: ...

    def uniformity(self, model: Any, tokens: jax.Array, out_dir: Path) -> dict[str, float]:
        """Per-head uniformity attribution of the fixed sequence (written under ``out_dir``);
        returns scalar ``fixed/...`` entries for ``metrics.jsonl``."""
        ...


# ----------------------------------------------------------------------------------------------
# Logging
# ----------------------------------------------------------------------------------------------


class RunLog:
    """``metrics.jsonl`` (+ CSV), progress bar and console lines; a no-op off process 0."""

    def __init__(self, workdir: Path, run_cfg: RunConfig, start_step: int, active: bool,
                 figures: Figures | None = None):
        self.workdir, self.cfg, self.active, self.figures = workdir, run_cfg, active, figures
        self.jsonl = workdir / "metrics.jsonl"
        self.csv = workdir / "metrics.csv"
        self.bar = None
        self.tensorboard = None
        if active:
            self._truncate_after(start_step)
            if run_cfg.log.tensorboard:
                self.tensorboard = open_tensorboard(workdir / "tensorboard", start_step)
            if run_cfg.log.progress:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=run_cfg.train.steps, initial=start_step, unit="step",
                                dynamic_ncols=True, desc="train")

    def _truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (written after the checkpoint a resume starts from)."""
        if not self.jsonl.exists():
            return
        keep = [line for line in self.jsonl.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.jsonl.write_text("".join(line + "\n" for line in keep), encoding="utf-8")

    def write(self, record: dict) -> None:
        if self.active:
            with self.jsonl.open("a", encoding="utf-8") as f:
                f.write(json.dumps(mlib.ordered(record), ensure_ascii=False) + "\n")
            if self.tensorboard is not None:
                split = record.get("split", "train")
                for key, value in record.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool) \
                            and key not in ("step", "split"):
                        tag = key if key.startswith(f"{split}/") else f"{split}/{key}"
                        self.tensorboard.add_scalar(tag, value, record["step"])

    def records(self) -> list[dict]:
        if not self.jsonl.exists():
            return []
        return [json.loads(x) for x in self.jsonl.read_text(encoding="utf-8").splitlines() if x]

    def print(self, text: str) -> None:
        if not self.active or not text:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def progress(self, step: int, metrics: dict, tokens_per_sec: float) -> None:
        if self.bar is None:
            return
        self.bar.n = step
        self.bar.set_postfix(loss=f"{metrics['loss/total']:.3f}", ce=f"{metrics['loss/ce']:.3f}",
                             ppl=f"{metrics['ppl']:.1f}", tok_s=f"{tokens_per_sec:,.0f}",
                             refresh=False)
        self.bar.refresh()

    def write_csv(self) -> Path | None:
        """One row per step, train and eval columns merged (rewritten in full)."""
        if not (self.active and self.cfg.log.csv):
            return None
        rows: dict[int, dict] = {}
        for rec in self.records():
            row = rows.setdefault(rec["step"], {"step": rec["step"]})
            row.update({k: v for k, v in rec.items() if k not in ("split", "step")})
        header: list[str] = []
        for row in rows.values():
            header.extend(k for k in row if k not in header)
        header = list(mlib.ordered(dict.fromkeys(header)))
        with self.csv.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            for step in sorted(rows):
                writer.writerow(rows[step])
        return self.csv

    def write_curves(self) -> Path | None:
        if not (self.active and self.cfg.log.curves and self.figures is not None):
            return None
        series = []
        for r in self.records():
            if r.get("split") == "train":
                series.append({"step": r["step"], "train_loss": r["loss/ce"],
                               "train_ppl": r["ppl"]})
            elif "eval/ce" in r:
                series.append({"step": r["step"], "eval_loss": r["eval/ce"],
                               "eval_ppl": r["eval/ppl"]})
        if not series:
            return None
        out = self.workdir / "curves.png"
        self.figures.curves(series, out, "gaugeformer: cross-entropy and perplexity")
        return out

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


# ----------------------------------------------------------------------------------------------
# Compile counting
# ----------------------------------------------------------------------------------------------


class _CompileCounter:
    """Counts lowerings to MLIR (every fresh compile, persistent-cache hits included)."""

    count = 0
    _installed = False

    @classmethod
    def install(cls) -> None:
        if not cls._installed:
            def listener(event: str, duration: float, **kwargs) -> None:
                if event == COMPILE_EVENT:
                    cls.count += 1

            jax.monitoring.register_event_duration_secs_listener(listener)
            cls._installed = True


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StepContext:
    """What a user hook sees after step ``step`` (completed updates)."""

    step: int
    model: GaugeTransformerLM
    optimizer: nnx.Optimizer
    workdir: Path
    run_cfg: RunConfig


Hook = tuple[int, Callable[[StepContext], None]]



class Trainer:
    """State and steps of one run; :func:`train_and_evaluate` is the entry point."""

    def __init__(self, run_cfg: RunConfig, workdir: str | Path, hooks: Sequence[Hook] = (),
                 figures: Figures | None = None):
        self.cfg = run_cfg
        self.figures = figures
        self.workdir = Path(workdir).resolve()
        self.hooks = list(hooks)
        self.weights = LossWeights(run_cfg.train.alpha, run_cfg.train.lambda_beta)
        self.main = jax.process_index() == 0
        self.place = Placement.over_all_devices()
        self._check_batches()
        self.data = load_data(run_cfg.data)
        self.tokenizer = Tokenizer.of_dataset(self.data)
        if self.data.vocab_size != run_cfg.model.vocab_size:
            raise ConfigError(f"model.vocab_size={run_cfg.model.vocab_size} but the data has "
                              f"{self.data.vocab_size} token ids")
        d = run_cfg.data
        self.batches = TrainBatches(self.data.train, d.batch_size, d.seq_len, d.shuffle_seed)
        self.evals = EvalBatches(self.data.validation, d.eval_batch, d.seq_len)
        self.fixed_tokens = self._fixed_sequence()
        t = run_cfg.train
        self.ckpt = ckpt_lib.Checkpointer(self.workdir, keep=t.keep_checkpoints,
                                          keep_best=t.keep_best, async_save=t.async_checkpointing)
        self.tx = build_optimizer(run_cfg.optim)
        self.best = {"metric": t.best_metric, "value": math.inf, "step": None}
        self.last_eval: dict = {}
        self.last_train: dict = {}
        self.first_train: dict = {}
        self.pending: tuple[int, dict] | None = None
        self.resumed_from: int | None = None
        try:
            self.model, self.optimizer, self.start_step = self._init_state()
        except BaseException:
            self.ckpt.close()
            raise
        self.step = self.start_step
        self.log = RunLog(self.workdir, run_cfg, self.start_step, self.main, figures)
        self.profiler = StepProfiler(self.workdir / "profile", run_cfg.train.profile_steps)
        self._tick = (time.perf_counter(), self.start_step)
        self.tokens_per_sec = 0.0
        self.train_compiles = 0
        self.figure_dirs: list[Path] = []

    # ------------------------------------------------------------------ setup
    def _check_batches(self) -> None:
        n = jax.device_count()
        for key, b in (("data.batch_size", self.cfg.data.batch_size),
                       ("data.eval_batch_size", self.cfg.data.eval_batch)):
            if b % n:
                raise ConfigError(f"{key}={b} must be divisible by the {n} devices of the mesh")

    def _fixed_sequence(self) -> np.ndarray:
        n, w = self.cfg.data.seq_len, self.cfg.data.fixed_sequence
        val = self.data.validation
        if (w + 1) * n > len(val):
            raise ConfigError(f"data.fixed_sequence={w}: the validation split has only "
                              f"{len(val) // n} windows of {n} tokens")
        return np.asarray(val[w * n:(w + 1) * n], np.int32)

    def _fresh(self) -> tuple[GaugeTransformerLM, nnx.Optimizer]:
        model = GaugeTransformerLM(self.cfg.model, rngs=nnx.Rngs(self.cfg.train.seed))
        nnx.update(model, self.place.replicate(ckpt_lib.strong_types(nnx.state(model))))
        optimizer = nnx.Optimizer(model, self.tx, wrt=nnx.Param)
        nnx.update(optimizer, self.place.replicate(ckpt_lib.strong_types(nnx.state(optimizer))))
        return model, optimizer

    def _template(self) -> nnx.Optimizer:
        cfg, tx = self.cfg.model, self.tx
        return nnx.eval_shape(lambda: nnx.Optimizer(GaugeTransformerLM(cfg, rngs=nnx.Rngs(0)),
                                                     tx, wrt=nnx.Param))

    def _init_state(self) -> tuple[GaugeTransformerLM, nnx.Optimizer, int]:
        latest = self.ckpt.latest_step()
        if latest is not None:
            try:
                restored = self.ckpt.restore(latest, optimizer_template=self._template(),
                                             sharding=self.place.replicated)
            except ValueError as err:  # orbax: the optimizer state's tree differs
                raise ConfigError(
                    f"checkpoint {latest} has an optimizer state of another structure (was "
                    "optim.accumulate_steps changed?); keep the run's optim settings or use a "
                    f"new --workdir ({str(err).splitlines()[0]})") from err
            self._check_resume(restored)
            self.resumed_from = latest
        elif self.cfg.train.init_from:
            restored = self._restore_init_from(self.cfg.train.init_from)
        else:
            model, optimizer = self._fresh()
            return model, optimizer, 0
        return self._from_restored(restored)

    def _restore_init_from(self, path: str) -> ckpt_lib.Restored:
        manager, step = ckpt_lib.open_checkpoint(path)
        try:
            restored = ckpt_lib.restore_step(manager, step, optimizer_template=self._template(),
                                             sharding=self.place.replicated)
        except ValueError as err:  # an optimizer state of another structure: start it afresh
            self.log_early(f"[train] init_from: optimizer state not usable ({err}); fresh one")
            restored = ckpt_lib.restore_step(manager, step, sharding=self.place.replicated)
        self._check_model(restored)
        self.log_early(f"[train] initialised from {path} (step {restored.step})")
        return restored

    def log_early(self, text: str) -> None:
        """Print on process 0 (before the progress bar exists)."""
        if self.main:
            print(text, flush=True)

    def _check_model(self, restored: ckpt_lib.Restored) -> None:
        if restored.model_config != self.cfg.model:
            diff = _config_diff(restored.model_config.to_dict(), self.cfg.model.to_dict())
            raise ConfigError("the checkpoint's model config differs from the run's "
                              f"(model.*): {diff}; use a new --workdir")

    def _check_resume(self, restored: ckpt_lib.Restored) -> None:
        """Model and data must match the checkpoint's; optimiser changes are allowed, with a
        notice (e.g. a longer ``train.steps`` stretches the derived cosine schedule)."""
        self._check_model(restored)
        saved_cfg = restored.meta.get("run_config") or {}
        now = json.loads(json.dumps(self.cfg.to_dict()))
        saved = saved_cfg.get("data")
        if saved is not None and saved != now["data"]:
            raise ConfigError("the checkpoint was trained on different data settings (data.*): "
                              f"{_config_diff(saved, now['data'])}; use a new --workdir")
        if saved_cfg.get("optim") not in (None, now["optim"]):
            self.log_early("[train] note: optim.* differs from the checkpoint's run: "
                           f"{_config_diff(saved_cfg['optim'], now['optim'])}")

    def _from_restored(self, r: ckpt_lib.Restored):
        model = ckpt_lib.model_from_restored(r)
        nnx.update(model, self.place.replicate(ckpt_lib.strong_types(nnx.state(model))))
        if r.opt_state is not None:
            optimizer = self._template()
            nnx.update(optimizer, r.opt_state)
        else:
            optimizer = nnx.Optimizer(model, self.tx, wrt=nnx.Param)
        nnx.update(optimizer, self.place.replicate(ckpt_lib.strong_types(nnx.state(optimizer))))
        best = r.meta.get("best")
        if best and best.get("metric") == self.best["metric"] and best.get("value") is not None:
            self.best = dict(best)
        self.last_eval = dict(r.meta.get("eval") or {})
        step = int((r.meta.get("data") or {}).get("next_step", r.meta.get("step", r.step)))
        if r.opt_state is None:
            step = int(r.meta.get("step", 0) or 0)
        return model, optimizer, step

    # ------------------------------------------------------------------ loop
    def run(self) -> dict:
        """Train from ``self.start_step`` to ``train.steps``; returns the summary."""
        t0 = time.perf_counter()
        status = "completed"
        _CompileCounter.install()
        self._write_run_files()
        if self.resumed_from is not None:
            self.log.print(f"[train] resumed from checkpoint step {self.resumed_from}")
        try:
            with GracefulInterrupt() as stop:
                if self.start_step == 0 and self.cfg.train.eval_at_start:
                    self._evaluate(0)
                for index in range(self.start_step, self.cfg.train.steps):
                    if stop.requested:
                        break
                    self._one_step(index)
                    if self.ckpt.latest.reached_preemption(self.step):
                        stop.requested, stop.signal = True, "preemption"
                        self.log.print(f"[train] preemption at step {self.step}: saving")
                self._flush()
                if stop.requested and self.step < self.cfg.train.steps:
                    status = "interrupted"
                    self._save(self.step)
        finally:
            self.profiler.stop()
            self.ckpt.close()
            self.log.close()
        self.log.write_csv()
        summary = self._summary(status, time.perf_counter() - t0)
        summary["stop_signal"] = stop.signal
        summary["paths"]["profile"] = str(self.profiler.directory) if self.profiler.span else None
        return summary

    def _one_step(self, index: int) -> None:
        x, y = self.place.put_batch(*self.batches.batch(index))
        before = _CompileCounter.count
        self.profiler.before(index + 1)
        metrics = train_step(self.model, self.optimizer, x, y, weights=self.weights,
                             optim_cfg=self.cfg.optim)
        self.profiler.after(index + 1, metrics)
        if index > self.start_step:
            self.train_compiles += _CompileCounter.count - before
        self._flush()
        self.pending = (index + 1, metrics)
        self.step = s = index + 1
        t = self.cfg.train
        last = s == t.steps
        do_eval, do_save = s % t.eval_every == 0 or last, s % t.checkpoint_every == 0 or last
        if do_eval or do_save:
            self._flush()
        if do_eval:
            self._evaluate(s)
        if do_save:
            self._save(s)
        if do_eval or do_save:  # keep evaluation and saving out of the tokens/s estimate
            self._tick = (time.perf_counter(), s)
        for every, fn in self.hooks:
            if s % every == 0:
                fn(StepContext(s, self.model, self.optimizer, self.workdir, self.cfg))

    def _flush(self) -> None:
        """Fetch and process the pending step's scalars (NaN check, log, progress)."""
        if self.pending is None:
            return
        step, metrics = self.pending
        self.pending = None
        host = jax.device_get(metrics)
        problem = mlib.describe_nonfinite(step, host)
        if problem and self.cfg.train.stop_on_nonfinite:
            self.log.write({"split": "train", "step": step, "nonfinite": problem,
                            **mlib.flatten_for_log(host)})
            last = self.ckpt.latest_step()
            raise FloatingPointError(
                f"{problem}\n  training stopped; last good checkpoint: "
                f"{'none' if last is None else self.workdir / 'checkpoints' / str(last)}")
        flat = mlib.flatten_for_log(host)
        self.last_train = flat
        if not self.first_train:
            self.first_train = {"step": step, **flat}
        self._rate(step)
        self.log.progress(step, flat, self.tokens_per_sec)
        if step % self.cfg.log.log_every == 0 or step == 1 or step == self.cfg.train.steps:
            epoch, index = self.batches.position(step - 1)
            rec = {"split": "train", "step": step, "epoch": epoch, "epoch_batch": index,
                   "tokens": step * self.cfg.data.batch_size * self.cfg.data.seq_len,
                   "tokens_per_sec": self.tokens_per_sec, **flat}
            self.log.write(rec)

    def _rate(self, step: int) -> None:
        now = time.perf_counter()
        t_prev, s_prev = self._tick
        if step > s_prev and now > t_prev:
            tokens = (step - s_prev) * self.cfg.data.batch_size * self.cfg.data.seq_len
            rate = tokens / (now - t_prev)
            self.tokens_per_sec = rate if self.tokens_per_sec == 0 else (
                0.8 * self.tokens_per_sec + 0.2 * rate)
        self._tick = (now, step)

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, step: int) -> dict:
        t0 = time.perf_counter()
        outs = []
        limit = self.cfg.data.max_eval_batches
        for i, batch in enumerate(self.evals):
            if limit is not None and i >= limit:
                break
            x, y, mask = self.place.put_batch(batch.x, batch.y, batch.mask)
            outs.append(eval_step(self.model, x, y, mask, weights=self.weights))
        outs = jax.device_get(outs)
        count = sum(float(o["count"]) for o in outs)
        ce = sum(float(o["ce_sum"]) for o in outs) / max(count, 1.0)
        full = [o for o in outs if bool(o["full"])] or outs
        align = float(np.mean([o["align"] for o in full]))
        self_c = float(np.mean([o["self"] for o in full]))
        rec = {"split": "eval", "step": step, "eval/ce": ce, "eval/ppl": math.exp(min(ce, 700.0)),
               "eval/belief_align": align, "eval/self_consistency": self_c,
               "eval/loss_total": ce + align + self_c, "eval/tokens": int(count),
               "eval/batches": len(outs)}
        rec.update(self._attention_report(step))
        rec["eval/seconds"] = time.perf_counter() - t0
        self.last_eval = rec
        self.log.write(rec)
        self.log.print(f"[eval step {step}] CE {ce:.4f} | PPL {rec['eval/ppl']:.2f} | "
                       f"free energy {rec['eval/loss_total']:.4f} | {int(count):,} tokens "
                       f"in {len(outs)} batches ({rec['eval/seconds']:.1f}s)")
        if self.cfg.log.console_diagnostics and self.last_train:
            self.log.print(mlib.format_diversity(self.last_train))
        self.log.write_csv()
        self.log.write_curves()
        value = rec[self.cfg.train.best_metric]
        if step > 0 and value < self.best["value"]:
            self.best = {"metric": self.cfg.train.best_metric, "value": value, "step": step}
            self._save(step, best=True)
        return rec

    def _attention_report(self, step: int) -> dict:
        """β/KL on the fixed validation sequence: row_std table (+ figures); ``fixed/...`` keys."""
        cfg: ModelConfig = self.cfg.model
        tokens = self.place.replicate(jnp.asarray(self.fixed_tokens[None]))
        got = jax.device_get(capture_jit(self.model, tokens))
        beta, kl = np.asarray(got.beta), np.asarray(got.kl)
        mask = stats.model_valid_keys(cfg, beta.shape[-1])
        valid = np.asarray(stats.row_std_valid(jnp.asarray(beta[:, 0]), mask))
        legacy = np.asarray(stats.row_std_legacy(jnp.asarray(beta[:, 0])))
        out = {}
        for layer in range(cfg.n_layers):
            for h in range(cfg.n_heads):
                out[f"fixed/L{layer}/h{h}/row_std"] = float(valid[layer, h])
                out[f"fixed/L{layer}/h{h}/row_std_reference"] = float(legacy[layer, h])
        if not self.main:
            return out
        table = stats.row_std_table(valid, legacy, cfg.head_labels)
        if self.cfg.log.console_diagnostics:
            self.log.print(f"[attention @ step {step}] fixed validation sequence "
                           f"#{self.cfg.data.fixed_sequence}\n{table}")
        if self.cfg.log.attention_figures and self.figures is not None:
            self._figures(step, beta, kl, table)
            if not cfg.diagonal_covariance:
                out.update(self.figures.uniformity(self.model, tokens, self.figure_dirs[-1]))
        return out

    def _figures(self, step: int, beta: np.ndarray, kl: np.ndarray, table: str) -> None:
        cfg = self.cfg.model
        out_dir = self.workdir / "attention" / f"step_{step:06d}"
        out_dir.mkdir(parents=True, exist_ok=True)
        pieces = self.tokenizer.pieces(self.fixed_tokens)
        text = b"".join(pieces).decode("utf-8", errors="replace")
        caption = {"source": f"{self.data.source}, validation window "
                             f"#{self.cfg.data.fixed_sequence}",
                   "text_preview": text, "checkpoint": f"{self.workdir.name} @ step {step}",
                   "self_attention_masked": cfg.mask_self_attention}
        self.figures.attention(AttentionSnapshot(step, beta, kl, pieces, text, cfg, caption, out_dir))
        (out_dir / "row_std.md").write_text(
            f"# Attention row_std at step {step}\n\nSequence (validation window "
            f"#{self.cfg.data.fixed_sequence}):\n\n```\n{text}\n```\n\n{table}\n",
            encoding="utf-8")
        self.figure_dirs.append(out_dir)

    # ------------------------------------------------------------------ checkpoints
    def _meta(self, step: int) -> dict:
        epoch, index = self.batches.position(step) if step >= 0 else (0, 0)
        d = self.cfg.data
        return {
            "step": step,
            "tokenizer": self.tokenizer.to_meta(),
            "data": {"next_step": step, "epoch": epoch, "epoch_batch": index,
                     "shuffle_seed": d.shuffle_seed, "batch_size": d.batch_size,
                     "seq_len": d.seq_len, "source": self.data.summary(),
                     "train_tokens": int(len(self.data.train)),
                     "validation_tokens": int(len(self.data.validation))},
            "rng": {"init_seed": self.cfg.train.seed, "shuffle_seed": d.shuffle_seed,
                    "note": "training draws no random numbers; batches = f(shuffle_seed, step)"},
            "run_config": self.cfg.to_dict(),
            "best": self.best if self.best["step"] is not None else None,
            "eval": self.last_eval,
            "versions": {"jax": jax.__version__, "devices": jax.device_count(),
                         "processes": jax.process_count()},
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }

    def _save(self, step: int, best: bool = False) -> None:
        self._flush()
        self.ckpt.save(step, self.model, self.optimizer, self._meta(step), best=best)

    # ------------------------------------------------------------------ files
    def _write_run_files(self) -> None:
        if not self.main:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "run_config.yaml").write_text(self.cfg.to_yaml(), encoding="utf-8")
        info = {"head_labels": list(self.cfg.model.head_labels), "data": self.data.summary(),
                "devices": [str(d) for d in jax.devices()], "mesh": {DATA_AXIS: jax.device_count()}}
        (self.workdir / "run_info.json").write_text(json.dumps(info, indent=2, ensure_ascii=False),
                                                    encoding="utf-8")

    def _summary(self, status: str, seconds: float) -> dict:
        return {
            "status": status,
            "workdir": str(self.workdir),
            "start_step": self.start_step,
            "step": self.step,
            "resumed_from": self.resumed_from,
            "seconds": seconds,
            "first_train": {k: self.first_train.get(k) for k in ("step", "loss/total", "loss/ce")},
            "last_train": {"step": self.step, **{k: v for k, v in self.last_train.items()
                                                  if k.startswith(("loss/", "ppl", "grad_norm/"))}},
            "eval": {k: v for k, v in self.last_eval.items() if k.startswith("eval/")},
            "best": self.best if self.best["step"] is not None else None,
            "tokens_per_sec": self.tokens_per_sec,
            "train_step_compiles_after_first": self.train_compiles,
            "latest_checkpoint": self.ckpt.latest_step(),
            "paths": {
                "metrics_jsonl": str(self.log.jsonl), "metrics_csv": str(self.log.csv),
                "curves": str(self.workdir / "curves.png"),
                "checkpoints": str(self.workdir / "checkpoints"),
                "best": str(self.workdir / "best"),
                "attention": [str(p) for p in self.figure_dirs],
            },
        }


def train_and_evaluate(run_cfg: RunConfig, workdir: str | Path, hooks: Sequence[Hook] = (),
                       figures: Figures | None = None) -> dict[str, Any]:
    """Train (or resume) the run in ``workdir`` up to ``run_cfg.train.steps``.

    Rerunning with the same ``workdir`` resumes from its last complete checkpoint and continues
    exactly as an uninterrupted run would (same batches, same optimizer state).

    Args:
      run_cfg: the validated run configuration.
      workdir: run directory (created; made absolute).
      hooks: ``(every, fn)`` pairs; ``fn(StepContext)`` runs after every ``every``-th step.
      figures: draws curves and attention figures (``log.curves``, ``log.attention_figures``);
        ``diagnostics.training.FIGURES`` in the CLI; None draws nothing.

    Returns:
      Summary dict: ``status`` (``completed`` | ``interrupted``), ``step``, ``start_step``,
      ``resumed_from``, first/last train losses, last ``eval`` scalars, ``best``,
      ``tokens_per_sec``, ``train_step_compiles_after_first``, ``latest_checkpoint`` and
      ``paths`` of everything written.

    Raises:
      FloatingPointError: NaN/inf in the loss, a gradient or an activation (the message names the
        step, the layer and the tensor; checkpoints written before that step stay intact).
      ConfigError: inconsistent configuration, or a workdir holding another model / data setup.
      gaugeformer.data.corpus.DatasetUnavailableError: the dataset cannot be loaded offline.
    """
    if run_cfg.train.distributed:
        init_distributed()
    return Trainer(run_cfg, workdir, hooks, figures).run()
