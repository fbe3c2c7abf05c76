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
"""

from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from gaugeformer.convert.reference import map_torch_key
from gaugeformer.loss import cross_entropy, free_energy_loss
from gaugeformer.model.lm import run_with_cache
from gaugeformer.testing import golden_error, golden_to_hook, load_reference_fixture

FIXTURES = Path(__file__).parents[1] / "fixtures"
NAMES = ("A_v256", "D_v256", "G_v256", "T_A_v256")
_CACHE: dict = {}


def outputs(name: str):
    """Run the three regimes once per fixture (jitted) and cache everything."""
    if name in _CACHE:
        return _CACHE[name]
    model, cfg, golden = load_reference_fixture(FIXTURES / name)
    tokens, targets = golden["tokens"], golden["targets"]

    @nnx.jit
    def forwards(m, t):
        return (run_with_cache(m, t), run_with_cache(m, t, train=True),
                run_with_cache(m, t, train=True, training_forward=True))

    (lg0, c0), (lg1, c1), (lg2, c2) = forwards(model, tokens)
    caches = {"nograd": {**c0, "logits": lg0}, "grad": {**c1, "logits": lg1},
              "train": {**c2, "logits": lg2}}

    @nnx.jit
    def loss_and_grad(m, t, y):
        return nnx.value_and_grad(lambda m: free_energy_loss(m, t, y, alpha=1.0, lambda_beta=1.0),
                                  has_aux=True)(m)

    (loss, metrics), grads = loss_and_grad(model, tokens, targets)
    out = dict(cfg=cfg, golden=golden, caches=jax.device_get(caches), loss=float(loss),
               metrics={k: float(v) for k, v in metrics.items()}, grads=nnx.to_pure_dict(grads))
    _CACHE[name] = out
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


@pytest.mark.parametrize("name,key", _cases("forward"))
def test_forward_parity(name, key):
    out = outputs(name)
    regime, hook = golden_to_hook(key, out["cfg"].n_layers)
    ours, ref = out["caches"][regime][hook], out["golden"][key]
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    _, err, tol = golden_error(key, ours, ref)
    assert err <= tol, (err, tol)


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
    out = outputs(name)
    ref = float(out["golden"][key])
    if key == "train_loss_total":
        ours = out["loss"]
    else:
        metric = key[len("train_metric_"):].replace("_", "/", 1)
        ours = out["metrics"][metric]
    _, err, tol = golden_error(key, ours, ref)
    assert err <= tol, (ours, ref)


@pytest.mark.parametrize("name,key", _cases("grad"))
def test_gradient_parity(name, key):
    out = outputs(name)
    node = out["grads"]
    for p in map_torch_key(key.split("_", 1)[1]):
        node = node[p]
    _, err, tol = golden_error(key, np.asarray(node), out["golden"][key])
    assert err <= tol, (err, tol)


def test_every_golden_key_is_tested():
    for name in NAMES:
        g = np.load(FIXTURES / name / "golden.npz")
        covered = {k for kind in ("forward", "grad", "loss", "other") for _, k in _golden_keys(name, kind)}
        assert covered == set(g.files), set(g.files) - covered
