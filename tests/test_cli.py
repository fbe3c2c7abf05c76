"""Every ``[project.scripts]`` entry point answers ``--help``; the seeds' own command lines work
or answer clearly (in-process: a subprocess per entry point would cost a JAX import each)."""

import importlib
import tomllib
from pathlib import Path

import pytest

from gaugeformer import cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
DELEGATED = {"gaugeformer-sweep": "diagnostics.sweep"}  # the library reaches diagnostics by name only


def _entry(name: str):
    module, func = SCRIPTS[name].split(":")
    return getattr(importlib.import_module(module), func)


def test_the_nine_entry_points_exist():
    assert sorted(SCRIPTS) == sorted(f"gaugeformer-{n}" for n in (
        "train", "convert", "validate", "visualize", "recency", "analyze", "generate", "sweep",
        "bench"))


@pytest.mark.parametrize("name", sorted(set(SCRIPTS) - set(DELEGATED)))
def test_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        _entry(name)(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--help" in out


@pytest.mark.parametrize("name", sorted(DELEGATED))
def test_delegated_help_or_a_clear_message(name, capsys):
    """generate / sweep / bench run modules added by other work: their --help, or one line
    naming the missing module."""
    module = DELEGATED[name]
    try:
        has_main = callable(getattr(importlib.import_module(module), "main", None))
    except ModuleNotFoundError:
        has_main = False
    if has_main:
        with pytest.raises(SystemExit) as exc:
            _entry(name)(["--help"])
        assert exc.value.code == 0
    else:
        assert _entry(name)(["--help"]) == 2
        err = capsys.readouterr().err
        assert module in err and err.count("\n") == 1


def test_seed_000_python_config_is_refused_with_the_fix(tmp_path):
    from diagnostics.cli import validate

    (tmp_path / "config.py").write_text("embed_dim = 25\n")
    with pytest.raises(SystemExit, match=r"YAML or JSON only.*json.dumps"):
        validate(["--config", str(tmp_path / "config.py"), "--random", "--no-plots"])


def test_train_refuses_a_python_config(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.train(["--config", str(tmp_path / "config.py"), "--workdir", str(tmp_path / "w")])
    assert exc.value.code == 2 and "YAML or JSON only" in capsys.readouterr().err


def test_seed_004_random_model_flags(capsys):
    from diagnostics.capture import load_model_from_args
    from diagnostics.cli import analyze_parser

    args = analyze_parser().parse_args(["--text", "The cat sat", "--embedding-dimension", "25",
                                        "--number-of-heads", "3", "--number-of-layers", "2"])
    loaded = load_model_from_args(args)
    assert loaded.config.embed_dim == 25 and loaded.config.n_layers == 2
    assert loaded.config.layout.dims == (7, 9, 9)
    assert "irreps 1x3e+2x4e" in capsys.readouterr().out
    assert cli.train_parser().prog == "gaugeformer-train"
