"""scripts/convert_checkpoint.py, gaugeformer.convert.convert and .validation: conversion, config
recovery, optimizer moments, orbax layout, validation and bad input.

JAX compiles dominate the runtime: only T_A_v256 and G_v256 are validated against their whole
golden.npz here (A_v256 and D_v256 by logits); the four-fixture CLI run is ``@pytest.mark.slow``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from test_torch_pt import Builder, FakeTensor, write_pt  # same directory (pytest's rootdir import)

from gaugeformer import checkpoint as checkpoint_io
from gaugeformer.config import ModelConfig, from_reference_dict
from gaugeformer.convert import convert as cv
from gaugeformer.convert.reference import map_torch_key
from gaugeformer.convert.torch_pt import load_pt, split_checkpoint
from gaugeformer.testing import FORWARD_RTOL, rel_err
from gaugeformer.train.optim import build_optimizer, make_optimizer

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
NAMES = ("A_v256", "D_v256", "G_v256", "T_A_v256")
STATUS = re.compile(r"^max_rel_err=(\S+) status=(pass|fail) \(\d+ pass, \d+ pass within float32 rounding, "
                    r"\d+ fail\)$")


def _run(*args, **kwargs) -> tuple[int, list[str]]:
    """``cv.run`` with the log captured."""
    lines: list[str] = []
    rc = cv.run(*args, log=lines.append, **kwargs)
    return rc, lines


def _state_dict(name: str) -> dict:
    return split_checkpoint(load_pt(FIXTURES / name / "best_model.pt"))["model_state_dict"]


def _reference_config(name: str) -> ModelConfig:
    return from_reference_dict(json.loads((FIXTURES / name / "model_config.json").read_text()))


def _values_by_torch_key(model, state_dict: dict, cfg: ModelConfig):
    """Yield ``(torch key, ours, theirs)`` for every saved parameter and buffer."""
    pure = nnx.to_pure_dict(nnx.state(model))
    for key, value in state_dict.items():
        path = map_torch_key(key)
        if path is None or (cfg.tie_embeddings and path == ("out_proj",)):
            continue
        node = pure
        for p in path:
            node = node[p]
        yield key, np.asarray(node), value


def _load(out: Path):
    """``(model, cfg, pure optax state | None, meta)`` of a converted directory, through the one
    checkpoint reader (:func:`gaugeformer.checkpoint.restore`)."""
    restored = checkpoint_io.restore(out, optimizer=True)
    model = checkpoint_io.model_from_restored(restored)
    opt_state = None
    if restored.opt_state is not None:
        opt_state = nnx.as_pure(checkpoint_io.optimizer_from_restored(restored, model).opt_state)
    return model, restored.model_config, opt_state, restored.meta


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: "), err
    return err


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """``get(name) -> (rc, log lines, out dir)``: each fixture converted once, with no flags."""
    cache: dict[str, tuple[int, list[str], Path]] = {}
    base = tmp_path_factory.mktemp("converted")

    def get(name: str):
        if name not in cache:
            out = base / name
            rc, lines = _run(FIXTURES / name / "best_model.pt", out)
            cache[name] = (rc, lines, out)
        return cache[name]

    return get


# =============================================================================================
# Every fixture, no flags
# =============================================================================================


@pytest.mark.parametrize("name", NAMES)
def test_every_fixture_converts_with_no_flags(converted, name):
    rc, lines, out = converted(name)
    assert rc == 0, lines
    assert any("model config: model_config.json beside the checkpoint" in line for line in lines)
    model, cfg, opt_state, meta = _load(out)
    assert cfg == _reference_config(name)
    sd = _state_dict(name)
    for key, ours, theirs in _values_by_torch_key(model, sd, cfg):
        np.testing.assert_array_equal(ours, theirs, err_msg=key)
    assert meta["format"] == cv.FORMAT and meta["converted_from"].endswith("best_model.pt")
    # the pickled PosixPath of the training config arrives as a plain string
    assert meta["training_config"]["checkpoint_dir"] == "checkpoints_publication/ffn_VFE_dynamic"
    assert meta["has_opt_state"] and opt_state is not None  # every fixture saves an AdamW state
    assert meta["step"] == (300 if name == "T_A_v256" else 0)
    assert meta["reference_step"] == (299 if name == "T_A_v256" else 0)
    assert sorted(p.name for p in (out / str(meta["step"])).iterdir() if not p.name.startswith("_")
                  ) == ["commit_success.txt", "config", "meta", "opt_state", "params"]
    # the config item is plain JSON, readable without orbax
    plain = json.loads((out / str(meta["step"]) / "config" / "metadata").read_text())
    assert ModelConfig.from_dict(plain) == cfg


@pytest.mark.parametrize("name", ["A_v256", "D_v256"])
def test_converted_checkpoint_gives_fixture_logits(converted, name):
    rc, _, out = converted(name)
    assert rc == 0
    model, _, _, _ = _load(out)
    golden = np.load(FIXTURES / name / "golden.npz")
    logits = nnx.jit(lambda m, t: m(t))(model, golden["tokens"])
    assert rel_err(logits, golden["logits"]) <= FORWARD_RTOL


@pytest.mark.parametrize("name", ["T_A_v256", pytest.param("G_v256", marks=pytest.mark.slow)])
def test_validate_passes(tmp_path, capsys, name):
    report = tmp_path / "report.json"
    rc = cv.run(FIXTURES / name / "best_model.pt", tmp_path / "out",
                validate=FIXTURES / name / "golden.npz", json_out=report)
    lines = capsys.readouterr().out.strip().splitlines()
    match = STATUS.match(lines[-1])
    assert rc == 0 and match and match.group(2) == "pass", lines[-5:]
    data = json.loads(report.read_text())
    assert data["status"] == "pass"
    golden = np.load(FIXTURES / name / "golden.npz")
    compared = {t["key"] for t in data["validation"][0]["tensors"]}
    assert compared == set(golden.files) - {"tokens", "targets"}  # every golden tensor is checked
    assert float(match.group(1)) == pytest.approx(data["validation"][0]["max_rel_err"], rel=1e-3)


def test_validate_fails_and_exits_1(tmp_path, capsys):
    golden = dict(np.load(FIXTURES / "T_A_v256" / "golden.npz"))
    bad = {k: golden[k] for k in ("tokens", "targets", "logits")}
    bad["logits"] = bad["logits"] * 1.001
    np.savez(tmp_path / "bad.npz", **bad)
    rc = cv.run(FIXTURES / "T_A_v256" / "best_model.pt", tmp_path / "out",
                validate=tmp_path / "bad.npz")
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 1 and STATUS.match(lines[-1]).group(2) == "fail"
    assert any(line.strip().startswith("FAIL  logits") for line in lines)
    # no golden64 beside bad.npz: the float64 evaluation bounds the reference's rounding by ours
    assert any("err(ours64,ref32)" in line for line in lines if "FAIL  logits" in line)


def _env_with_compile_cache() -> dict:
    """The test session's persistent XLA cache (tests/conftest.py) for a subprocess, too."""
    env = dict(os.environ)
    if jax.config.jax_compilation_cache_dir:
        env["JAX_COMPILATION_CACHE_DIR"] = str(jax.config.jax_compilation_cache_dir)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    return env


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_cli_validates_every_fixture(tmp_path, name):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "convert_checkpoint.py"),
         str(FIXTURES / name / "best_model.pt"), "--out", str(tmp_path / "out"),
         "--validate", str(FIXTURES / name / "golden.npz"), "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, cwd=ROOT, timeout=900, env=_env_with_compile_cache())
    last = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0 and STATUS.match(last).group(2) == "pass", proc.stdout[-2000:]


