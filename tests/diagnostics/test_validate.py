"""Tests of the 9-part report (diagnostics.validate) and its JSON / markdown output."""

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from diagnostics import metrics as M
from gaugeformer import stats
from diagnostics import report as R
from diagnostics import cli as CLI
from diagnostics import irreps as IR
from diagnostics import kappa as K
from diagnostics import render as RD
from diagnostics import schema as S
from diagnostics import summary as SM
from diagnostics import validate as V

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "A_v256" / "golden.npz"
IRREPS = "5x0e+3x1e+1x2e"


@pytest.fixture(scope="module")
def golden():
    """Reference-fixture metrics; same shapes and static arguments as test_metrics (jit cache)."""
    g = np.load(FIXTURE)
    beta = np.stack([g["attn_beta_L0"], g["attn_beta_L1"]])
    kl = np.stack([g["attn_kl_L0"], g["attn_kl_L1"]])
    special = (int(g["tokens"][0, 3]),)
    m = jax.device_get(
        M.all_metrics(
            beta, kl, None, g["tokens"], mu=g["mu_final"], phi=g["phi_final"],
            sigma_diag=np.diagonal(g["sigma_final"], axis1=-2, axis2=-1), special_ids=special,
        )
    )
    labels, dims = IR.head_labels(IRREPS, 19)
    return {"m": m, "special": special, "labels": labels, "dims": dims, "kl": kl,
            "tokens": g["tokens"]}


def make(golden, mode="legacy", **kw):
    kw.setdefault("head_labels", golden["labels"])
    kw.setdefault("special_ids", golden["special"])
    return V.validate(golden["m"], mode=mode, **kw)


def by_name(layer, mode=None):
    return {r.name: r for r in layer.results(mode)}


# ------------------------------------------------------------------------------------------------
# Console rendering
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "valid", "both"])
def test_console_has_all_nine_parts_per_layer(golden, mode):
    rep = make(golden, mode)
    text = RD.render_console(rep)
    n_layers = len(rep.layers)
    assert n_layers == 2
    for part, title in S.PART_TITLES.items():
        assert text.count(f"[{part}/9] {title}") == n_layers, title
    for layer in range(n_layers):
        assert f"ATTENTION VALIDATION REPORT — layer {layer} of {n_layers}" in text
        assert f"SUMMARY — layer {layer}" in text
    assert text.count("CONCLUSION:") == n_layers * len(S.MODES[mode]) + len(S.MODES[mode])
    assert "Not run: no per-group gradient norms supplied" in text
    assert "Not run: no ablation losses supplied" in text
    assert "  Head  8 (ℓ2): row_std=" in text
    if mode == "both":
        assert "   [valid] " in text and "| valid=" in text


# ------------------------------------------------------------------------------------------------
# Decisions follow the metric numbers and the reference's thresholds
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "valid"])
def test_decisions_match_thresholds(golden, mode):
    m = golden["m"]
    rep = make(golden, mode)
    for lay in rep.layers:
        li = lay.layer
        res = by_name(lay)
        assert [r.name for r in lay.results()] == [
            "Normalization", "Causality", "KL Properties", "Positional Bias", "Token Repetition",
            "Special Tokens", "vs Uniform", "Entropy", "Per-Head Analysis", "Query Variation",
            "Diversity Correlation",
        ]
        near, far = m[f"pos_near_{mode}"][li, 0], m[f"pos_far_{mode}"][li, 0]
        assert res["Positional Bias"].passed == bool(near > 1.1 * far)
        assert res["Positional Bias"].score == pytest.approx(near / (far + 1e-10), rel=1e-6)
        dev = m[f"uniform_dev_mean_{mode}"][li, 0].mean()
        assert res["vs Uniform"].passed == bool(dev > 0.05)
        assert res["vs Uniform"].score == pytest.approx(dev, rel=1e-6)
        ent = m[f"entropy_norm_{mode}"][li].mean()  # whole batch
        assert res["Entropy"].score == pytest.approx(ent, rel=1e-6)
        expect = ("info", True) if ent < 0.5 else ("warning", True) if ent < 0.8 else (
            "critical", False)
        assert (res["Entropy"].severity, res["Entropy"].passed) == expect
        rs = m[f"row_std_{mode}"][li, 0]
        n_sharp, n_med = int((rs > 0.1).sum()), int(((rs > 0.05) & (rs <= 0.1)).sum())
        assert res["Per-Head Analysis"].score == pytest.approx((n_sharp + 0.5 * n_med) / 9)
        qv = m[f"query_var_{mode}"][li, 0].mean()
        assert res["Query Variation"].passed == bool(qv > 0.02)
        mu = m["mu_div"][li, 0]
        assert res["Diversity Correlation"].passed == bool(mu > 0.3 and rs.mean() > 0.05)
        assert res["Normalization"].passed and res["Causality"].passed
        assert res["KL Properties"].passed
        # the fixture has no repeated token in batch 0; the special id is present
        assert res["Token Repetition"].message == "ℹ No repeated tokens"
        assert res["Special Tokens"].message.startswith("ℹ Special token attention:")


