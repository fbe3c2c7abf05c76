"""What the training loop plugs in around the steps: stop signals, a profiler trace, TensorBoard.

* :class:`GracefulInterrupt`: Ctrl-C (SIGINT) and SIGTERM (how TPU VMs and schedulers announce a
  preemption) finish the current step, save a checkpoint and return; a second signal aborts.
  Multi-host preemption notices come through orbax's ``CheckpointManager.reached_preemption``
  (a sync point, so every host stops at the same step), checked by the loop after every step.
* :class:`StepProfiler`: a ``jax.profiler`` trace of the steps ``train.profile_steps``.
* :func:`open_tensorboard`: the optional TensorBoard writer (``log.tensorboard``); it mirrors
  ``metrics.jsonl``, which stays the source of truth.
"""

import signal
import threading
from pathlib import Path

import jax

from gaugeformer.train.config import ConfigError


class GracefulInterrupt:
    """First Ctrl-C or SIGTERM: finish the current step, save, return. A second one: abort.

    SIGTERM is how TPU VMs and most schedulers announce a preemption; ``signal`` records which
    one arrived (``"SIGINT"`` or ``"SIGTERM"``).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.signal: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal = signal.Signals(signum).name
        what = "Ctrl-C" if signum == signal.SIGINT else self.signal
        print(f"\n[train] {what}: saving a checkpoint after this step ({what} again to abort)",
              flush=True)

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        return False


class StepProfiler:
    """``jax.profiler`` trace of train steps ``first … last`` (1-based; ``train.profile_steps``)
    into ``directory`` (``plugins/profile/<time>/*.xplane.pb``, for TensorBoard's profile tab or
    Perfetto)."""

    def __init__(self, directory: Path, span: tuple[int, ...] | None):
        self.directory, self.span, self.active = directory, span, False

    def before(self, step: int) -> None:
        if self.span and step == self.span[0]:
            jax.profiler.start_trace(str(self.directory))
            self.active = True

    def after(self, step: int, outputs) -> None:
        if self.active and step == self.span[1]:
            jax.block_until_ready(outputs)
            self.stop()

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


def open_tensorboard(directory: Path, start_step: int):
    """A tensorboardX ``SummaryWriter``; a resumed run purges events past its checkpoint."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError as err:  # optional dependency
        raise ConfigError("log.tensorboard needs tensorboardX: pip install "
                          "'gaugeformer[tensorboard]' (or set log.tensorboard=false)") from err
    return SummaryWriter(str(directory), purge_step=start_step + 1 if start_step else None)
