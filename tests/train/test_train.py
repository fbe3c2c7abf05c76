"""The training loop: outputs, exact resume (Ctrl-C, a save killed midway), NaN stop, 2 devices.

All runs share one tiny configuration (1 layer, K=4, N=16, B=4, bytes of the embedded corpus), so
the train and eval steps compile once per session (and come from the persistent cache after that).
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gaugeformer as gf
from diagnostics.training import FIGURES
from gaugeformer import checkpoint as ckpt
from gaugeformer.checkpoint import Checkpointer
from gaugeformer.data.corpus import DatasetUnavailableError
from gaugeformer.train import loop, steps
from gaugeformer.train.config import ConfigError, RunConfig, apply_overrides, build_run_config

ROOT = Path(__file__).resolve().parents[2]
HAS_TENSORBOARD = importlib.util.find_spec("tensorboardX") is not None
BASE = {
    "model": {"embed_dim": 4, "irreps": "1x0e+1x1e", "n_layers": 1, "kappa_beta": 1.0,
              "ffn": "mlp", "hidden_dim": 8},
    "data": {"tokenizer": "bytes", "seq_len": 16, "batch_size": 4, "eval_batch_size": 16,
             "val_fraction": 0.02},
    "optim": {"warmup_steps": 2, "max_steps": 6},
    "train": {"steps": 6, "eval_every": 100, "checkpoint_every": 3, "keep_checkpoints": 5},
    "log": {"log_every": 1, "progress": False, "attention_figures": False, "curves": False,
            "console_diagnostics": False},
}


def make_cfg(*overrides: str) -> RunConfig:
    return build_run_config(apply_overrides(BASE, list(overrides)))


def train_records(workdir: Path) -> dict[int, dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines if x]
    return {r["step"]: r for r in recs if r["split"] == "train"}


def params_of(path: Path) -> dict:
    model = ckpt.model_from_restored(ckpt.restore(path))  # the latest step
    return {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model))}


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """An uninterrupted 6-step run with figures and curves at the final evaluation."""
    workdir = tmp_path_factory.mktemp("run_a")
    cfg = make_cfg("log.attention_figures=true", "log.curves=true", "train.profile_steps=[2, 3]",
                   f"log.tensorboard={str(HAS_TENSORBOARD).lower()}")
    before = steps.train_step.jitted_fn._cache_size()
    summary = loop.train_and_evaluate(cfg, workdir, figures=FIGURES)
    summary["cache_entries_added"] = steps.train_step.jitted_fn._cache_size() - before
    return workdir, summary


def test_outputs(run_a):
    workdir, summary = run_a
    assert summary["status"] == "completed" and summary["step"] == 6
    # no recompilation across steps: no lowering after step 1, one jit cache entry for the run
    assert summary["train_step_compiles_after_first"] == 0
    assert summary["cache_entries_added"] <= 1
    recs = train_records(workdir)
    assert sorted(recs) == [1, 2, 3, 4, 5, 6]
    row = recs[6]
    for key in ("loss/total", "loss/ce", "loss/belief_align", "loss/self_consistency", "ppl",
                "attention/beta_mean", "attention/kl_mean", "attention/entropy",
                "attention/concentration", "lr/mu", "lr/phi", "grad_norm/total", "grad_norm/ffn",
                "attn/L0/h0/row_std", "attn/L0/h1/row_std", "attn/L0/row_std_avg",
                "diversity/mu_dist_mean", "diversity/phi_std", "diversity/kl_std",
                "diversity/sigma_min", "diversity/sigma_max", "tokens_per_sec"):
        assert np.isfinite(row[key]), key
    assert row["ppl"] == pytest.approx(np.exp(row["loss/ce"]), rel=1e-5)
    # evaluation covered the whole validation split
    val = loop.load_data(make_cfg().data).validation
    assert summary["eval"]["eval/tokens"] == len(val) - 1
    header = (workdir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["step", "epoch"] and "eval/ce" in header and "loss/ce" in header
    # figures, row_std table with irrep labels and the sequence text, curves
    fig_dir = workdir / "attention" / "step_000006"
    assert (fig_dir / "attention_context_L0.png").stat().st_size > 10_000
    table = (fig_dir / "row_std.md").read_text()
    assert "| 0 | 0 | ℓ0 |" in table and "| 0 | 1 | ℓ1 |" in table and "```" in table
    assert (workdir / "curves.png").stat().st_size > 10_000
    # checkpoints carry their config and tokenizer: the model loads with nothing else
    loaded = gf.load(workdir)
    model, meta = loaded.model, loaded.meta
    assert model.cfg == make_cfg().model and meta["step"] == 6 and meta["kind"] == "trained"
    assert meta["tokenizer"] == {"kind": "bytes", "vocab_size": 256, "kept_ids": None}
    assert loaded.tokenizer.decode(loaded.tokenizer.encode("héllo")) == "héllo"
    assert meta["data"]["next_step"] == 6 and meta["run_config"]["train"]["steps"] == 6
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [3, 6]
    assert (workdir / "best" / "6").is_dir()


def read_tensorboard(directory: Path) -> dict[tuple[str, int], float]:
    """``{(tag, step): value}`` of the scalar events (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto import event_pb2

    out = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        raw, pos = path.read_bytes(), 0
        while pos < len(raw):
            n = int.from_bytes(raw[pos:pos + 8], "little")
            event = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + n])
            pos += 16 + n
            for v in event.summary.value:
                out[(v.tag, event.step)] = v.simple_value
    return out


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboardX not installed (optional extra)")
def test_tensorboard_mirrors_metrics_jsonl(run_a):
    workdir, _ = run_a
    events = read_tensorboard(workdir / "tensorboard")
    recs = train_records(workdir)
    for step in range(1, 7):
        for key in ("loss/ce", "loss/total", "grad_norm/total", "attn/L0/h1/row_std"):
            assert events[(f"train/{key}", step)] == pytest.approx(recs[step][key], rel=1e-6)
    evals = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in evals if r["split"] == "eval"][-1]
    assert events[("eval/ce", 6)] == pytest.approx(final["eval/ce"], rel=1e-6)