def test_reference_counting_and_conclusions():
    ok = S.CheckResult("a", True, 1.0, 0.5, "info", "✓")
    warn_pass = S.CheckResult("b", True, 0.7, 0.8, "warning", "⚠️")
    info_fail = S.CheckResult("c", False, None, None, "info", "ℹ skipped")
    warn_fail = S.CheckResult("d", False, 1.0, 1.1, "warning", "⚠️ w")
    crit_fail = S.CheckResult("e", False, 0.0, 0.05, "critical", "❌ x")
    s = SM.summarize([ok, warn_pass, info_fail])
    assert (s.total_tests, s.passed, s.critical_failures, s.warnings) == (3, 2, 0, 0)
    assert SM.conclude(s).status == "ok"
    s = SM.summarize([ok, warn_fail, crit_fail, info_fail])
    assert (s.passed, s.critical_failures, s.warnings) == (1, 1, 1)
    assert s.issues == ("e: ❌ x", "d: ⚠️ w")  # criticals first
    assert SM.conclude(s).status == "critical"
    c = SM.conclude(SM.summarize([ok, warn_fail]))
    assert c.status == "warning" and len(c.hints) == 3


def test_threshold_branches_on_edited_metrics(golden):
    m = {k: np.array(v) for k, v in golden["m"].items()}
    for value, expect in ((0.4, ("info", True)), (0.79, ("warning", True)),
                          (0.81, ("critical", False))):
        m["entropy_norm_legacy"][...] = value
        r = by_name(V.validate(m, head_labels=golden["labels"]).layers[0])["Entropy"]
        assert (r.severity, r.passed) == expect
    m["row_std_legacy"][0, 0] = [0.2] + [0.0] * 8  # one sharp head is enough
    r = by_name(V.validate(m).layers[0])["Per-Head Analysis"]
    assert r.passed and r.severity == "info" and r.score == pytest.approx(1 / 9)
    m["row_std_legacy"][0, 0] = [0.07] * 5 + [0.0] * 4  # 5 medium > 9 // 2
    r = by_name(V.validate(m).layers[0])["Per-Head Analysis"]
    assert r.passed and r.severity == "warning"
    m["rowsum_maxerr_all"][0] = 2e-4
    r = by_name(V.validate(m).layers[0])["Normalization"]
    assert not r.passed and r.severity == "critical"
    m["kl_min"][0, 0, 0] = -1e-3
    r = by_name(V.validate(m).layers[0])["KL Properties"]
    assert not r.passed and "negative KL" in r.message
    m["query_var_legacy"][0] = 0.03
    r = by_name(V.validate(m).layers[0])["Query Variation"]
    assert r.passed and r.severity == "warning"
    m["mu_div"][0] = 0.1
    r = by_name(V.validate(m).layers[0])["Diversity Correlation"]
    assert not r.passed and r.severity == "warning"
    with pytest.raises(ValueError):
        V.validate(m, batch_index=1)  # query variation only ran on batch element 0
    # N <= 10: all_metrics leaves out the positional ratio and the distant-query distances
    for key in [k for k in m if k.startswith(("pos_ratio_", "query_distant_"))]:
        del m[key]
    lay = V.validate(m, mode="both").layers[0]
    r = by_name(lay)["Positional Bias"]
    assert r.passed and r.severity == "info" and "too short" in r.message
    assert "    Distant queries (Δpos=10): n/a (N <= 10)" in lay.parts[5].notes


