"""XLA CPU settings gaugeformer applies before JAX starts its backend (imported first by ``gaugeformer``).

jax 0.12's CPU compiler hands reductions to YNNPACK ("ynn fusions").  For this model's per-token algebra,
broadcast-multiply-reduce over ``[B, N, H, D, D, D]`` with ``D ≤ 11`` (:mod:`gaugeformer.ops.small`), those
fusions run 3-4× slower than XLA's own loop fusions, and they make config A's forward ~2.5× and its training
step ~2.3× slower end to end (README "Performance").  So, when ``gaugeformer`` is imported before JAX has
started its backend and ``XLA_FLAGS`` does not already choose the option, this appends
``--xla_cpu_experimental_ynn_fusion_type=`` (no YNN fusions) to ``XLA_FLAGS``.  Only the CPU compiler reads
the option; GPU and TPU programs are unaffected.

* A user's own choice wins: any ``xla_cpu_experimental_ynn_fusion_type`` already in ``XLA_FLAGS`` is kept.
* ``GAUGEFORMER_XLA_DEFAULTS=0`` leaves ``XLA_FLAGS`` alone.
* XLA aborts the process on a flag it does not know, so the option is only added for the jaxlib versions it
  was measured on (``JAXLIB_VERSIONS``); with another jaxlib nothing changes (re-measure with ``make bench``).
* When JAX's CPU backend has already started (JAX code ran before ``import gaugeformer``) the flag can no longer
  take effect, and a warning says so and how to fix it.
"""

import os
import warnings

OPTION = "xla_cpu_experimental_ynn_fusion_type"
FLAG = f"--{OPTION}="
JAXLIB_VERSIONS = ((0, 12), (0, 13))  # [first, past-the-end) minor versions measured


def _jaxlib_version() -> tuple[int, int]:
    import jaxlib

    return tuple(int(x) for x in jaxlib.__version__.split(".")[:2])


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a jax without the private probe: assume not started
        return False


def apply_cpu_defaults(environ=os.environ) -> bool:
    """Append :data:`FLAG` to ``XLA_FLAGS`` where that is safe and takes effect; True when it did."""
    flags = environ.get("XLA_FLAGS", "")
    if environ.get("GAUGEFORMER_XLA_DEFAULTS", "1") == "0" or OPTION in flags:
        return False
    first, end = JAXLIB_VERSIONS
    if not first <= _jaxlib_version() < end:
        return False
    if _backend_started():
        import jax

        if jax.default_backend() == "cpu":
            warnings.warn(
                "gaugeformer was imported after JAX started its CPU backend, so XLA's YNN reduce fusions stay on "
                "and the model runs ~2.5x slower on CPU; import gaugeformer before running JAX code, or set "
                f"XLA_FLAGS={FLAG} before starting Python", RuntimeWarning, stacklevel=3)
        return False
    environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
    return True
