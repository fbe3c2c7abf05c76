"""Parity with the PyTorch reference: every key of every fixture's golden.npz.

Tolerances are :func:`gaugeformer.testing.golden_error`'s (shared with ``convert_checkpoint --validate``):
forward tensors 1e-5 relative to max|ref|, loss terms 1e-5, gradients 1e-4 relative to the norm
(the issue's numbers).  Documented exceptions, all float32 noise established against a float64 evaluation
(see ``gaugeformer/testing.py``):

* KL tensors have an absolute floor of 1e-5.  It matters only for the *trained* fixture T_A_v256, whose
  attention KLs are ~1e-3 (max 0.0124) and are differences of float32 log-det and trace terms of size ~30;
  the reference's own float32 KL differs from float64 by 2.5e-6 absolute (3e-4 relative).
* ``*log_sigma*`` gradients at 1e-3 relative: T_A's ``base_log_sigma_diag`` gradient (norm 2.4e-3) is
  reached only through those KLs (measured 2.8e-4).
* ``attn_kl_grad_L1`` / ``fwa_kl_last`` (A) and ``fwa_ffn_phi_out_last`` (D) at 2e-5.

A forward tensor outside its tolerance still passes when it is float32 noise, shown against float64: our
float32 value is at least as close to ``golden64.npz`` as the reference's own float32 value.  Only the
tiled runs need it: A's σ keys with tiles of 8 are 1.13e-5 from the float32 reference (tolerance 1e-5) but
3.0e-6 from float64, where the reference's own float32 run is 8.4e-6 (and our untiled one 6.7e-6).

Tiling is exact: the fixtures run with the default tile (one tile at N = 32) and again with tiles of 8 and 16
tokens (``attention_tile``), where every non-pairwise forward tensor (captured without the pairwise hooks, so
attention, the VFE FFN and the φ step run in tiles), every loss term and every gradient must match too.
"""

from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from gaugeformer.convert.reference import map_torch_key
from gaugeformer.loss import cross_entropy, free_energy_loss
from gaugeformer.model.lm import run_with_cache
from gaugeformer.model.sow import SowConfig
from gaugeformer.testing import golden_error, golden_to_hook, load_reference_fixture

FIXTURES = Path(__file__).parents[1] / "fixtures"
NAMES = ("A_v256", "D_v256", "G_v256", "T_A_v256")
_CACHE: dict = {}
# (fixture, tile) pairs run with tiles smaller than N = 32, all slow (``make test-slow``: ~25 s warm, ~65 s cold
# each); the default run checks tiled = full in float64 to 1e-10 (tests/model/test_tiled_model.py,
# tests/ops/test_tiling.py), which is stronger than the fixtures' float32 tolerances
TILED: list[tuple[str, int]] = []
TILED_SLOW = [("A_v256", 8), ("A_v256", 16), ("D_v256", 8), ("D_v256", 16), ("G_v256", 8), ("G_v256", 16),
              ("T_A_v256", 8), ("T_A_v256", 16)]
BELIEFS_ONLY = SowConfig(attention=False, ffn=False, beliefs=True)  # no pairwise hook: the model runs tiled
PAIRWISE = ("hook_pattern", "hook_kl", "hook_attn_scores")


def outputs(name: str, tile: int | None = None):
    """Run the three regimes once per fixture and tile (jitted) and cache everything.

    ``tile=None`` keeps the config's default tile and captures every hook; a tile captures only the
    non-pairwise hooks (a pairwise hook would switch the modules to their full-matrix path)."""
    if (name, tile) in _CACHE:
        return _CACHE[name, tile]
    model, cfg, golden = load_reference_fixture(FIXTURES / name, **({} if tile is None else
                                                                   {"attention_tile": tile}))
    tokens, targets = golden["tokens"], golden["targets"]
    sow = SowConfig() if tile is None else BELIEFS_ONLY

    @nnx.jit
    def forwards(m, t):
        return (run_with_cache(m, t, sow=sow), run_with_cache(m, t, train=True, sow=sow),
                run_with_cache(m, t, train=True, training_forward=True, sow=sow))

    (lg0, c0), (lg1, c1), (lg2, c2) = forwards(model, tokens)
    caches = {"nograd": {**c0, "logits": lg0}, "grad": {**c1, "logits": lg1},
              "train": {**c2, "logits": lg2}}

    @nnx.jit
    def loss_and_grad(m, t, y):
        return nnx.value_and_grad(lambda m: free_energy_loss(m, t, y, alpha=1.0, lambda_beta=1.0),
                                  has_aux=True)(m)

    (loss, metrics), grads = loss_and_grad(model, tokens, targets)
    out = dict(name=name, cfg=cfg, golden=golden, caches=jax.device_get(caches), loss=float(loss),
               metrics={k: float(v) for k, v in metrics.items()}, grads=nnx.to_pure_dict(grads))
    _CACHE[name, tile] = out
    return out