# ------------------------------------------------------------------------------------------------
# Parts 8 and 9 from precomputed inputs
# ------------------------------------------------------------------------------------------------


def test_parts_8_and_9_not_run_by_default(golden):
    lay = make(golden).layers[0]
    assert [p.ran for p in lay.parts][7:] == [False, False]
    assert all(r.part not in (8, 9) for r in lay.results())


def test_gradient_flow_branches(golden):
    def verdict(norms):
        lay = make(golden, grad_norms=norms).layers[0]
        return by_name(lay)["Gradient Flow"]

    r = verdict({"mu_embed": 0.3, "phi_embed": 0.1, "ffn": 1.2, "output": 2.0})
    assert not r.passed and r.severity == "warning" and "No attention parameters" in r.message
    r = verdict({"attention": math.nan, "ffn": 1.0})
    assert not r.passed and r.severity == "critical"
    r = verdict({"attention.kappa": 0.0, "ffn": 1.0})
    assert not r.passed and r.severity == "warning" and "attention.kappa" in r.message
    r = verdict({"attention": 0.5, "ffn": 1.0})
    assert r.passed and r.score == 2
    per_layer = [{"attn": 1.0}, {"attn": 0.0, "ffn": 1.0}]
    lays = make(golden, grad_norms=per_layer).layers
    assert [by_name(lay)["Gradient Flow"].passed for lay in lays] == [True, False]


def test_ablation_branches(golden):
    losses = {"learned": 5.0, "uniform": 5.2, "causal_uniform": 5.03, "local": 4.9,
              "shuffled": 5.0}
    lay = make(golden, ablation=losses).layers[0]
    res = by_name(lay)
    pct = 100 * (math.exp(0.2) - 1)
    assert res["Ablation: Uniform"].passed and res["Ablation: Uniform"].severity == "info"
    assert res["Ablation: Uniform"].score == pytest.approx(pct)
    r = res["Ablation: Causal uniform"]
    assert r.passed and r.severity == "warning"  # +3 % PPL
    r = res["Ablation: Shuffled"]
    assert not r.passed and r.severity == "critical"
    r = res["Ablation: Local"]
    assert not r.passed and r.severity == "warning" and "BETTER" in r.message
    assert r.score == pytest.approx(math.exp(5.0) - math.exp(4.9))
    part9 = lay.parts[8]
    assert part9.ran
    assert part9.lines[0] == f"  Learned attention: loss=5.0000, PPL={math.exp(5):.2f}"
    # without a learned loss the study is skipped: an info failure, counted only in the total
    lay = make(golden, ablation={"uniform": 5.0}).layers[0]
    r = by_name(lay)["Ablation Study"]
    assert not r.passed and r.severity == "info"
    s = lay.summaries["legacy"]
    assert s.total_tests == 12 and r.name not in " ".join(s.issues)


# ------------------------------------------------------------------------------------------------
# legacy vs valid on a uniform causal pattern (ref §2.3 confounds)
# ------------------------------------------------------------------------------------------------


def test_both_modes_on_uniform_causal():
    n = 64
    u = np.where(np.tri(n, dtype=bool), 1.0 / np.arange(1, n + 1)[:, None], 1e-8)
    beta = np.broadcast_to(u, (1, 4, 1, n, n)).astype(np.float32)
    m = jax.device_get(M.all_metrics(beta, query_var_batches=4))  # shape shared with test_metrics
    rep = V.validate(m, mode="both", head_labels=["ℓ0"])
    res = by_name(rep.layers[0])
    pos, ent, qv = res["Positional Bias"], res["Entropy"], res["Query Variation"]
    assert pos.passed and pos.score == pytest.approx(3.09, abs=6e-3)  # the mask confound
    assert not pos.valid.passed and pos.valid.score == pytest.approx(1.0, abs=1e-4)
    assert (ent.passed, ent.severity) == (True, "warning")  # 0.771 counts as "moderate"
    assert (ent.valid.passed, ent.valid.severity) == (False, "critical")
    assert qv.passed and not qv.valid.passed  # 0.222 passes; residual variation is 0
    legacy, valid = rep.layers[0].summaries["legacy"], rep.layers[0].summaries["valid"]
    assert valid.critical_failures > legacy.critical_failures
    assert [s.number for s in rep.layers[0].scenarios["valid"]] == [2]
    assert [s.number for s in rep.layers[0].scenarios["legacy"]] == [1]