def test_script_converts(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "convert_checkpoint.py"),
         str(FIXTURES / "D_v256" / "best_model.pt"), "--out", str(tmp_path / "d"),
         "--no-optimizer"],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote " in proc.stdout
    meta = json.loads((tmp_path / "d" / "0" / "meta" / "metadata").read_text())
    assert meta["has_opt_state"] is False


# =============================================================================================
# Config recovery
# =============================================================================================

_STRUCTURAL = ("vocab_size", "embed_dim", "n_layers", "max_seq_len", "irreps", "gauge_fixed_priors",
               "tie_embeddings", "pos_encoding_mode", "use_positional_embedding", "use_layernorm",
               "profile", "basis", "pad_heads", "ffn")


@pytest.mark.parametrize("name", ["A_v256", "G_v256"])
def test_config_inferred_from_the_weights(tmp_path, name):
    shutil.copy(FIXTURES / name / "best_model.pt", tmp_path / "best_model.pt")
    rc, lines = _run(tmp_path / "best_model.pt", tmp_path / "out")
    assert rc == 0, lines
    text = "\n".join(lines)
    assert "model config: inferred from the state dict" in text
    assert "assumed: kappa_beta=" in text and "assumed: evolve_phi=True" in text
    _, cfg, _, _ = _load(tmp_path / "out")
    want = _reference_config(name)
    assert {k: getattr(cfg, k) for k in _STRUCTURAL} == {k: getattr(want, k) for k in _STRUCTURAL}
    assert cfg.kappa_beta == pytest.approx(want.kappa_beta)
    assert cfg.alpha == want.alpha and cfg.phi_lr == want.phi_lr  # from the training config
    assert cfg.evolve_sigma == want.evolve_sigma  # G: log σ buffer shape; A: assumed (and right)
    if name == "A_v256":  # a default train_publication run: every field is recovered
        assert cfg == want
    else:  # settings without weights take the model defaults, and the summary says so
        assert "pos_encoding_mode='sinusoidal'" in text and cfg.pos_encoding_scale == 0.1
        assert (cfg.use_residual, cfg.mask_self_attention, cfg.alibi_slope) == (False, False, None)
        assert "use_residual=False" in text


