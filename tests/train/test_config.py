"""Run configuration: every shipped YAML parses and builds, overrides, clear errors."""

import json
from pathlib import Path

import pytest
from flax import nnx

from gaugeformer.config import ModelConfig, from_reference_dict
from gaugeformer.model.lm import GaugeTransformerLM
from gaugeformer.train.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    build_run_config,
    load_run_config,
    valid_keys,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
FIXTURES = ROOT / "tests" / "fixtures"

MINIMAL = {"model": {"embed_dim": 4, "irreps": "1x0e+1x1e", "n_layers": 1, "kappa_beta": 1.0},
           "data": {"tokenizer": "bytes", "seq_len": 16, "batch_size": 4}}


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"tiny.yaml", "reference_A.yaml", "publication_D.yaml"} <= names
    # seed 001's three proposals and its negative / ablation cases (issue 14)
    assert len([n for n in names if n.startswith("seed001_")]) == 6


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses_and_builds(path):
    cfg = load_run_config(path)
    assert cfg.data.seq_len <= cfg.model.max_seq_len
    assert RunConfig.from_dict(cfg.to_dict()) == cfg  # the resolved YAML reads back identically
    model = nnx.eval_shape(lambda: GaugeTransformerLM(cfg.model, rngs=nnx.Rngs(0)))
    assert model.out_proj.shape == (cfg.model.vocab_size, cfg.model.embed_dim)


@pytest.mark.parametrize("name,fixture", [("reference_A", "A_v256"), ("publication_D", "D_v256")])
def test_reference_configs_match_fixtures(name, fixture):
    """The fixture is the shipped config's model at vocab 256."""
    cfg = load_run_config(ROOT / "configs" / f"{name}.yaml")
    ref = json.loads((FIXTURES / fixture / "model_config.json").read_text())
    assert cfg.model.vocab_size == 50257
    assert cfg.model.replace(vocab_size=256) == from_reference_dict(ref)
    assert cfg.data.seq_len == ref["max_seq_len"] and cfg.data.batch_size == ref["batch_size"]
    assert cfg.optim.warmup_steps == ref["warmup_steps"] and cfg.train.steps == ref["max_steps"]


def test_seed001_irreps():
    want = {"seed001_tensor_heads": ("2x0e+2x1e+4x2e", 28),
            "seed001_higher_rank": ("4x1e+3x2e+2x3e", 41),
            "seed001_scaled": ("10x0e+10x1e+8x2e+4x3e", 108),
            "seed001_single_high_l": ("1x9e", 19),
            "seed001_low_spin": ("5x0e+3x1e", 14),
            "seed001_pure_tensor": ("4x2e", 20)}
    for name, (irreps, k) in want.items():
        cfg = load_run_config(ROOT / "configs" / f"{name}.yaml")
        assert (cfg.model.irreps, cfg.model.embed_dim) == (irreps, k)
        assert cfg.model.kappa_beta == pytest.approx(k / 11)


def test_overrides_and_derived_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {embed_dim: 4, irreps: 1x0e+1x1e, n_layers: 1, kappa_beta: 1.0}\n"
                    "data: {tokenizer: gpt2, vocab_size: 512, seq_len: 16}\n")
    cfg = load_run_config(path, ["train.steps=200", "model.kappa_beta=0.5", "data.train_files=null",
                                 "log.csv=false", "train.alpha=1"])
    assert cfg.train.steps == 200 and cfg.optim.max_steps == 200  # schedule follows the run length
    assert cfg.model.kappa_beta == 0.5 and cfg.log.csv is False and cfg.train.alpha == 1.0
    assert cfg.model.vocab_size == 512 and cfg.model.max_seq_len == 16
    full = build_run_config({**MINIMAL, "data": {"tokenizer": "gpt2", "seq_len": 8}})
    assert full.model.vocab_size == 50257 and full.data.vocab_size is None
    with pytest.raises(ConfigError, match="model.vocab_size=1000 does not match"):
        build_run_config({**MINIMAL, "model": {**MINIMAL["model"], "vocab_size": 1000}})


def test_model_vocab_below_tokenizer_restricts():
    raw = {**MINIMAL, "model": {**MINIMAL["model"], "vocab_size": 100}}
    cfg = build_run_config(raw)
    assert cfg.data.vocab_size == 100 and cfg.model.vocab_size == 100


@pytest.mark.parametrize("override,needle", [
    ("train.stepz=3", "train.stepz"),
    ("optimiser.mu_lr=1", "unknown section 'optimiser'"),
    ("train.steps=many", "train.steps: expected an integer"),
    ("train.steps=0", "train.steps must be >= 1"),
    ("log.csv=3", "log.csv: expected true/false"),
    ("model.kappa_beta=-1", "kappa_beta"),
    ("model.irreps=1x0e", "embed_dim"),
    ("data.dataset=wiki", "data.dataset='wiki'"),
    ("data.seq_len=32", "exceeds model.max_seq_len"),
    ("model.vocab_size=300", "model.vocab_size=300 does not match"),
    ("steps=3", "section.key"),
    ("model.kappa_beta=abc", "model.kappa_beta: expected a number, got 'abc'"),
    ("train.steps=1.5", "train.steps: expected an integer, got 1.5"),
    ("model.irreps=3", "model.irreps: expected a string or a list"),
    ("optim.mu_lr=1e-3x", "optim.mu_lr: expected a number"),
    ("train.profile_steps=[3, 2]", "train.profile_steps=[3, 2]"),
    ("train.profile_steps=4", "train.profile_steps: expected a list"),
    ("optim.accumulate_steps=0", "optim.accumulate_steps must be >= 1"),
    ("log.tensorboard=yes please", "log.tensorboard: expected true/false"),
])
def test_errors_name_the_key(override, needle):
    raw = {**MINIMAL, "model": {**MINIMAL["model"], "max_seq_len": 16}}
    with pytest.raises(ConfigError) as err:
        build_run_config(apply_overrides(raw, [override]))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_exponent_floats_read_as_numbers():
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; a float field takes it as the number."""
    cfg = build_run_config(apply_overrides(MINIMAL, ["optim.mu_lr=1e-3", "model.kappa_beta=2E0"]))
    assert cfg.optim.mu_lr == 0.001 and cfg.model.kappa_beta == 2.0


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        build_run_config({**MINIMAL, "train": {"step": 3}})
    msg = str(err.value)
    assert "train.step" in msg and "eval_every" in msg and "checkpoint_every" in msg
    assert "kappa_beta" in valid_keys("model") and "irrep_spec" in valid_keys("model")


def test_model_section_required():
    with pytest.raises(ConfigError, match="model section is required"):
        build_run_config({"data": {}})
    assert isinstance(build_run_config(MINIMAL).model, ModelConfig)