def test_profile_steps_write_a_trace(run_a):
    workdir, summary = run_a
    traces = list((workdir / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 1000
    assert summary["paths"]["profile"] == str(workdir / "profile")


KILL_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys
    from gaugeformer.checkpoint import Checkpointer, make_save_args, model_from_restored
    ck = Checkpointer(sys.argv[1])
    model = model_from_restored(ck.restore())
    ck.latest.save(5, args=make_save_args(model, None, {"step": 5}))  # asynchronous
    os.kill(os.getpid(), signal.SIGKILL)                                # killed mid-save
""")


def test_exact_resume_after_ctrl_c_and_killed_save(run_a, tmp_path):
    work_a, summary_a = run_a
    work_b = tmp_path / "run_b"

    def ctrl_c(ctx):
        os.kill(os.getpid(), signal.SIGINT)

    first = loop.train_and_evaluate(make_cfg(), work_b, hooks=[(4, ctrl_c)])
    assert first["status"] == "interrupted" and first["step"] == 4
    assert first["latest_checkpoint"] == 4  # Ctrl-C saved
    # a second process dies while writing step 5: only an uncommitted temporary directory remains
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(work_b)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert any(p.name.startswith("5.") for p in (work_b / "checkpoints").iterdir())
    assert Checkpointer(work_b).latest_step() == 4
    second = loop.train_and_evaluate(make_cfg(), work_b)  # the same command again: resume
    assert second["resumed_from"] == 4 and second["status"] == "completed"
    assert second["train_step_compiles_after_first"] == 0
    # bit-identical to the uninterrupted run: parameters, optimizer-driven losses, evaluation
    pa, pb = params_of(work_a / "checkpoints" / "6"), params_of(work_b / "checkpoints" / "6")
    assert pa.keys() == pb.keys()
    for key in pa:
        np.testing.assert_array_equal(pa[key], pb[key], err_msg=str(key))
    ra, rb = train_records(work_a), train_records(work_b)
    assert sorted(rb) == [1, 2, 3, 4, 5, 6]
    for step in (5, 6):
        assert ra[step]["loss/total"] == rb[step]["loss/total"]
        assert ra[step]["grad_norm/total"] == rb[step]["grad_norm/total"]
    assert second["eval"]["eval/ce"] == summary_a["eval"]["eval/ce"]


SIGTERM_CHILD = textwrap.dedent("""
    import json, sys, time
    from gaugeformer.train.config import RunConfig
    from gaugeformer.train.loop import train_and_evaluate
    from gaugeformer.train.runtime import enable_compilation_cache
    enable_compilation_cache()

    def slow(ctx):  # leave the parent time to send SIGTERM mid-run
        print(f"step {ctx.step}", flush=True)
        time.sleep(0.5)

    summary = train_and_evaluate(RunConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2],
                                 hooks=[(1, slow)])
    print(json.dumps({k: summary[k] for k in ("status", "step", "stop_signal",
                                              "latest_checkpoint")}))
""")


def test_sigterm_saves_then_resumes_exactly(run_a, tmp_path):
    """A preempted training process (SIGTERM) saves its step and exits; the rerun continues
    bit-identically to the uninterrupted run."""
    work_a, summary_a = run_a
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD, json.dumps(make_cfg().to_dict()),
                             str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.strip() == "step 2":
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    child = json.loads(out.strip().splitlines()[-1])
    assert child["status"] == "interrupted" and child["stop_signal"] == "SIGTERM"
    assert 2 <= child["step"] < 6 and child["latest_checkpoint"] == child["step"]
    resumed = loop.train_and_evaluate(make_cfg(), tmp_path)
    assert resumed["resumed_from"] == child["step"] and resumed["status"] == "completed"
    pa, pb = params_of(work_a / "checkpoints" / "6"), params_of(tmp_path / "checkpoints" / "6")
    for key in pa:
        np.testing.assert_array_equal(pa[key], pb[key], err_msg=str(key))
    ra, rb = train_records(work_a), train_records(tmp_path)
    for step in range(1, 7):
        assert ra[step]["loss/total"] == rb[step]["loss/total"], step
    assert resumed["eval"]["eval/ce"] == summary_a["eval"]["eval/ce"]


def test_orbax_preemption_point_saves_and_stops(tmp_path, monkeypatch):
    """Multi-host preemption (orbax's ``reached_preemption`` sync point, here forced at step 2):
    the loop saves that step and returns, like SIGTERM."""
    import orbax.checkpoint as ocp

    monkeypatch.setattr(ocp.CheckpointManager, "reached_preemption",
                        lambda self, step: step == 2)
    summary = loop.train_and_evaluate(make_cfg(), tmp_path)
    assert summary["status"] == "interrupted" and summary["stop_signal"] == "preemption"
    assert summary["step"] == 2 and summary["latest_checkpoint"] == 2


def test_generate_cli_on_a_run(run_a, capsys):
    """``scripts/generate.py`` on a training run: ids in, ids out (= the library call), text."""
    from gaugeformer.sampling import generate

    spec = importlib.util.spec_from_file_location("generate_cli", ROOT / "scripts" / "generate.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    workdir, _ = run_a
    assert cli.main([str(workdir), "--ids", "104", "105", "--max-new-tokens", "4",
                     "--temperature", "0"]) == 0
    ids = [int(t) for t in capsys.readouterr().out.split()]
    assert ids == generate(gf.load(workdir).model, [104, 105], max_new_tokens=4, temperature=0)
    assert cli.main([str(workdir / "checkpoints" / "3"), "hi", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("hi")


def test_nan_stops_naming_step_layer_and_tensor(tmp_path):
    def poison(ctx):
        lr = ctx.model.blocks[0].ffn.fc1_weight
        lr[...] = jax.device_put(jnp.full_like(lr[...], jnp.nan), lr[...].sharding)

    with pytest.raises(FloatingPointError) as err:
        loop.train_and_evaluate(make_cfg(), tmp_path, hooks=[(3, poison)])
    msg = str(err.value)
    assert "step 4" in msg and "layer 0" in msg and "'ffn." in msg, msg
    assert "blocks.0.ffn.fc1_weight" in msg  # the poisoned parameter's gradient is named too
    assert "layer 0" in train_records(tmp_path)[4]["nonfinite"]  # and the log says so
    assert Checkpointer(tmp_path).latest_step() == 3  # the last good checkpoint is intact
    params = params_of(tmp_path / "checkpoints" / "3")
    assert all(np.isfinite(v).all() for v in params.values())


TWO_DEVICES = textwrap.dedent("""
    import json, sys
    import jax
    from gaugeformer.train.config import RunConfig
    from gaugeformer.train.loop import train_and_evaluate
    from gaugeformer.train.runtime import enable_compilation_cache
    enable_compilation_cache()
    cfg = RunConfig.from_dict(json.loads(sys.argv[1]))
    summary = train_and_evaluate(cfg, sys.argv[2])
    print(json.dumps({"devices": jax.device_count(),
                      "compiles": summary["train_step_compiles_after_first"]}))
""")


def test_two_devices_same_loss(run_a, tmp_path):
    work_a, _ = run_a
    cfg = make_cfg()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = subprocess.run([sys.executable, "-c", TWO_DEVICES, json.dumps(cfg.to_dict()),
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"devices": 2, "compiles": 0}
    one, two = train_records(work_a), train_records(tmp_path)
    for step in range(1, 7):
        for key in ("loss/total", "loss/ce", "grad_norm/total"):
            np.testing.assert_allclose(two[step][key], one[step][key], rtol=2e-5, err_msg=key)


def test_resume_refuses_another_model(run_a):
    workdir, _ = run_a
    with pytest.raises(ConfigError, match="model config differs"):
        loop.train_and_evaluate(make_cfg("model.kappa_beta=2.0"), workdir)
    with pytest.raises(ConfigError, match="optim.accumulate_steps changed"):
        loop.train_and_evaluate(make_cfg("optim.accumulate_steps=2"), workdir)


def test_missing_dataset_says_how_to_get_it(tmp_path):
    cfg = make_cfg("data.dataset=wikitext-2", f"data.cache_dir={tmp_path}",
                   f"data.hf_cache_dir={tmp_path}")
    with pytest.raises(DatasetUnavailableError) as err:
        loop.train_and_evaluate(cfg, tmp_path / "run")
    assert "wiki.train.raw" in str(err.value) and "embedded" in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["reference", "clean"])
def test_vfe_model_resumes_exactly(profile, tmp_path):
    """The default VFE FFN (both profiles): Ctrl-C at step 2, resume, equal to uninterrupted."""
    cfg = make_cfg("model.ffn=vfe", f"model.profile={profile}", "train.steps=4",
                   "optim.max_steps=4", "train.checkpoint_every=2")
    whole = loop.train_and_evaluate(cfg, tmp_path / "whole")

    def ctrl_c(ctx):
        os.kill(os.getpid(), signal.SIGINT)

    assert loop.train_and_evaluate(cfg, tmp_path / "cut", hooks=[(2, ctrl_c)])["step"] == 2
    resumed = loop.train_and_evaluate(cfg, tmp_path / "cut")
    assert resumed["resumed_from"] == 2 and whole["train_step_compiles_after_first"] == 0
    assert resumed["last_train"] == whole["last_train"]
    pa, pb = params_of(tmp_path / "whole"), params_of(tmp_path / "cut")
    for key in pa:
        np.testing.assert_array_equal(pa[key], pb[key], err_msg=str(key))


@pytest.mark.slow
def test_cli_trains_and_resumes(tmp_path):
    """``scripts/train.py`` twice on one workdir: the second call continues the first."""
    cmd = [sys.executable, "scripts/train.py", "--config", "configs/tiny.yaml", "--workdir",
           str(tmp_path), "--set", "data.seq_len=16", "--set", "data.batch_size=4",
           "--set", "train.eval_at_start=false", "--set", "data.max_eval_batches=2",
           "--set", "log.progress=false", "--set", "optim.max_steps=4"]
    first = subprocess.run(cmd + ["--set", "train.steps=2"], cwd=ROOT, capture_output=True,
                           text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    second = subprocess.run(cmd + ["--set", "train.steps=4"], cwd=ROOT, capture_output=True,
                            text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout[second.stdout.rfind("\n{\n") + 1:])
    assert summary["resumed_from"] == 2 and summary["step"] == 4
    bad = subprocess.run(cmd + ["--set", "train.stepz=4"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "train.stepz" in bad.stderr


@pytest.mark.slow
def test_converted_reference_checkpoint_resumes(tmp_path):
    """A converted reference checkpoint (fixture A_v256) continues training via train.init_from."""
    out = tmp_path / "A"
    conv = subprocess.run([sys.executable, "scripts/convert_checkpoint.py",
                           "tests/fixtures/A_v256/best_model.pt", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert conv.returncode == 0, conv.stderr[-3000:]
    meta = gf.load(out).meta
    start = int(meta["step"])
    cfg = build_run_config(apply_overrides(
        __import__("yaml").safe_load((ROOT / "configs" / "reference_A.yaml").read_text()),
        ["data.dataset=embedded", "data.tokenizer=bytes", "data.seq_len=16", "data.batch_size=4",
         "data.max_eval_batches=1", f"train.steps={start + 2}", f"train.init_from={out}",
         "log.progress=false", "log.attention_figures=false", "log.curves=false"]))
    assert cfg.model.vocab_size == 256
    summary = loop.train_and_evaluate(cfg, tmp_path / "run")
    assert summary["start_step"] == start and summary["step"] == start + 2
    assert np.isfinite(summary["last_train"]["loss/total"])
