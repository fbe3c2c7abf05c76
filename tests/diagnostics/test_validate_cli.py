"""``scripts/validate_attention.py`` (diagnostics.run) end to end, run in-process.

Fast runs (one compile per model config and input shape):

* D (1 layer): the full report on the fixture's golden tokens (gradient flow, ablation, κ sweep,
  JSON, markdown, figures).
* A (2 layers): golden tokens, no gradient flow / ablation; T_A shares A's compiled code
  (same config and shape) with ``--layers last``.
* G (self-masking, ALiBi, layer norms, tied output): two windows of a user text.
* A native random-weight model from ``--config`` (config D, so D's compiled code is reused) with
  ``--ablate-ffn-beta``.

Reported numbers are checked against independent numpy computations on the fixtures' golden β
and logits (PyTorch outputs). The full report on all four fixtures is marked slow.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from diagnostics import report as R  # noqa: E402
from diagnostics import schema as S  # noqa: E402
from gaugeformer.convert.recover import config_from_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
CODE = "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n"


def _script():
    spec = importlib.util.spec_from_file_location("_validate_attention",
                                                  ROOT / "scripts" / "validate_attention.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(mod, argv):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        res = mod.main(argv)
    assert buf.getvalue().strip() == res.console.strip()
    return res


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("validate_cli")
    mod = _script()
    # native random-weight model: the publication-default config D (configs/publication_D.yaml)
    # at the fixture's vocabulary, so it shares D's compiled code (same config and shapes)
    cfg = base / "native_D.json"
    native = config_from_file(ROOT / "configs" / "publication_D.yaml").cfg.replace(vocab_size=256)
    cfg.write_text(json.dumps(native.to_dict(), ensure_ascii=False))
    out = {"base": base}
    out["D"] = _run(mod, ["--checkpoint", str(FIX / "D_v256" / "best_model.pt"),
                          "--ids", str(FIX / "D_v256" / "golden.npz"),
                          "--json", str(base / "D.json"), "--markdown", str(base / "D.md"),
                          "--plot-dir", str(base / "D_plots")])
    out["A"] = _run(mod, ["--checkpoint", str(FIX / "A_v256" / "best_model.pt"),
                          "--ids", str(FIX / "A_v256" / "golden.npz"), "--no-gradflow",
                          "--no-ablation", "--no-plots", "--json", str(base / "A.json")])
    out["T_A"] = _run(mod, ["--checkpoint", str(FIX / "T_A_v256"), "--ids",
                            str(FIX / "T_A_v256" / "golden.npz"), "--layers", "last",
                            "--metrics", "valid", "--no-gradflow", "--no-ablation",
                            "--no-plots", "--json", str(base / "T_A.json")])
    # G: two 32-byte windows of a text, the same metric shapes as A
    out["G"] = _run(mod, ["--checkpoint", str(FIX / "G_v256" / "best_model.pt"), "--seq_len",
                          "32", "--batch", "2", "--text", CODE, "--no-gradflow",
                          "--no-ablation", "--no-plots", "--kappas", "0.5", "1.7272727",
                          "--json", str(base / "G.json")])
    out["native"] = _run(mod, ["--config", str(cfg), "--random", "--seq_len", "32", "--batch", "2",
                               "--no-gradflow", "--ablate-ffn-beta", "--no-plots", "--kappas",
                               "--json", str(base / "native.json")])
    return out


# ------------------------------------------------------------------------------------------------
# independent numpy references
# ------------------------------------------------------------------------------------------------


def np_legacy_row_std(b):  # [H, N, N]: all j != i, masked keys included
    b = np.array(b, np.float64)
    n = b.shape[-1]
    b[:, np.arange(n), np.arange(n)] = np.nan
    return np.nanstd(b, axis=-1).mean(-1)


def np_valid_row_std(b):  # [H, N, N], causal mask, diagonal included, rows with >= 2 keys
    out = []
    for h in range(b.shape[0]):
        out.append(np.mean([np.std(np.asarray(b[h, i, : i + 1], np.float64))
                            for i in range(1, b.shape[-1])]))
    return np.array(out)


def np_entropy_legacy(b):  # [B, H, N, N]
    b = np.asarray(b, np.float64)
    return float(np.mean(-(b * np.log(b + 1e-10)).sum(-1) / math.log(b.shape[-1])))


def np_entropy_valid(b):  # [B, H, N, N]: H_i over j <= i over ln(i + 1), rows i >= 1
    b = np.asarray(b, np.float64)
    vals = [-(b[..., i, : i + 1] * np.log(b[..., i, : i + 1] + 1e-10)).sum(-1) / math.log(i + 1)
            for i in range(1, b.shape[-1])]
    return float(np.mean(np.stack(vals, -1)))


def np_uniform_dev(b):  # [H, N, N]: RMS over all keys of beta - 1/N, mean over H*N rows
    b = np.asarray(b, np.float64)
    return float(np.sqrt(np.mean((b - 1.0 / b.shape[-1]) ** 2, axis=-1)).mean())


def np_ce(logits, targets):
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    return float(-np.take_along_axis(logp, targets[..., None], -1).mean())


def _tests(doc, layer):
    return {t["name"]: t for t in doc["layers"][layer]["tests"]}


# ------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["D", "A", "T_A", "G", "native"])
def test_console_nine_parts_every_layer_and_json_schema(runs, name):
    res = runs[name]
    n_rep = len(res.layers)
    text = res.console
    for part, title in S.PART_TITLES.items():
        assert text.count(f"[{part}/9] {title}") == n_rep, (name, title)
    for li in res.layers:
        assert f"ATTENTION VALIDATION REPORT — layer {li} of {res.cfg.n_layers}" in text
        assert f"SUMMARY — layer {li}" in text
    assert text.count("CONCLUSION:") >= n_rep
    assert "Interpretation" in text and "Per-irrep row_std:" in text
    assert f"OVERALL ({n_rep} of {res.cfg.n_layers} layers" in text
    path = runs["base"] / f"{name}.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    R.check_schema(doc)
    rep = R.read_json(path)
    assert [lay.layer for lay in rep.layers] == list(res.layers)
    assert rep.head_labels == tuple(res.cfg.head_labels)
    for lay in doc["layers"]:
        assert [p["part"] for p in lay["parts"]] == list(range(1, 10))
        assert {t["name"] for t in lay["tests"]} >= {"Normalization", "Causality", "vs Uniform",
                                                     "Entropy", "Per-Head Analysis",
                                                     "Query Variation"}
    assert doc["meta"]["seq_len"] == res.inputs.tokens.shape[1]


def test_numbers_match_numpy_on_golden_beta(runs):
    """A and D on the golden tokens: report numbers vs numpy on the PyTorch fixture's β."""
    for name in ("A", "D"):
        g = np.load(FIX / f"{name}_v256" / "golden.npz")
        res = runs[name]
        np.testing.assert_array_equal(res.inputs.tokens, g["tokens"])
        doc = json.loads((runs["base"] / f"{name}.json").read_text(encoding="utf-8"))
        assert doc["metrics_mode"] == "both"
        for li in res.layers:
            beta = g[f"attn_beta_L{li}"]  # [B, H, N, N]
            np.testing.assert_allclose(res.beliefs.beta[li], beta, atol=2e-5)
            heads = doc["layers"][li]["heads"]
            np.testing.assert_allclose([h["row_std"] for h in heads],
                                       np_legacy_row_std(beta[0]), rtol=2e-4, atol=1e-6)
            np.testing.assert_allclose([h["row_std_valid"] for h in heads],
                                       np_valid_row_std(beta[0]), rtol=2e-4, atol=1e-6)
            t = _tests(doc, li)
            assert t["Entropy"]["score"] == pytest.approx(np_entropy_legacy(beta), rel=1e-4)
            assert t["Entropy"]["valid"]["score"] == pytest.approx(np_entropy_valid(beta), rel=1e-4)
            assert t["vs Uniform"]["score"] == pytest.approx(np_uniform_dev(beta[0]), rel=1e-3)
            err = float(np.abs(np.asarray(beta, np.float64).sum(-1) - 1).max())
            assert t["Normalization"]["score"] == pytest.approx(err, abs=2e-6)
            assert doc["layers"][li]["irreps"]["legacy"][0]["row_std_mean"] == pytest.approx(
                float(np.mean(np_legacy_row_std(beta[0])[
                    [h for h, lab in enumerate(res.cfg.head_labels)
                     if lab == res.cfg.head_labels[0]]])), rel=2e-4)