def test_experiment_config_is_resolved(tmp_path):
    shutil.copy(FIXTURES / "A_v256" / "best_model.pt", tmp_path / "best_model.pt")
    exp = json.loads((FIXTURES / "A_v256" / "experiment_config.json").read_text())
    exp["config"]["vocab_size"] = 2_000_000  # as a real run writes it: before the tokenizer
    exp["config"].pop("kappa_beta", None)  # and before κ is auto-scaled
    (tmp_path / "experiment_config.json").write_text(json.dumps(exp))
    rc, lines = _run(tmp_path / "best_model.pt", tmp_path / "out")
    assert rc == 0, lines
    text = "\n".join(lines)
    assert "experiment_config.json beside the checkpoint" in text
    assert "vocab_size=256 from token_embed.phi_embed.weight" in text and "2000000" in text
    assert "written before κ is auto-scaled" in text
    _, cfg, _, _ = _load(tmp_path / "out")
    assert cfg == _reference_config("A_v256")
    assert cfg.kappa_beta == pytest.approx(19 / 11)


def test_explicit_config_file_yaml_and_gaugeformer_json(tmp_path):
    want = _reference_config("D_v256")
    (tmp_path / "c.json").write_text(want.to_json())
    ckpt = FIXTURES / "D_v256" / "best_model.pt"
    rc, lines = _run(ckpt, tmp_path / "a", config=tmp_path / "c.json")
    assert rc == 0 and any("--config" in line for line in lines)
    import yaml

    ref = json.loads((FIXTURES / "D_v256" / "model_config.json").read_text())
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(ref, allow_unicode=True))
    rc, _ = _run(FIXTURES / "D_v256" / "best_model.pt", tmp_path / "b", config=tmp_path / "c.yaml")
    assert rc == 0
    assert _load(tmp_path / "a")[1] == _load(tmp_path / "b")[1] == want


def test_contradicting_config_names_keys_and_both_shapes(tmp_path, capsys):
    bad = _reference_config("A_v256").replace(n_layers=3, vocab_size=300)
    (tmp_path / "c.json").write_text(bad.to_json())
    rc = cv.run(FIXTURES / "A_v256" / "best_model.pt", tmp_path / "out", config=tmp_path / "c.json",
                log=lambda m: None)
    err = _one_error_line(capsys)
    assert rc == 2 and not (tmp_path / "out").exists()
    assert "token_embed.phi_embed.weight: checkpoint (256, 3) vs config (300, 3)" in err
    assert "out_proj.weight: checkpoint (256, 19) vs config (300, 19)" in err
    assert "1 missing key [transformer.blocks.2.ffn.variational_ffn.lr]" in err


