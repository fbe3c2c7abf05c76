"""Where a run executes: the device mesh and shardings, multi-host initialisation, the persistent
compilation cache, and a count of compilations.

Parallelism: a 1-D ``jax.sharding.Mesh`` over every device with the axis ``data``. Batches are
sharded along it (each process contributes its rows with ``make_array_from_process_local_data``);
parameters and optimizer state are replicated; XLA inserts the gradient all-reduce. The same code
runs on one CPU, one GPU, a TPU slice and, with ``train.distributed: true`` (which calls
:func:`init_distributed`), on several hosts.
"""

import dataclasses
import os
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
COMPILE_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"


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


class CompileCounter:
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