def test_gradient_flow_real_and_through_attention(runs):
    res = runs["D"]
    gf = res.gradflow
    assert gf is not None and gf.attention_params == 0
    names = [g.name for g in gf.groups]
    # D: gauge-fixed priors, learned positions, VFE FFN with a learnable step, untied output
    assert names == ["embed.mu", "embed.sigma", "embed.phi", "positional.mu", "positional.phi",
                     "blocks.0.ffn.step_size", "output"]
    for g in gf.groups:
        assert math.isfinite(g.norm) and g.norm > 0, g
        assert math.isfinite(g.norm_detached)
    by = {g.name: g for g in gf.groups}
    # β of the only layer is computed before its FFN and the output: nothing flows there via β
    assert not by["output"].through_attention and not by["blocks.0.ffn.step_size"].through_attention
    assert by["positional.phi"].through_attention and by["embed.mu"].through_attention
    assert gf.loss == pytest.approx(gf.loss_detached, rel=1e-6)
    assert len(gf.dbeta) == 1 and gf.dbeta[0] > 0
    doc = json.loads((runs["base"] / "D.json").read_text(encoding="utf-8"))
    meta = doc["meta"]["gradient_flow"]
    assert [m["name"] for m in meta["groups"]] == names
    part8 = doc["layers"][0]["parts"][7]
    assert part8["ran"] and any("Attention parameters: none" in x for x in part8["notes"])
    assert "Groups receiving gradient through attention" in res.console
    verdict = _tests(doc, 0)["Gradient Flow"]
    assert verdict["severity"] == "warning" and "No attention parameters" in verdict["message"]