def test_contradicting_buffer_values(tmp_path, capsys):
    """G's config says sinusoidal; the same weights with A's learned pos_phi contradict it."""
    sd = _state_dict("G_v256")
    sd["pos_encoding.pos_phi"] = _state_dict("A_v256")["pos_encoding.pos_phi"]
    path = tmp_path / "g.safetensors"
    _save_safetensors(path, sd, {"model_config": (FIXTURES / "G_v256" / "model_config.json")
                                 .read_text()})
    rc = cv.run(path, tmp_path / "out", log=lambda m: None)
    err = _one_error_line(capsys)
    assert rc == 2 and "pos_encoding.pos_phi" in err and "pos_encoding_mode='sinusoidal'" in err


# =============================================================================================
# Other input formats
# =============================================================================================


def _save_safetensors(path: Path, sd: dict, metadata: dict | None = None) -> None:
    from safetensors.numpy import save_file

    tensors, seen = {}, {}
    for key, value in sd.items():
        if id(value) in seen:  # safetensors refuses shared tensors: drop the tied duplicate
            continue
        seen[id(value)] = key
        tensors[key] = np.array(value)  # (np.ascontiguousarray would make 0-d arrays 1-d)
    save_file(tensors, str(path), metadata=metadata)


@pytest.mark.parametrize("where", ["metadata", "sidecar"])
def test_safetensors_with_json_config(tmp_path, where):
    name = "G_v256"  # tied: the duplicate out_proj.weight is dropped on export
    sd = _state_dict(name)
    text = (FIXTURES / name / "model_config.json").read_text()
    path = tmp_path / "model.safetensors"
    metadata = {"model_config": text, "step": "7"} if where == "metadata" else None
    _save_safetensors(path, sd, metadata)
    if where == "sidecar":
        (tmp_path / "model.json").write_text(text)
    rc, lines = _run(path, tmp_path / "out")
    assert rc == 0, lines
    model, cfg, opt_state, meta = _load(tmp_path / "out")
    assert cfg == _reference_config(name) and opt_state is None
    assert meta["step"] == (7 if where == "metadata" else 0)
    for key, ours, theirs in _values_by_torch_key(model, sd, cfg):
        np.testing.assert_array_equal(ours, theirs, err_msg=key)


def _write_torch_like(path: Path, sd: dict, **top) -> None:
    b = Builder()

    def tensor(v):  # Builder.tensor gives 0-d arrays a stride; torch writes ()
        return FakeTensor(b.storage(v.reshape(1)), 0, (), ()) if v.ndim == 0 else b.tensor(v)

    tensors = collections.OrderedDict((k, tensor(v)) for k, v in sd.items())
    obj = tensors if not top else {"model_state_dict": tensors, **top}
    write_pt(path, obj, b)


def test_older_format_with_model_config_inside(tmp_path):
    """evaluate_checkpoint.py's format: ``config`` is the model dict; no side files."""
    ref = json.loads((FIXTURES / "T_A_v256" / "model_config.json").read_text())
    _write_torch_like(tmp_path / "old.pt", _state_dict("T_A_v256"), config=ref, step=41)
    rc, lines = _run(tmp_path / "old.pt", tmp_path / "out")
    assert rc == 0, lines
    assert any("the checkpoint's 'config' (older format)" in line for line in lines)
    _, cfg, opt_state, meta = _load(tmp_path / "out")
    assert cfg == _reference_config("T_A_v256") and opt_state is None and meta["step"] == 41


def test_bare_state_dict(tmp_path):
    """validate_attention.py's format: a bare state dict, config beside it."""
    _write_torch_like(tmp_path / "bare.pt", _state_dict("D_v256"))
    shutil.copy(FIXTURES / "D_v256" / "model_config.json", tmp_path)
    rc, lines = _run(tmp_path / "bare.pt", tmp_path / "out")
    assert rc == 0, lines
    assert _load(tmp_path / "out")[1] == _reference_config("D_v256")


# =============================================================================================
# AdamW -> optax
# =============================================================================================

# T_A_v256's torch parameter ids (named_parameters() order inside each group; see KEYS.md).
T_A_IDS = {0: "token_embed.phi_embed.weight", 1: "pos_encoding.pos_phi", 2: "token_embed.base_mu",
           3: "token_embed.base_log_sigma_diag", 4: "token_embed.pos_embed.weight",
           5: "transformer.blocks.0.ffn.variational_ffn.lr",
           6: "transformer.blocks.1.ffn.variational_ffn.lr", 7: "out_proj.weight"}
