import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Subprocesses (scripts/*.py, which have no sys.path lines) import this checkout, not whichever
# copy of the package the environment has installed.
_ROOT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)

from jaxtyping import install_import_hook  # noqa: E402

# Shapes are checked at run time in the tests: every annotated function of gaugeformer.ops is wrapped with
# jaxtyping + beartype, so a wrong shape fails a test instead of broadcasting silently.  The hook must be
# installed before gaugeformer.ops is first imported (importing gaugeformer imports it).
with install_import_hook("gaugeformer.ops", "beartype.beartype"):
    import gaugeformer  # noqa: E402,F401  (its XLA CPU options must precede JAX's backend: gaugeformer/_xla.py)
import jax  # noqa: E402
import pytest  # noqa: E402

# Persistent compile cache: repeated runs on one machine (a developer's, or CI right after) skip XLA compiles.
_CACHE = Path(os.environ.get("GAUGEFORMER_JAX_CACHE", Path.home() / ".cache" / "gaugeformer" / "jax"))
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE_FIXTURES = ("A_v256", "D_v256", "G_v256", "T_A_v256")


@pytest.fixture
def keys():
    """Fresh PRNG keys: ``next(keys)``."""
    def gen():
        k = jax.random.key(0)
        while True:
            k, sub = jax.random.split(k)
            yield sub
    return gen()
