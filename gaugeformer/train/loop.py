"""The training loop: ``train_and_evaluate(run_cfg, workdir) -> summary``.

One jitted train step (:mod:`gaugeformer.train.steps`) computes the free-energy loss, its gradients,
the optimizer update and every logged scalar (:mod:`gaugeformer.train.metrics`). The host
dispatches step *s* and only then fetches step *s − 1*'s scalars, so the device never waits for
Python (nanodo's pattern); before a checkpoint or an evaluation the pending scalars are fetched
first, so a checkpoint is only ever written from a state whose every step was checked.

Work at step boundaries, in this order: NaN/inf check and logging of the previous step; evaluation
(``train.eval_every`` and the last step: CE/PPL over the whole validation split, attention figures
and the row_std table on a fixed validation sequence, curves, best checkpoint;
:mod:`gaugeformer.train.evaluation`); checkpoint (``train.checkpoint_every``, the last step, Ctrl-C,
SIGTERM, an orbax preemption point; see :mod:`gaugeformer.train.integrations`); user hooks
``(every, fn)``.

The pieces: the mesh, shardings and multi-host setup (:mod:`gaugeformer.train.runtime`); the
starting state, resumed or fresh (:mod:`gaugeformer.train.resume`); the log files
(:mod:`gaugeformer.train.runlog`).

Files in the workdir: ``run_config.yaml`` (resolved), ``metrics.jsonl`` (one JSON object per logged
step, ``"split"`` = ``train`` | ``eval``), ``metrics.csv``, ``curves.png``,
``attention/step_XXXXXX/`` (figures and ``row_std.md``), ``checkpoints/``, ``best/``, and optionally
``tensorboard/`` (``log.tensorboard``) and ``profile/`` (``train.profile_steps``).
"""

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gaugeformer import checkpoint as ckpt_lib
from gaugeformer.data.batches import EvalBatches, TrainBatches
from gaugeformer.data.corpus import TokenDataset, load_embedded_dataset, load_wikitext
from gaugeformer.data.tokenizer import Tokenizer
from gaugeformer.model.lm import GaugeTransformerLM
from gaugeformer.train import metrics as mlib
from gaugeformer.train.config import ConfigError, DataConfig, RunConfig
from gaugeformer.train.evaluation import Figures, fixed_attention, save_attention, validation_loss
from gaugeformer.train.integrations import GracefulInterrupt, StepProfiler
from gaugeformer.train.optim import build_optimizer
from gaugeformer.train.resume import start_state
from gaugeformer.train.runlog import RunLog
from gaugeformer.train.runtime import DATA_AXIS, CompileCounter, Placement, init_distributed
from gaugeformer.train.steps import LossWeights, train_step


def load_data(cfg: DataConfig) -> TokenDataset:
    """Token arrays of the configured corpus (raises ``DatasetUnavailableError`` with a hint)."""
    if cfg.dataset == "embedded":
        return load_embedded_dataset(cfg.tokenizer, val_fraction=cfg.val_fraction,
                                     vocab_size=cfg.vocab_size)
    return load_wikitext(cfg.dataset, tokenizer=cfg.tokenizer, data_files=cfg.data_files,
                         cache_dir=cfg.cache_dir, hf_cache_dir=cfg.hf_cache_dir,
                         vocab_size=cfg.vocab_size)



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
        try:
            start = start_state(run_cfg, self.ckpt, self.tx, self.place, self.log_early)
        except BaseException:
            self.ckpt.close()
            raise
        self.model, self.optimizer, self.start_step = start.model, start.optimizer, start.step
        self.resumed_from = start.resumed_from
        if start.best is not None:
            self.best = start.best
        if start.last_eval is not None:
            self.last_eval = start.last_eval
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

    def log_early(self, text: str) -> None:
        """Print on process 0 (before the progress bar exists)."""
        if self.main:
            print(text, flush=True)

    # ------------------------------------------------------------------ loop
    def run(self) -> dict:
        """Train from ``self.start_step`` to ``train.steps``; returns the summary."""
        t0 = time.perf_counter()
        status = "completed"
        CompileCounter.install()
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
        before = CompileCounter.count
        self.profiler.before(index + 1)
        metrics = train_step(self.model, self.optimizer, x, y, weights=self.weights,
                             optim_cfg=self.cfg.optim)
        self.profiler.after(index + 1, metrics)
        if index > self.start_step:
            self.train_compiles += CompileCounter.count - before
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
        rec = {"split": "eval", "step": step, **validation_loss(
            self.model, self.evals, self.place, self.weights, self.cfg.data.max_eval_batches)}
        rec.update(self._attention_report(step))
        rec["eval/seconds"] = time.perf_counter() - t0
        self.last_eval = rec
        self.log.write(rec)
        self.log.print(f"[eval step {step}] CE {rec['eval/ce']:.4f} | PPL {rec['eval/ppl']:.2f} | "
                       f"free energy {rec['eval/loss_total']:.4f} | {rec['eval/tokens']:,} tokens "
                       f"in {rec['eval/batches']} batches ({rec['eval/seconds']:.1f}s)")
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
        cfg = self.cfg.model
        tokens = self.place.replicate(jnp.asarray(self.fixed_tokens[None]))
        fixed = fixed_attention(self.model, cfg, tokens)
        out = fixed.scalars()
        if not self.main:
            return out
        if self.cfg.log.console_diagnostics:
            self.log.print(f"[attention @ step {step}] fixed validation sequence "
                           f"#{self.cfg.data.fixed_sequence}\n{fixed.table(cfg.head_labels)}")
        if self.cfg.log.attention_figures and self.figures is not None:
            out_dir = self.workdir / "attention" / f"step_{step:06d}"
            save_attention(self.figures, fixed, step=step, tokens=self.fixed_tokens,
                           tokenizer=self.tokenizer, cfg=cfg, source=self.data.source,
                           checkpoint=f"{self.workdir.name} @ step {step}",
                           window=self.cfg.data.fixed_sequence, out_dir=out_dir)
            self.figure_dirs.append(out_dir)
            if not cfg.diagonal_covariance:
                out.update(self.figures.uniformity(self.model, tokens, out_dir))
        return out

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