LABELS = {"phi_embed": "phi", "ffn": "ffn", "output": "output"}


def _at(tree, path):
    for p in path:
        tree = tree[p]
    return np.asarray(tree, np.float64)


def test_adamw_step_matches_torch_formula(converted):
    """One optax step from the converted state == torch AdamW's step, computed by hand in numpy."""
    rc, _, out = converted("T_A_v256")
    assert rc == 0
    ckpt = split_checkpoint(load_pt(FIXTURES / "T_A_v256" / "best_model.pt"))
    torch_opt, sd = ckpt["optimizer_state_dict"], ckpt["model_state_dict"]
    model, _, opt_state, meta = _load(out)
    # max_steps=300 puts the lr at step 300 at ~0; a longer schedule keeps the update visible
    ocfg = dataclasses.replace(checkpoint_io.optim_config_of(meta), max_steps=20000)
    assert (ocfg.phi_lr, ocfg.ffn_lr, ocfg.weight_decay, ocfg.warmup_steps) == (0.05, 0.2, 0.01, 25)
    tx = make_optimizer(ocfg)
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    rng = np.random.default_rng(0)
    grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
    updates, new_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)

    gnorm = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in jax.tree.leaves(grads)))
    coef = min(1.0, ocfg.grad_clip / (gnorm + 1e-6))  # clip_grad_norm_
    assert coef < 1.0
    checked = 0
    for group in torch_opt["param_groups"]:
        label = LABELS[group["name"]]
        adam = new_state[1].inner_states[label].inner_state[0]
        b1, b2 = group["betas"]
        for pid in group["params"]:
            key, st = T_A_IDS[pid], torch_opt["state"][pid]
            path = map_torch_key(key)
            t = float(st["step"])
            factor = 0.5 * (1 + np.cos(3.14159 * (t - 25) / (20000 - 25)))  # LambdaLR at step t
            lr, wd = group["initial_lr"] * factor, group["weight_decay"]
            p0 = np.asarray(sd[key], np.float64)
            g = _at(grads, path) * coef
            m = b1 * np.asarray(st["exp_avg"], np.float64) + (1 - b1) * g
            v = b2 * np.asarray(st["exp_avg_sq"], np.float64) + (1 - b2) * g * g
            bc1, bc2 = 1 - b1 ** (t + 1), 1 - b2 ** (t + 1)
            p = p0 * (1 - lr * wd) - (lr / bc1) * m / (np.sqrt(v) / np.sqrt(bc2) + group["eps"])
            np.testing.assert_allclose(_at(adam.mu, path), m, rtol=1e-5, atol=1e-9, err_msg=key)
            np.testing.assert_allclose(_at(adam.nu, path), v, rtol=1e-5, atol=1e-12, err_msg=key)
            step = _at(new_params, path) - p0
            assert np.abs(p - p0).max() > 1e-3, key  # a real step, not a no-op
            np.testing.assert_allclose(step, p - p0, rtol=1e-4, atol=2e-6, err_msg=key)
            assert int(adam.count) == t + 1
            checked += 1
    assert checked == 8


def test_converted_state_resumes_in_nnx_optimizer(converted):
    _, _, out = converted("T_A_v256")
    model, _, opt_state, meta = _load(out)
    optimizer = nnx.Optimizer(model, build_optimizer(checkpoint_io.optim_config_of(meta)), wrt=nnx.Param)
    cv.install_opt_state(optimizer, opt_state, meta["step"])
    assert int(optimizer.step[...]) == 300
    for a, b in zip(jax.tree.leaves(nnx.as_pure(optimizer.opt_state)), jax.tree.leaves(opt_state)):
        np.testing.assert_array_equal(a, b)
    grads = jax.tree.map(np.ones_like, nnx.state(model, nnx.Param))
    optimizer.update(model, grads)
    assert int(optimizer.step[...]) == 301