def test_scenarios():
    labels = ["ℓ0"] * 5 + ["ℓ1"] * 3 + ["ℓ2"]
    assert [s.number for s in SM.match_scenarios(0.04, 0.06, None, labels)] == [1]
    assert [s.number for s in SM.match_scenarios(0.02, 0.01, 0.5, labels)] == [2, 3]
    assert [s.number for s in SM.match_scenarios(0.02, 0.01, 0.5, ["ℓ2"] * 3)] == [2]
    assert SM.match_scenarios(0.04, 0.06, None, labels, ppl=1500.0) == ()
    assert SM.match_scenarios(0.08, 0.06, 0.5, labels) == ()


# ------------------------------------------------------------------------------------------------
# Labels, per-irrep table, κ sweep
# ------------------------------------------------------------------------------------------------


def test_head_labels():
    labels, dims = IR.head_labels(IRREPS)
    assert labels == ("ℓ0",) * 5 + ("ℓ1",) * 3 + ("ℓ2",)
    assert dims == (1,) * 5 + (3,) * 3 + (5,)
    labels, dims = IR.head_labels([("ℓ2", 1, 5), ("ℓ4", 1, 9), ("ℓ5", 1, 11)], embed_dim=27)
    assert labels == ("ℓ2", "ℓ4", "ℓ5", "ℓ0_pad", "ℓ0_pad") and dims == (5, 9, 11, 1, 1)
    assert IR.head_labels("2x1o + 1e")[0] == ("ℓ1", "ℓ1", "ℓ1")
    with pytest.raises(ValueError):
        IR.head_labels("5x0e+junk")
    with pytest.raises(ValueError):
        IR.head_labels(IRREPS, embed_dim=10)


def test_irrep_table():
    labels, dims = IR.head_labels(IRREPS, 20)
    rows = IR.irrep_summary([0.024, 0.03, 0.026, 0.027, 0.028, 0.03, 0.045, 0.04, 0.068, 0.01],
                           labels, dims)
    assert [(r.label, r.heads, r.dim) for r in rows] == [
        ("ℓ0", 5, 1), ("ℓ1", 3, 3), ("ℓ2", 1, 5), ("ℓ0_pad", 1, 1)]
    assert rows[0].row_std_mean == pytest.approx(0.027)
    assert [r.status for r in rows] == ["UNIFORM", "UNIFORM", "MEDIUM", "UNIFORM"]
    table = IR.render_irrep_table(rows)
    assert table.splitlines()[0].startswith("| Head Type | Dimensionality |")
    assert "| ℓ0 (scalar) | 1 | 5 | 0.024 - 0.030 | 0.0270 | ❌ UNIFORM |" in table
    assert "| ℓ2 (tensor) | 5 | 1 | 0.068 - 0.068 | 0.0680 | ⚠️ MEDIUM |" in table


def test_kappa_sweep(golden):
    kl = golden["kl"][0].astype(np.float64)  # [B, H, N, N], layer 0
    n = kl.shape[-1]
    mask = np.tri(n, dtype=bool)

    def beta_fn(kappa):  # the reference's attention: masked softmax of -KL/κ, clamped at 1e-8
        logits = np.where(mask, -kl / kappa, -np.inf)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        return np.maximum(p / p.sum(-1, keepdims=True), 1e-8).astype(np.float32)

    kappas = (0.05, 0.3, 1.0, 5.0)
    sweep = K.kappa_sweep(beta_fn, kappas, mask=mask, labels=golden["labels"])
    assert sweep.row_std["legacy"].shape == (4, 1, 9)
    valid, legacy = sweep.row_std["valid"][:, 0], sweep.row_std["legacy"][:, 0]
    assert np.all(np.diff(valid, axis=0) < 0)  # colder is sharper, for every head
    # KL_ii = 0, so a cold head piles its mass on the diagonal, which legacy row_std excludes:
    # the ℓ2 head is SHARP over valid keys but reads UNIFORM in the reference's metric
    assert stats.status(valid[0, 8]) == "SHARP"
    assert stats.status(legacy[0, 8]) == "UNIFORM" and legacy[0, 8] < legacy[1, 8]
    for k, kappa in enumerate(kappas):  # independent numpy row_std of head 8
        b = beta_fn(kappa)[0, 8].astype(np.float64)
        off = b.copy()
        np.fill_diagonal(off, np.nan)
        assert legacy[k, 8] == pytest.approx(np.nanstd(off, axis=1).mean(), abs=2e-6)
        stds = [b[i, : i + 1].std() for i in range(1, n)]
        assert valid[k, 8] == pytest.approx(np.mean(stds), abs=2e-6)
    text = K.render_kappa_sweep(sweep, "valid", 0)
    assert "mean ℓ2" in text and len(text.splitlines()) == 2 + 4


