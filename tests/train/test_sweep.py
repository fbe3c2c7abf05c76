"""Sweeps (issue 14): planning (configs × profiles × κ), κ expansion, the files and the rows of a tiny
two-config sweep, resume from cached rows, κ mode and the CLI's errors.  Budget: 2 training steps per run;
every distinct model costs four compiles (train, eval, capture, attribution), so the trained sweep has
two models (the MLP FFN of tests/train/test_train.py, whose compiled steps the persistent cache may hold)."""

import csv
import json
from pathlib import Path

import pytest
import yaml

from diagnostics import sweep
from gaugeformer.train.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
# the module fixture trains two models (~100 s on the shared 2-core CPU, compiles included); the default 300 s
# limit is too tight when the machine is oversubscribed
pytestmark = pytest.mark.timeout(900)
BASE = {
    "model": {"embed_dim": 4, "irreps": "1x0e+1x1e", "n_layers": 1, "kappa_beta": 1.0, "ffn": "mlp",
              "hidden_dim": 8},
    "data": {"tokenizer": "bytes", "seq_len": 16, "batch_size": 4, "eval_batch_size": 16,
             "val_fraction": 0.02, "max_eval_batches": 1},
    "optim": {"warmup_steps": 2, "max_steps": 6},
    "train": {"steps": 2, "eval_every": 100, "checkpoint_every": 100},
    "log": {"progress": False, "curves": False},
}


def write_config(path: Path, **model) -> str:
    cfg = json.loads(json.dumps(BASE))
    cfg["model"].update(model)
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    d = tmp_path_factory.mktemp("configs")
    return [write_config(d / "mixed.yaml"), write_config(d / "scalars.yaml", irreps="4x0e")]


@pytest.fixture(scope="module")
def swept(configs, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    rows = sweep.run_sweep(configs, ["clean"], [], out, windows=2, isolate=False)
    return out, rows


def test_expand_kappas_scales_the_seeds_values_to_the_config():
    got = sweep.expand_kappas(["seed001", "0.5"], 19 / 11)
    # the seed's 0.43 / 0.00043 / 0.0086 relative to its original 0.43, times the config's κ
    assert [k for k, _ in got] == pytest.approx([19 / 11, 19 / 11 / 1000, 19 / 11 / 50, 0.5])
    assert [lab for _, lab in got][:3] == ["seed original", "seed 1000x lower", "seed 50x lower"]
    with pytest.raises(ConfigError, match="expected a number or 'seed001'"):
        sweep.expand_kappas(["cold"], 1.0)
    with pytest.raises(ConfigError, match="positive"):
        sweep.expand_kappas(["-1"], 1.0)


def test_plan_validates_before_training(configs, tmp_path):
    jobs = sweep.plan(configs, ["reference", "clean"], ["train.steps=5"], tmp_path)
    assert [j.name for j in jobs] == ["mixed-reference", "mixed-clean", "scalars-reference", "scalars-clean"]
    assert all("model.profile=clean" in j.overrides for j in jobs if j.profile == "clean")
    assert all(j.overrides[-1] == "train.steps=5" for j in jobs)  # the user's --set comes last
    with pytest.raises(ConfigError, match="does not exist"):
        sweep.plan([str(tmp_path / "missing.yaml")], ["clean"], [], tmp_path)
    with pytest.raises(ConfigError, match="model.nope"):
        sweep.plan(configs, ["clean"], ["model.nope=1"], tmp_path)
    with pytest.raises(ConfigError, match="share the workdir"):
        sweep.plan([configs[0], configs[0]], ["clean"], [], tmp_path)


def test_sweep_rows_files_and_figures(swept):
    out, rows = swept
    assert [(r["config"], r["profile"]) for r in rows] == [("mixed", "clean"), ("scalars", "clean")]
    for r in rows:
        assert set(sweep.ROW_KEYS) <= set(r)
        assert r["steps"] == 2 and not r["nan"] and r["val_ppl"] > 1.0
        assert r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 50 and r["params"] > 0
        assert Path(r["workdir"], "checkpoints").is_dir()  # a normal training workdir
        assert json.loads(Path(r["workdir"], "attribution.json").read_text())["schema"] == "attribution/1"
    assert set(rows[0]["row_std_by_l"]) == {"ℓ0", "ℓ1"} and set(rows[1]["row_std_by_l"]) == {"ℓ0"}
    # gauge-fixed priors: a scalar head's belief is the same for every token (rotation invariant)
    assert rows[1]["cause_counts"]["token_independent"] == 4, rows[1]["causes"]
    assert json.loads((out / "sweep.json").read_text()) == rows
    with (out / "sweep.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2 and {"val_ppl", "row_std_ℓ0", "row_std_ℓ1", "kl_std_ℓ0", "causes"} <= set(table[0])
    md = (out / "sweep.md").read_text()
    assert md.count("\n| mixed | clean |") == 1 and "row_std ℓ1" in md
    for name in ("ppl.png", "row_std_by_l.png"):
        assert (out / name).stat().st_size > 10_000


def test_rerun_reuses_finished_runs(swept, configs):
    out, rows = swept
    before = {r["workdir"]: Path(r["workdir"], "metrics.jsonl").read_text() for r in rows}
    again = sweep.run_sweep(configs, ["clean"], [], out, windows=2, isolate=False, figures=False)
    assert again == rows
    assert {w: Path(w, "metrics.jsonl").read_text() for w in before} == before


def test_kappa_mode_table(configs, tmp_path):
    # κ = the config's own value keeps this test on programs compiled above; expand_kappas is tested apart
    rows = sweep.run_sweep(configs[:1], ["clean"], [], tmp_path, kappas=["1.0"], windows=2,
                           isolate=False, figures=True)
    assert rows[0]["kappa"] == 1.0 and rows[0]["kappa_label"] == "1"
    md = (tmp_path / "sweep.md").read_text()
    assert "| κ | κ source | KL mean | KL std | Attention | PPL | Stability |" in md
    assert "✓ finite, max ‖∇‖" in md and rows[0]["max_grad_norm"] > 0
    assert (tmp_path / "kappa.png").stat().st_size > 10_000


def test_cli_rejects_a_missing_config(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("sweep_cli", ROOT / "scripts" / "sweep.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--configs", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_isolated_run_reports_its_own_peak_rss(configs, tmp_path):
    rows = sweep.run_sweep(configs[:1], ["clean"], [], tmp_path, windows=2, figures=False)
    assert rows[0]["peak_rss_mb"] > 100 and rows[0]["val_ppl"] > 1.0