def test_trainer_opens_converted_checkpoint(converted):
    """The training pipeline's loader and resume path (gaugeformer.train) read the same items."""
    import gaugeformer as gf

    _, _, out = converted("T_A_v256")
    ours, cfg, opt_state, meta = _load(out)
    loaded = gf.load(out)
    assert loaded.meta["step"] == 300 and loaded.config == cfg and loaded.meta["kind"] == "converted"
    assert loaded.tokenizer.name == "bytes"  # V = 256
    for a, b in zip(jax.tree.leaves(nnx.state(loaded.model)), jax.tree.leaves(nnx.state(ours))):
        np.testing.assert_array_equal(a, b)
    # the trainer's resume path: its optimizer template, read through the manager it opens
    template = checkpoint_io.optimizer_template(cfg, build_optimizer(checkpoint_io.optim_config_of(meta)))
    manager, step = checkpoint_io.open_checkpoint(out)
    try:
        restored = checkpoint_io.restore_step(manager, step, optimizer_template=template)
    finally:
        manager.close()
    nnx.update(template, restored.opt_state)
    assert int(template.step[...]) == 300
    for a, b in zip(jax.tree.leaves(nnx.as_pure(template.opt_state)), jax.tree.leaves(opt_state)):
        np.testing.assert_array_equal(a, b)


# =============================================================================================
# Bad input and output safety
# =============================================================================================