def _golden_keys(name, kind):
    g = np.load(FIXTURES / name / "golden.npz")
    n_layers = 1 if name.startswith("D") else 2
    keys = []
    for k in g.files:
        mapped = golden_to_hook(k, n_layers) is not None
        if kind == "forward" and mapped:
            keys.append(k)
        elif kind == "grad" and k.startswith(("grad_", "gradnorm_")):
            keys.append(k)
        elif kind == "loss" and k.startswith(("train_metric_", "train_loss")):
            keys.append(k)
        elif kind == "other" and not mapped and not k.startswith(("grad_", "gradnorm_", "train_")):
            keys.append(k)
    return [(name, k) for k in keys]


def _cases(kind):
    return [pytest.param(n, k, id=f"{n}-{k}") for name in NAMES for n, k in _golden_keys(name, kind)]


def _check_forward(out, key):
    regime, hook = golden_to_hook(key, out["cfg"].n_layers)
    ours, ref = out["caches"][regime][hook], out["golden"][key]
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    _, err, tol = golden_error(key, ours, ref)
    if err > tol:  # float32 noise only if ours is as close to the float64 reference as the reference's own run
        ref64 = np.load(FIXTURES / out["name"] / "golden64.npz")[key]
        ours64_err, ref64_err = golden_error(key, ours, ref64)[1], golden_error(key, ref, ref64)[1]
        assert ours64_err <= ref64_err, (err, tol, ours64_err, ref64_err)


def _check_loss(out, key):
    ref = float(out["golden"][key])
    if key == "train_loss_total":
        ours = out["loss"]
    else:
        metric = key[len("train_metric_"):].replace("_", "/", 1)
        ours = out["metrics"][metric]
    _, err, tol = golden_error(key, ours, ref)
    assert err <= tol, (ours, ref)


def _check_gradient(out, key):
    node = out["grads"]
    for p in map_torch_key(key.split("_", 1)[1]):
        node = node[p]
    _, err, tol = golden_error(key, np.asarray(node), out["golden"][key])
    assert err <= tol, (err, tol)


def _tiled_cases():
    cases = []
    for grid, marks in ((TILED, ()), (TILED_SLOW, (pytest.mark.slow,))):
        for name, tile in grid:
            n_layers = 1 if name.startswith("D") else 2
            for kind in ("forward", "loss", "grad"):
                for _, key in _golden_keys(name, kind):
                    if kind == "forward" and golden_to_hook(key, n_layers)[1].endswith(PAIRWISE):
                        continue
                    cases.append(pytest.param(name, tile, kind, key, marks=marks, id=f"{name}-T{tile}-{key}"))
    return cases


@pytest.mark.parametrize("name,key", _cases("forward"))
def test_forward_parity(name, key):
    _check_forward(outputs(name), key)


@pytest.mark.parametrize("name,tile,kind,key", _tiled_cases())
def test_tiled_parity(name, tile, kind, key):
    """Forward (non-pairwise tensors), loss terms and gradients with tiles smaller than N."""
    check = {"forward": _check_forward, "loss": _check_loss, "grad": _check_gradient}[kind]
    check(outputs(name, tile), key)


@pytest.mark.parametrize("name,key", _cases("other"))
def test_other_keys_parity(name, key):
    """Inputs and the no-grad cross-entropy: the only keys that are not hook tensors."""
    out = outputs(name)
    g = out["golden"]
    if key in ("tokens", "targets"):
        assert g[key].dtype == np.int64 and g[key].shape == g["tokens"].shape
    elif key == "ce_nograd":
        ce = float(cross_entropy(out["caches"]["nograd"]["logits"], g["targets"]))
        _, err, tol = golden_error(key, ce, g[key])
        assert err <= tol, (err, tol)
    else:
        pytest.fail(f"golden key {key!r} is not covered by the parity tests")


@pytest.mark.parametrize("name,key", _cases("loss"))
def test_loss_parity(name, key):
    _check_loss(outputs(name), key)


@pytest.mark.parametrize("name,key", _cases("grad"))
def test_gradient_parity(name, key):
    _check_gradient(outputs(name), key)


def test_every_golden_key_is_tested():
    for name in NAMES:
        g = np.load(FIXTURES / name / "golden.npz")
        covered = {k for kind in ("forward", "grad", "loss", "other") for _, k in _golden_keys(name, kind)}
        assert covered == set(g.files), set(g.files) - covered
