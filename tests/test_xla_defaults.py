"""gaugeformer/_xla.py: the CPU compiler option is applied when it can take effect, and only then."""

import json
import subprocess
import sys

import pytest

from gaugeformer import _xla

_PROBE = """
import json, jax, jax.numpy as jnp
import gaugeformer, os
from gaugeformer.ops.small import mm
a = jnp.ones((64, 5, 5))
hlo = jax.jit(mm).lower(a, a).compile().as_text()
print(json.dumps(dict(flags=os.environ.get("XLA_FLAGS", ""), ynn="ynn_fusion" in hlo)))
"""


def _probe(**env):
    import os

    full = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "GAUGEFORMER_XLA_DEFAULTS")} | env
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=full, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not _xla.JAXLIB_VERSIONS[0] <= _xla._jaxlib_version() < _xla.JAXLIB_VERSIONS[1],
                    reason="the option is only applied on the measured jaxlib versions")
def test_import_turns_off_ynn_fusions_in_a_fresh_process():
    on = _probe()
    assert on["flags"] == _xla.FLAG and not on["ynn"]
    off = _probe(GAUGEFORMER_XLA_DEFAULTS="0")  # the probe can see YNN fusions: without the option they exist
    assert off["flags"] == "" and off["ynn"]
    mine = _probe(XLA_FLAGS=f"--{_xla.OPTION}=dot")  # a user's own choice is kept as written
    assert mine["flags"] == f"--{_xla.OPTION}=dot"


def test_user_choice_opt_out_and_unmeasured_jaxlib_leave_flags_alone(monkeypatch):
    monkeypatch.setattr(_xla, "_backend_started", lambda: False)
    monkeypatch.setattr(_xla, "_jaxlib_version", lambda: _xla.JAXLIB_VERSIONS[0])
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert _xla.apply_cpu_defaults(env)
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {_xla.FLAG}"
    for env in ({"XLA_FLAGS": f"--{_xla.OPTION}=reduce"}, {"GAUGEFORMER_XLA_DEFAULTS": "0"}):
        before = dict(env)
        assert not _xla.apply_cpu_defaults(env) and env == before
    monkeypatch.setattr(_xla, "_jaxlib_version", lambda: _xla.JAXLIB_VERSIONS[1])  # XLA would abort on it
    env = {}
    assert not _xla.apply_cpu_defaults(env) and env == {}


def test_late_import_warns_with_the_fix(monkeypatch):
    import jax.numpy as jnp

    jnp.ones(2).block_until_ready()  # this test process's backend is running
    monkeypatch.setattr(_xla, "_jaxlib_version", lambda: _xla.JAXLIB_VERSIONS[0])
    env = {}
    with pytest.warns(RuntimeWarning, match="XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type="):
        assert not _xla.apply_cpu_defaults(env)
    assert env == {}
