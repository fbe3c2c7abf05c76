"""Parity with the PyTorch reference: every key of every fixture's golden.npz.

Tolerances (issue: "forward within 1e-5 relative to each tensor's max magnitude, loss terms within 1e-5,
gradients within 1e-4 relative to the gradient's norm").  Two documented exceptions, both in the *trained*
fixture T_A_v256, where the attention KLs are ~1e-3 (max 0.0124) and are differences of float32 log-det and
trace terms of size ~30:

* every KL key of T_A_v256 is compared with ``atol = 1e-5`` instead.  The reference's own float32 KL differs
  from a float64 evaluation of the same formula by 2.5e-6 absolute (3e-4 relative), so a 1e-5 *relative*
  match would have to reproduce the reference's rounding, not its math.  β, which is what KL feeds, passes
  at 1e-5 relative.
* ``grad_token_embed.base_log_sigma_diag`` of T_A_v256 (norm 2.4e-3, reached only through those KLs) is
  compared at 1e-3 relative to its norm, for the same reason (measured 2.8e-4).
"""

from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from gaugeformer.convert.reference import map_torch_key
from gaugeformer.loss import cross_entropy, free_energy_loss
from gaugeformer.model.lm import run_with_cache
from gaugeformer.testing import golden_to_hook, load_reference_fixture, rel_err

FIXTURES = Path(__file__).parents[1] / "fixtures"
NAMES = ("A_v256", "D_v256", "G_v256", "T_A_v256")
FORWARD_RTOL = 1e-5
GRAD_RTOL = 1e-4
LOSS_TOL = 1e-5
KL_ATOL_TRAINED = 1e-5
GRAD_EXCEPTIONS = {("T_A_v256", "grad_token_embed.base_log_sigma_diag"): 1e-3}

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
    if name == "T_A_v256" and "kl" in key:
        np.testing.assert_allclose(ours, ref, rtol=0, atol=KL_ATOL_TRAINED)
    else:
        assert rel_err(ours, ref) <= FORWARD_RTOL, rel_err(ours, ref)


@pytest.mark.parametrize("name,key", _cases("other"))
def test_other_keys_parity(name, key):
    """Inputs and the no-grad cross-entropy: the only keys that are not hook tensors."""
    out = outputs(name)
    g = out["golden"]
    if key in ("tokens", "targets"):
        assert g[key].dtype == np.int64 and g[key].shape == g["tokens"].shape
    elif key == "ce_nograd":
        ce = float(cross_entropy(out["caches"]["nograd"]["logits"], g["targets"]))
        assert abs(ce - float(g[key])) <= LOSS_TOL * max(1.0, abs(float(g[key])))
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
    assert abs(ours - ref) <= LOSS_TOL * max(1.0, abs(ref)), (ours, ref)


@pytest.mark.parametrize("name,key", _cases("grad"))
def test_gradient_parity(name, key):
    out = outputs(name)
    node = out["grads"]
    for p in map_torch_key(key.split("_", 1)[1]):
        node = node[p]
    ours, ref = np.asarray(node, np.float64), np.asarray(out["golden"][key], np.float64)
    if key.startswith("gradnorm_"):
        assert abs(np.linalg.norm(ours) - ref) <= GRAD_RTOL * ref
        return
    tol = GRAD_EXCEPTIONS.get((name, key), GRAD_RTOL)
    err = np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-30)
    assert err <= tol, err


def test_every_golden_key_is_tested():
    for name in NAMES:
        g = np.load(FIXTURES / name / "golden.npz")
        covered = {k for kind in ("forward", "grad", "loss", "other") for _, k in _golden_keys(name, kind)}
        assert covered == set(g.files), set(g.files) - covered