def test_missing_unexpected_and_wrong_shape_keys_listed_together(tmp_path, capsys):
    sd = _state_dict("A_v256")
    del sd["token_embed.base_mu"]
    sd["transformer.blocks.0.norm1.weight"] = np.ones(19, np.float32)
    sd["token_embed.pos_embed.weight"] = np.zeros((64, 19), np.float32)
    path = tmp_path / "broken.safetensors"
    _save_safetensors(path, sd)
    shutil.copy(FIXTURES / "A_v256" / "model_config.json", tmp_path)
    rc = cv.run(path, tmp_path / "out", log=lambda m: None)
    err = _one_error_line(capsys)
    assert rc == 2 and not (tmp_path / "out").exists()
    assert "1 missing key [token_embed.base_mu]" in err
    assert "1 unexpected key [transformer.blocks.0.norm1.weight]" in err
    assert "token_embed.pos_embed.weight: checkpoint (64, 19) vs config (128, 19)" in err


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_output_never_half_written(tmp_path, monkeypatch):
    conv = cv.convert_checkpoint(FIXTURES / "D_v256" / "best_model.pt", log=lambda m: None)
    out = tmp_path / "out"

    def crash(tmp, dest, force):  # everything written, then the rename fails
        assert (tmp / "0" / "params").is_dir()
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(checkpoint_io, "_commit", crash)
    with pytest.raises(OSError, match="simulated"):
        cv.save_converted(out, conv.model, conv.meta, force=False)
    assert not out.exists() and not _leftovers(tmp_path, "out")
    monkeypatch.undo()
    # a failure inside orbax's writer threads (one JSON item fails while the arrays are written)
    real_dumps = json.dumps

    def failing_dumps(obj, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("explode"):
            raise TypeError("simulated failure while writing 'meta'")
        return real_dumps(obj, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io, "json", types.SimpleNamespace(dumps=real_dumps, loads=json.loads))
    monkeypatch.setattr(json, "dumps", failing_dumps)
    with pytest.raises(TypeError, match="simulated"):
        cv.save_converted(out, conv.model, {**conv.meta, "explode": True})
    assert not out.exists() and not _leftovers(tmp_path, "out")
    monkeypatch.undo()
    # an item that is not JSON is refused before anything is written
    with pytest.raises(checkpoint_io.CheckpointError, match="not plain JSON"):
        cv.save_converted(out, conv.model, {**conv.meta, "bad": object()})
    assert not out.exists() and not _leftovers(tmp_path, "out")


def test_existing_output_needs_force(tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(FIXTURES / "A_v256" / "best_model.pt", out)[0] == 0
    rc = cv.run(FIXTURES / "D_v256" / "best_model.pt", out, log=lambda m: None)
    assert rc == 2 and "exists; fix: pass --force" in _one_error_line(capsys)
    assert _load(out)[1].embed_dim == 19  # untouched
    assert _run(FIXTURES / "D_v256" / "best_model.pt", out, force=True)[0] == 0
    assert _load(out)[1].embed_dim == 25
    assert not _leftovers(tmp_path, "out")


class _Payload:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("fn", [os.system, eval], ids=["os.system", "builtins.eval"])
def test_malicious_pickle_is_refused_without_side_effect(tmp_path, capsys, fn):
    marker = tmp_path / "pwned"
    arg = f"touch {marker}" if fn is os.system else f"open({str(marker)!r}, 'w').close()"
    payload = pickle.dumps({"model_state_dict": _Payload(fn, arg)}, protocol=2)
    with zipfile.ZipFile(tmp_path / "evil.pt", "w") as zf:
        zf.writestr("evil/data.pkl", payload)
        zf.writestr("evil/version", b"3\n")
    rc = cv.run(tmp_path / "evil.pt", tmp_path / "out", log=lambda m: None)
    err = _one_error_line(capsys)
    assert rc == 2 and "refusing to unpickle global" in err and "evil.pt" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_legacy_and_truncated_files_give_one_line_errors(tmp_path, capsys):
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"\x00" * 64)
    truncated = tmp_path / "truncated.pt"
    data = (FIXTURES / "A_v256" / "best_model.pt").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    for path, problem in ((legacy, "legacy format"), (truncated, "truncated or corrupted zip"),
                          (tmp_path / "absent.pt", "no such checkpoint file")):
        rc = cv.run(path, tmp_path / "out", log=lambda m: None)
        err = _one_error_line(capsys)
        assert rc == 2 and problem in err and str(path) in err
    assert not (tmp_path / "out").exists()


def test_validate_live_skips_cleanly_without_torch(tmp_path):
    try:
        import torch  # noqa: F401

        pytest.skip("torch is installed here; the skip path is not reachable")
    except ImportError:
        pass
    rc, lines = _run(FIXTURES / "D_v256" / "best_model.pt", tmp_path / "out",
                     validate_live_repo=tmp_path)
    assert rc == 0
    assert any(line.startswith("--validate-live skipped: torch is not installed") for line in lines)


_FAKE_REFERENCE = """
import numpy as np
from flax import nnx
from gaugeformer.config import from_reference_dict
from gaugeformer.convert.reference import model_from_reference


class GaugeTransformerLM:  # stands in for the PyTorch reference model
    def __init__(self, config):
        self.cfg = from_reference_dict(config)

    def load_state_dict(self, state_dict, strict=True):
        self.sd = {k: v.numpy() for k, v in state_dict.items()}

    def eval(self):
        return self

    def __call__(self, tokens):
        model = model_from_reference(self.sd, self.cfg)
        logits = nnx.jit(lambda m, t: m(t))(model, tokens.numpy())
        return type(tokens)(np.asarray(logits) + SHIFT)
"""


class _FakeTensor:
    def __init__(self, array):
        self.array = np.asarray(array)

    def numpy(self):
        return self.array


@pytest.mark.parametrize("shift", [0.0, 1e-2], ids=["agrees", "differs"])
def test_validate_live_plumbing_with_a_stand_in_reference(tmp_path, monkeypatch, shift):
    """The --validate-live path end to end, with stand-ins for torch and the reference checkout."""
    import contextlib

    (tmp_path / "repo" / "transformer").mkdir(parents=True)
    (tmp_path / "repo" / "transformer" / "__init__.py").write_text("")
    (tmp_path / "repo" / "transformer" / "attention.py").write_text("NUMBA_AVAILABLE = True\n")
    (tmp_path / "repo" / "transformer" / "model.py").write_text(
        _FAKE_REFERENCE.replace("SHIFT", repr(shift)))
    torch = types.SimpleNamespace(manual_seed=lambda seed: None, from_numpy=_FakeTensor,
                                  no_grad=contextlib.nullcontext)
    monkeypatch.setitem(sys.modules, "torch", torch)
    for name in ("transformer", "transformer.model", "transformer.attention"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    rc, lines = _run(FIXTURES / "D_v256" / "best_model.pt", tmp_path / "out",
                     validate_live_repo=tmp_path / "repo")
    for name in ("transformer", "transformer.model", "transformer.attention"):
        sys.modules.pop(name, None)
    assert any(line.startswith("--validate-live: running the PyTorch reference") for line in lines)
    match = STATUS.match(lines[-1])
    assert match and match.group(2) == ("pass" if shift == 0 else "fail"), lines[-3:]
    assert rc == (0 if shift == 0 else 1)