def test_ablation_next_token_targets(runs):
    res = runs["D"]
    g = np.load(FIX / "D_v256" / "golden.npz")
    ab = res.ablation
    tokens = g["tokens"]
    # learned CE on shifted targets, from the PyTorch logits of the same tokens
    assert ab.losses["learned"] == pytest.approx(np_ce(g["logits"][:, :-1], tokens[:, 1:]),
                                                 rel=1e-5)
    assert ab.losses["learned"] == pytest.approx(np_ce(res.beliefs.logits[:, :-1], tokens[:, 1:]),
                                                 rel=1e-5)
    unshifted = np_ce(res.beliefs.logits, tokens)  # the reference's copy task (targets = inputs)
    assert abs(ab.losses["learned"] - unshifted) > 1e-3
    assert set(ab.losses) == {"learned", "causal_uniform", "uniform", "local"}
    assert abs(ab.losses["causal_uniform"] - ab.losses["learned"]) > 1e-4
    assert all(math.isfinite(v) for v in ab.losses.values())
    assert ab.passthrough_error is not None and ab.passthrough_error < 1e-5
    assert not ab.override_ffn_beta and ab.predictions == 2 * 31
    doc = json.loads((runs["base"] / "D.json").read_text(encoding="utf-8"))
    t = _tests(doc, 0)
    pct = 100 * math.expm1(ab.losses["causal_uniform"] - ab.losses["learned"])
    assert t["Ablation: Causal uniform"]["score"] == pytest.approx(pct, rel=1e-6)
    assert {"Ablation: Uniform", "Ablation: Local"} <= set(t)
    assert doc["meta"]["ablation"]["override_ffn_beta"] is False
    assert "FFN's own β overridden: no" in res.console
    nat = runs["native"]
    assert nat.ablation.override_ffn_beta and "FFN's own β overridden: yes" in nat.console
    assert nat.gradflow is None and "Not run: no per-group gradient norms" in nat.console


def test_kappa_sweep_and_files(runs):
    res = runs["D"]
    sw = res.sweep
    assert res.cfg.kappa_beta == pytest.approx(sw.kappas[4], rel=1e-5)
    assert sw.row_std["valid"].shape == (6, 1, 3)
    assert res.kappa_check < 1e-5
    # row_std at the model's κ is the report's own per-head value
    heads = [h.row_std_valid for h in res.report.layers[0].heads]
    np.testing.assert_allclose(sw.row_std["valid"][4, 0], heads, rtol=1e-5)
    assert "κ SWEEP" in res.console and "κ sweep, row_std (valid), layer 0" in res.console
    names = {p.name for p in res.files}
    assert {"D.json", "D.md", "irrep_summary_valid.png", "kappa_sweep_L0.png"} <= names
    md = (runs["base"] / "D.md").read_text(encoding="utf-8")
    assert "## Gradient flow" in md and "## Ablation" in md and "## κ sweep" in md
    # G: self-masking and ALiBi are reproduced by the attention-mode sweep
    assert runs["G"].kappa_check < 1e-5
    assert runs["native"].sweep is None


def test_layers_last_and_valid_mode(runs):
    res = runs["T_A"]
    assert res.layers == (1,)
    doc = json.loads((runs["base"] / "T_A.json").read_text(encoding="utf-8"))
    assert doc["metrics_mode"] == "valid" and [lay["layer"] for lay in doc["layers"]] == [1]
    beta = np.load(FIX / "T_A_v256" / "golden.npz")["attn_beta_L1"]
    np.testing.assert_allclose([h["row_std_valid"] for h in doc["layers"][0]["heads"]],
                               np_valid_row_std(beta[0]), rtol=2e-4, atol=1e-6)
    assert "layer 0" not in "".join(doc["summary"]["valid"]["issues"])


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["A_v256", "D_v256", "G_v256", "T_A_v256"])
def test_full_report_every_fixture(tmp_path, fixture):
    res = _run(_script(), ["--checkpoint", str(FIX / fixture / "best_model.pt"), "--random",
                           "--seq_len", "16", "--ablate-ffn-beta", "--json",
                           str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md"),
                           "--plot-dir", str(tmp_path / "plots")])
    R.check_schema(json.loads((tmp_path / "r.json").read_text(encoding="utf-8")))
    assert all(math.isfinite(g.norm) and g.norm > 0 for g in res.gradflow.groups)
    assert res.ablation.override_ffn_beta
    for part, title in S.PART_TITLES.items():
        assert res.console.count(f"[{part}/9] {title}") == res.cfg.n_layers
