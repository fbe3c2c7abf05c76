"""The three attention scripts, run in-process (one JAX compile per model config for the module).

A tiny random model (``--config`` JSON written here: V = 256 so the byte tokenizer applies,
N = 16) drives every script and mode; the trained reference fixture ``T_A_v256`` drives the
analyzer once. Validation mode reads a generated WikiText-format file through the real loader
(``--data-files``), offline.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from diagnostics import capture as C  # noqa: E402
from diagnostics.export import load_bertviz  # noqa: E402
from diagnostics.cli import visualize_parser  # noqa: E402
from gaugeformer.loading import CheckpointLoadError, load, random_model  # noqa: E402
from gaugeformer.data.corpus import make_wikitext_format_file, resolve_tokenizer  # noqa: E402
from gaugeformer.data.text import clean_wikitext_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
T_A = ROOT / "tests" / "fixtures" / "T_A_v256"
N = 16
TEXT16 = "def f(x): return"  # 16 bytes = 16 byte tokens
TINY = {"vocab_size": 256, "embed_dim": 11, "n_layers": 2, "max_seq_len": N,
        "irreps": "3x0e+1x1e+1x2e", "kappa_beta": 0.5, "ffn": "mlp"}
L, H = TINY["n_layers"], 5
DPI = "50"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_cli_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    cfg = base / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    wiki = make_wikitext_format_file(base / "wiki.valid.raw")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GAUGEFORMER_DATA_CACHE", str(base / "token_cache"))
        yield {"base": base, "config": str(cfg), "wiki": wiki,
               "va": _script("visualize_attention"), "rc": _script("attention_recency"),
               "an": _script("analyze_attention")}


def _assert_png(path: os.PathLike | str) -> None:
    img = mpimg.imread(os.fspath(path))
    assert img.ndim == 3 and min(img.shape[:2]) > 50
    assert float(img[..., :3].std()) > 0.03, f"{path} looks blank"


def test_visualize_text_mode_figures_html_exports(env, capsys) -> None:
    out = env["base"] / "va_text"
    res = env["va"].main(["--config", env["config"], "--text", TEXT16, "--output-dir", str(out),
                          "--dpi", DPI])
    assert [f.path.name for f in res.figures] == [f"attention_context_L{i}.png" for i in range(L)]
    for rec in res.figures:
        assert rec.panels["head"] == H and rec.panels["average"] == 1
        assert rec.panels["kl"] == 1 and rec.panels["kl_spread"] == 1
        assert rec.panels["row_uniformity"] == 1 and rec.panels["tokens"] == 1
        assert len(rec.stats["row_std"]) == H and np.isfinite(rec.stats["kl_spread"])
        _assert_png(rec.path)
    assert res.captured.beta.shape == (L, 1, H, N, N) == res.captured.kl.shape
    np.testing.assert_allclose(res.captured.beta.sum(-1), 1.0, atol=1e-4)
    assert res.sequences[0].text == TEXT16
    # console summary (seed 002): per-head row_std, averaged row_std, KL row_std, per layer
    text = capsys.readouterr().out
    assert text.count("Head  4 (\u21132") == L and text.count("AVERAGED") == L
    assert text.count("KL matrix") == L and "random weights (config tiny.json" in text
    assert (out / "summary.txt").read_text(encoding="utf-8").strip() == res.report.strip()
    # offline HTML and the bertviz / circuitsvis exports
    page = (out / "attention.html").read_text(encoding="utf-8")
    assert "http" not in page.lower() and "random weights" in page
    layers, toks = load_bertviz(out / "attention_bertviz.npz")
    assert len(layers) == L and layers[0].shape == (1, H, N, N) and "".join(toks) == TEXT16
    doc = json.loads((out / "attention_circuitsvis_L1.json").read_text(encoding="utf-8"))
    assert np.asarray(doc["attention"]).shape == (H, N, N) and doc["layer"] == 1
    np.testing.assert_allclose(doc["attention"], res.captured.beta[1, 0], atol=1e-5)


def test_visualize_validation_mode_reads_wikitext_file(env) -> None:
    out = env["base"] / "va_val"
    res = env["va"].main(["--config", env["config"], "--mode", "validation", "--dataset",
                          "wikitext-2", "--data-files", f"validation={env['wiki']}",
                          "--seq-len", str(N), "--index", "2", "--layers", "1",
                          "--output-dir", str(out), "--dpi", DPI])
    seq = res.sequences[0]
    rows = Path(env["wiki"]).read_text(encoding="utf-8").splitlines(keepends=True)
    expected = clean_wikitext_rows(rows).encode("utf-8")[2 * N:3 * N]
    assert bytes(seq.ids.astype(np.uint8)) == expected
    assert "wiki.valid.raw" in seq.source
    assert f"window 2: tokens {2 * N}\u2013{3 * N - 1}" in seq.source
    assert [f.path.name for f in res.figures] == ["attention_context_L1.png"]
    assert res.figures[0].panels["head"] == H and "Layer 1:" in res.report
    assert "Layer 0:" not in res.report
    _assert_png(res.figures[0].path)


def test_random_mode_and_source_errors(env) -> None:
    """Sequence selection of the shared options (no forward pass needed)."""
    parse = visualize_parser().parse_args
    cfg = random_model(env["config"]).config
    (seq,) = C.sequences_from_args(parse(["--mode", "random", "--seq-len", "99"]), cfg)
    assert len(seq) == N and seq.ids.max() < 100  # clipped to max_seq_len
    assert "random token ids" in seq.source and "debugging only" in seq.source
    many = C.sequences_from_args(parse(["--mode", "validation", "--data-files", str(env["wiki"]),
                                        "--seq-len", "8", "--index", "3"]), cfg, count=2)
    assert [s.source.split(", ")[1] for s in many] == ["window 3: tokens 24\u201331",
                                                       "window 4: tokens 32\u201339"]
    with pytest.raises(ValueError, match="validation split has"):
        C.sequences_from_args(parse(["--mode", "validation", "--data-files", str(env["wiki"]),
                                     "--index", "100000"]), cfg)
    with pytest.raises(SystemExit, match="--layers"):
        env["va"].main(["--config", env["config"], "--layers", "5", "--output-dir",
                        str(env["base"] / "never")])


def test_recency_figures_and_recommendations(env, capsys) -> None:
    out = env["base"] / "recency"
    res = env["rc"].main(["--config", env["config"], "--data-files", str(env["wiki"]),
                          "--samples", "3", "--seq-len", str(N), "--figure-samples", "1",
                          "--output-dir", str(out), "--dpi", DPI])
    names = sorted(f.path.name for f in res.figures)
    heads = [f for f in res.figures if f.path.name.endswith("_heads.png")]
    lines = [f for f in res.figures if f.path.name.endswith("_lines.png")]
    assert len(heads) == L and len(lines) == L and "recency_summary.png" in names
    assert all(f.panels["head"] == H for f in heads)
    assert all(f.panels["last_query"] == 1 and f.panels["received"] == 1 for f in lines)
    summary = next(f for f in res.figures if f.path.name == "recency_summary.png")
    assert sum(v for k, v in summary.panels.items() if k.startswith("summary")) == 6
    for rec in (heads[0], lines[-1], summary):
        _assert_png(rec.path)
    assert res.captured.beta.swapaxes(0, 1).shape == (3, L, H, N, N)
    assert [f"window {i}" in s.source for i, s in enumerate(res.sequences)] == [True] * 3
    text = capsys.readouterr().out
    assert "RECOMMENDATION" in text and "threshold" in text and "ratio > 2.0" in text
    assert (out / "recency_report.txt").read_text(encoding="utf-8").strip() == res.report.strip()


def test_analyze_tiny_all_layers_topk_flow(env, capsys) -> None:
    out = env["base"] / "analyze"
    res = env["an"].main(["--config", env["config"], "--text", TEXT16, "--head", "4",
                          "--top-k", "3", "--output-dir", str(out), "--dpi", DPI,
                          "--show-plots"])
    names = [f.path.name for f in res.figures]
    assert names == ["layer_0_head_4.png", "layer_0_all_heads.png", "layer_1_head_4.png",
                     "layer_1_all_heads.png", "attention_flow.png"]
    by = {f.path.name: f for f in res.figures}
    assert by["layer_1_head_4.png"].panels == {"head": 1, "colorbar": 1}
    assert by["layer_0_all_heads.png"].panels["head"] == H
    assert by["attention_flow.png"].panels["flow"] == 1
    for rec in res.figures:
        _assert_png(rec.path)
    # the top-k report ranks the captured β of head 4 (not a recomputation)
    report = (out / "topk.txt").read_text(encoding="utf-8")
    assert "head 4" in report and report.count("attends most to") == L * N
    beta = res.captured.beta[1, 0, 4]
    layer1 = report.split("Layer 1:")[1].splitlines()
    for i in (5, N - 1):
        top = int(np.argmax(beta[i, :i + 1]))
        at = next(k for k, line in enumerate(layer1) if line.startswith(f"  [{i:>3}] "))
        assert re.search(rf"1\. \[\s*{top}\]", layer1[at + 1]), layer1[at:at + 2]
    assert "attends most to" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--layer 7"):
        env["an"].main(["--config", env["config"], "--layer", "7", "--output-dir", str(out)])


def test_analyze_reference_checkpoint(env) -> None:
    """The trained PyTorch fixture through the .pt path (config from model_config.json)."""
    out = env["base"] / "analyze_ta"
    res = env["an"].main(["--checkpoint", str(T_A / "best_model.pt"), "--text", TEXT16,
                          "--layer", "1", "--max-heads", "2", "--output-dir", str(out),
                          "--dpi", DPI])
    assert [f.path.name for f in res.figures] == [
        "layer_1_head_0.png", "layer_1_head_1.png", "layer_1_all_heads.png", "attention_flow.png"]
    assert res.figures[2].panels["head"] == 2
    assert res.cfg.head_labels == ("\u21130",) * 5 + ("\u21131",) * 3 + ("\u21132",)
    assert "T_A_v256/best_model.pt" in res.checkpoint and "model_config.json" in res.checkpoint
    assert res.captured.beta.shape == (2, 1, 9, N, N)
    for rec in res.figures:
        _assert_png(rec.path)
    page = (out / "attention.html").read_text(encoding="utf-8")
    assert "T_A_v256" in page
    # the same weights as a converted orbax directory give the same attention
    from gaugeformer.convert.convert import FORMAT, save_converted

    ref = load(T_A / "best_model.pt")
    conv = save_converted(env["base"] / "T_A_converted", ref.model,
                          {"format": FORMAT, "step": 300, "converted_from": "best_model.pt"})
    converted = load(conv)
    assert converted.config == ref.config
    assert converted.description.startswith("T_A_converted (converted from best_model.pt")
    np.testing.assert_array_equal(C.capture_attention(converted.model, res.sequences[0].ids).beta,
                                  res.captured.beta)


def test_loader_messages(tmp_path, env) -> None:
    rnd = random_model(env["config"])
    assert rnd.description.startswith("random weights") and rnd.config.vocab_size == 256
    with pytest.raises(CheckpointLoadError, match="no such"):
        load(tmp_path / "missing.pt")
    (tmp_path / "run").mkdir()  # empty: no checkpoint
    with pytest.raises(CheckpointLoadError, match="no checkpoint found"):
        load(tmp_path / "run")
    with pytest.raises(ValueError, match="YAML or JSON only"):  # seed 000's --config x.py
        random_model(tmp_path / "config.py")


def test_tokenizer_resolution() -> None:
    assert resolve_tokenizer(256).name == "bytes"
    assert resolve_tokenizer(50257).name == "gpt2"
    with pytest.raises(ValueError, match="restricted GPT-2 vocabulary"):
        resolve_tokenizer(2048)
    with pytest.raises(ValueError, match="fits neither"):
        resolve_tokenizer(64)
    gpt2 = resolve_tokenizer(50257)
    seq = C.text_sequence("Hello wörld", gpt2, max_len=2)
    assert len(seq) == 2 and "first 2 of" in seq.source
    assert b"".join(gpt2.pieces(gpt2.encode("Hello wörld"))).decode() == "Hello wörld"
    assert C.parse_data_files(["a.raw", "train=b.raw"]) == {"validation": ["a.raw"],
                                                           "train": ["b.raw"]}