# ------------------------------------------------------------------------------------------------
# JSON / markdown
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "both"])
def test_json_round_trip_and_schema(golden, tmp_path, mode):
    rep = make(golden, mode, ablation={"learned": 5.0, "uniform": 5.5},
               grad_norms={"ffn": 1.0}, meta={"seq_len": 32})
    path = R.write_json(rep, tmp_path / "report.json")
    assert R.read_json(path) == rep
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["schema_version"] == 1 and doc["kind"] == "gaugeformer.attention_validation"
    assert doc["modes"] == list(S.MODES[mode])
    lay = doc["layers"][1]
    assert [p["part"] for p in lay["parts"]] == list(range(1, 10))
    assert len(lay["tests"]) == 13  # 11 + gradient flow + uniform ablation
    for t in lay["tests"]:
        assert set(t) == {"part", "name", "passed", "score", "threshold", "severity",
                          "message", "valid"}
        assert (t["valid"] is not None) == (mode == "both")
    assert set(lay["summary"]) == set(S.MODES[mode])
    assert lay["conclusion"][mode if mode != "both" else "legacy"]["status"] == "critical"
    # schema violations
    for breakage in (
        lambda d: d.update(schema_version=2),
        lambda d: d["layers"][0]["tests"][0].pop("severity"),
        lambda d: d["layers"][0]["tests"][0].update(severity="fatal"),
        lambda d: d["layers"][0]["parts"].pop(),
        lambda d: d.update(modes=["valid"]),
        lambda d: d["layers"][0]["tests"][0].update(passed=1),
    ):
        bad = json.loads(path.read_text(encoding="utf-8"))
        breakage(bad)
        with pytest.raises(R.SchemaError):
            R.report_from_dict(bad)


def test_json_is_strict_with_non_finite_scores(golden, tmp_path):
    losses = {"learned": 800.0, "uniform": 900.0, "causal_uniform": math.inf}
    rep = make(golden, ablation=losses)
    res = by_name(rep.layers[0])
    assert res["Ablation: Uniform"].score == pytest.approx(100 * math.expm1(100.0))
    assert res["Ablation: Uniform"].passed  # both PPLs overflow; the ratio does not
    assert res["Ablation: Causal uniform"].score is None  # inf -> no finite score
    text = R.write_json(rep, tmp_path / "r.json").read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    assert R.read_json(tmp_path / "r.json") == rep


def test_markdown(golden, tmp_path):
    rep = make(golden, "both")
    text = R.write_markdown(rep, tmp_path / "r.md").read_text(encoding="utf-8")
    assert text.startswith("# Attention validation report")
    assert text.count("## Layer ") == 2
    assert "| 4 | vs Uniform | FAIL (critical) |" in text
    assert "| 8 | Gradient Flow Check | not run |" in text
    assert "| ℓ2 (tensor) | 5 | 1 |" in text


def test_cli(golden, tmp_path, capsys):
    out_json, out_md = tmp_path / "v.json", tmp_path / "v.md"
    rc = CLI.validate_npz(["--npz", str(FIXTURE), "--metrics", "both", "--irreps", IRREPS,
                 "--embed-dim", "19", "--special-ids", str(golden["special"][0]),
                 "--json", str(out_json), "--md", str(out_md)])
    assert rc == 0
    assert "[9/9] Ablation Study" in capsys.readouterr().out
    rep = R.read_json(out_json)
    assert rep.head_labels == golden["labels"] and len(rep.layers) == 2
    assert rep.layers[0].heads[8].row_std == pytest.approx(
        float(golden["m"]["row_std_legacy"][0, 0, 8]), rel=1e-6)
    assert out_md.read_text(encoding="utf-8").startswith("# Attention validation report")
