"""``gaugeformer.load`` on the three kinds of checkpoint: a reference ``.pt`` (config beside it, or
inferred), a converted directory, and a training run directory (best/ and latest), with the
tokenizer record (kind and the kept ids of a restricted vocabulary) read back."""

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

import gaugeformer as gf
from gaugeformer import checkpoint as ckpt
from gaugeformer.convert import convert as cv
from gaugeformer.data.corpus import load_embedded_dataset
from gaugeformer.data.tokenizer import get_tokenizer
from gaugeformer.loading import CheckpointLoadError, irreps_for_heads, random_model
from gaugeformer.testing import FORWARD_RTOL, rel_err
from gaugeformer.train import loop
from gaugeformer.train.config import build_run_config

FIXTURES = Path(__file__).parent / "fixtures"
T_A = FIXTURES / "T_A_v256"


def _leaves(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]


@pytest.fixture(scope="module")
def reference():
    return gf.load(T_A / "best_model.pt")


def test_reference_pt_with_config_beside_it(reference):
    assert reference.meta["kind"] == "reference"
    assert reference.meta["config_source"] == "model_config.json beside the checkpoint"
    assert reference.config.profile == "reference" and reference.config.vocab_size == 256
    assert reference.tokenizer.name == "bytes"
    golden = np.load(T_A / "golden.npz")
    logits = nnx.jit(lambda m, t: m(t))(reference.model, golden["tokens"])
    assert rel_err(logits, golden["logits"]) <= FORWARD_RTOL


def test_reference_pt_alone_infers_its_config(tmp_path, reference):
    lone = tmp_path / "best_model.pt"
    shutil.copy(T_A / "best_model.pt", lone)
    loaded = gf.load(tmp_path)  # a reference run directory: its best_model.pt
    assert loaded.meta["config_source"] == "inferred from the state dict"
    assert any(n.startswith("assumed: kappa_beta") for n in loaded.meta["config_notes"])
    for key in ("vocab_size", "embed_dim", "n_layers", "max_seq_len", "irreps"):
        assert getattr(loaded.config, key) == getattr(reference.config, key), key
    for a, b in zip(_leaves(loaded.model), _leaves(reference.model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_converted_directory(tmp_path, reference):
    out = tmp_path / "T_A"
    assert cv.run(T_A / "best_model.pt", out, log=lambda m: None) == 0
    loaded = gf.load(out)
    assert loaded.meta["kind"] == "converted" and loaded.meta["step"] == 300
    assert loaded.meta["tokenizer"] == {"kind": "bytes", "vocab_size": 256, "kept_ids": None}
    assert loaded.config == reference.config and loaded.tokenizer.name == "bytes"
    assert loaded.description.startswith("T_A (converted from best_model.pt, step 300)")
    for a, b in zip(_leaves(loaded.model), _leaves(reference.model), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three steps on the embedded corpus with GPT-2 restricted to 64 ids (kept ids saved)."""
    workdir = tmp_path_factory.mktemp("run")
    cfg = build_run_config({
        "model": {"embed_dim": 4, "irreps": "1x0e+1x1e", "n_layers": 1, "kappa_beta": 1.0,
                  "ffn": "mlp", "hidden_dim": 8},
        "data": {"dataset": "embedded", "tokenizer": "gpt2", "vocab_size": 64, "seq_len": 16,
                 "batch_size": 4, "eval_batch_size": 16, "max_eval_batches": 1},
        "optim": {"warmup_steps": 1, "max_steps": 3},
        "train": {"steps": 3, "eval_every": 2, "checkpoint_every": 1, "keep_checkpoints": 5,
                  "eval_at_start": False},
        "log": {"progress": False, "attention_figures": False, "curves": False,
                "console_diagnostics": False},
    })
    summary = loop.train_and_evaluate(cfg, workdir)
    return workdir, summary, cfg


def test_training_run_directory(trained):
    workdir, summary, cfg = trained
    assert summary["step"] == 3
    best = gf.load(workdir)  # best/ when the run has one
    assert best.meta["kind"] == "trained" and best.meta["step"] == summary["best"]["step"]
    assert Path(best.meta["path"]).name == "best" and "best checkpoint" in best.description
    latest = gf.load(workdir / "checkpoints")
    assert latest.meta["step"] == 3 and gf.load(workdir / "checkpoints", step=1).meta["step"] == 1
    assert best.config == latest.config == cfg.model
    # the tokenizer comes from the checkpoint alone: the kept ids of the restricted vocabulary
    data = load_embedded_dataset("gpt2", vocab_size=64)
    tok = latest.tokenizer
    assert tok.name == "gpt2" and tok.restricted and len(tok.kept_ids) == 63
    np.testing.assert_array_equal(tok.kept_ids, data.vocab_map.kept_ids)
    ids = data.validation[:40]
    expected = data.vocab_map.to_original(ids)  # UNKs dropped, as the reference decodes
    assert tok.decode(ids).replace("<unk>", "") == get_tokenizer("gpt2").decode(
        [int(i) for i in expected])
    assert "<unk>" in tok.decode([63])  # the UNK id
    kept = [int(i) for i in data.vocab_map.kept_ids[[3, 10, 40]]]
    np.testing.assert_array_equal(tok.encode(get_tokenizer("gpt2").decode(kept)), [3, 10, 40])


def test_bad_paths_and_random_models(tmp_path):
    with pytest.raises(CheckpointLoadError, match="no such checkpoint"):
        gf.load(tmp_path / "nothing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CheckpointLoadError, match="unsupported checkpoint file"):
        gf.load(tmp_path / "notes.txt")
    assert irreps_for_heads(256, 4) == "2x31e+2x32e"  # 63 + 63 + 65 + 65
    assert irreps_for_heads(25, 3) == "1x3e+2x4e"
    with pytest.raises(ValueError, match="same parity"):
        irreps_for_heads(256, 3)
    rnd = random_model(embed_dim=25, n_heads=3, n_layers=1, vocab_size=256)
    assert rnd.config.layout.dims == (7, 9, 9) and rnd.config.embed_dim == 25
    assert rnd.config.n_layers == 1 and rnd.tokenizer.name == "bytes"
    assert "random weights" in rnd.description and "irreps=1x3e+2x4e" in rnd.description
    assert ckpt.optim_config_of({}) is None
