"""Figures of diagnostics.figures render, have the expected panels and are not blank."""

from __future__ import annotations

import json
import math
import os

import matplotlib.image as mpimg
import numpy as np
import pytest

from diagnostics import figures as P
from gaugeformer import stats
from gaugeformer.stats import KeyPattern
from diagnostics import recency as R

L, B, H, N = 2, 1, 3, 12
LABELS = ["ℓ0", "ℓ1", "ℓ0_pad"]
DPI = 50


def _causal_softmax(logits: np.ndarray) -> np.ndarray:
    n = logits.shape[-1]
    x = np.where(np.tril(np.ones((n, n), bool)), logits, -np.inf)
    e = np.exp(x - x.max(-1, keepdims=True))
    return np.maximum(e / e.sum(-1, keepdims=True), 1e-8)  # clamp like the model


@pytest.fixture(scope="module")
def data() -> dict:
    rng = np.random.default_rng(0)
    kl = np.abs(rng.standard_normal((L, B, H, N, N))) * np.array([0.2, 2.0, 5.0])[:, None, None]
    kl[..., np.arange(N), np.arange(N)] = 0.0
    beta = _causal_softmax(-kl)
    tokens = ["The", " cat", b"\xe2\x80", "\ufffd", "\n", " $5", " and", " $6", "日本", "",
              " sat", " on"]
    caption = {"source": "unit-test sequence", "text_preview": "The cat sat on the mat",
               "checkpoint": None, "self_attention_masked": False}
    return {"beta": beta, "kl": kl, "tokens": tokens, "caption": caption}


def _assert_png(path: os.PathLike | str, min_std: float = 0.03) -> np.ndarray:
    img = mpimg.imread(os.fspath(path))
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert float(img[..., :3].std()) > min_std, f"{path} looks blank"
    return img


# ---------------------------------------------------------------------------------- helpers


def test_format_token_handles_partial_and_unprintable() -> None:
    assert P.format_token(b"\xe2\x80") == "\\xe2\\x80"
    assert P.format_token(b"\xe2\x82\xac") == "€"
    assert P.format_token("\ufffd") == "⟨?⟩"
    assert P.format_token("") == "⟨∅⟩"
    assert P.format_token("\n\n") == "↵↵"
    assert P.format_token("\x00a") == "\\x00a"
    assert P.format_token(" the") == "␣the"
    assert P.format_token(" the", mark_spaces=False) == " the"
    assert P.format_token("  ") == "␣␣"
    assert P.format_token("abcdefghijklmnop", max_len=6) == "abcde…"
    assert P.format_token(" $5", for_matplotlib=True) == "␣\\$5"
    assert P.format_token("日本", for_matplotlib=True) == "\\u65e5\\u672c"
    assert P.format_token("日本") == "日本"


def test_irrep_of() -> None:
    assert P.irrep_of("ℓ0_pad") == (0, True) and P.irrep_of("ℓ2") == (2, False)


# ---------------------------------------------------------------------------------- seed 002


def test_context_figure_panels_and_stats(data: dict, tmp_path) -> None:
    recs = P.plot_attention_with_context(
        data["beta"], data["kl"], data["tokens"], LABELS, data["caption"], tmp_path, dpi=DPI
    )
    assert [r.path.name for r in recs] == ["attention_context_L0.png", "attention_context_L1.png"]
    for rec in recs:
        assert rec.path.exists() and os.fspath(rec) == str(rec.path)
        p = rec.panels
        assert p["head"] == H and p["average"] == 1 and p["row_uniformity"] == 1
        assert p["kl"] == 1 and p["kl_spread"] == 1 and p["tokens"] == 1
        assert p["colorbar"] == 3
        _assert_png(rec)
    mask = KeyPattern().grid(N)
    np.testing.assert_allclose(recs[0].stats["row_std"],
                               stats.row_std_valid(data["beta"][0, 0], mask, empty=np.nan))
    assert recs[0].stats["kl_spread"] > 0.5 and recs[0].notes == ()


def test_context_figure_kl_uniform_warning_and_missing_kl(data: dict, tmp_path) -> None:
    flat = np.full_like(data["kl"], 0.3)
    beta = _causal_softmax(-flat)
    cap = dict(data["caption"], self_attention_masked=True)
    rec = P.plot_attention_with_context(beta, flat, data["tokens"], LABELS, cap, tmp_path,
                                        layers=[1], dpi=DPI)[0]
    assert rec.path.name.endswith("L1.png")
    assert any("KL too uniform" in n for n in rec.notes)
    assert rec.stats["kl_spread"] < 1e-9
    rec = P.plot_attention_with_context(beta, None, data["tokens"], LABELS, cap, tmp_path,
                                        layers=[0], prefix="nokl", head_stats=[0.2, 0.1, 0.0],
                                        dpi=DPI)[0]
    assert rec.notes == ("KL matrix not provided",) and rec.panels["kl"] == 1
    assert rec.stats["row_std"] == [0.2, 0.1, 0.0]


def test_inputs_are_validated(data: dict, tmp_path) -> None:
    with pytest.raises(ValueError, match="head labels"):
        P.plot_attention_with_context(data["beta"], None, data["tokens"], LABELS[:2],
                                      data["caption"], tmp_path)
    with pytest.raises(ValueError, match="tokens"):
        P.plot_all_heads(data["beta"], data["tokens"][:5], LABELS, tmp_path / "x.png")
    with pytest.raises(ValueError, match="source"):
        P.plot_attention_with_context(data["beta"], None, data["tokens"], LABELS, {},
                                      tmp_path)


# ---------------------------------------------------------------------------------- seed 004


def test_single_head_and_grid(data: dict, tmp_path) -> None:
    rec = P.plot_head_heatmap(data["beta"], data["tokens"], LABELS, tmp_path / "l1h2.png",
                              layer=1, head=2, caption=data["caption"], dpi=DPI)
    assert rec.panels == {"head": 1, "colorbar": 1}
    _assert_png(rec)
    rec = P.plot_all_heads(data["beta"], data["tokens"], LABELS, tmp_path / "all.png",
                           layer=0, dpi=DPI)
    assert rec.panels["head"] == H and rec.panels["colorbar"] == 1
    assert len(rec.stats["row_std"]) == H
    _assert_png(rec)


def test_attention_flow_values_and_figure(tmp_path) -> None:
    eye = np.broadcast_to(np.eye(N), (L, B, H, N, N)).copy()
    prev = np.broadcast_to(np.eye(N, k=-1) + np.diag([1.0] + [0] * (N - 1)), (B, H, N, N))
    beta = np.stack([eye[0], prev])  # layer 0: self only, layer 1: previous token only
    flow = P.attention_flow(beta)
    np.testing.assert_allclose(flow["self"], [[1, 1, 1], [0, 0, 0]])
    np.testing.assert_allclose(flow["previous"], [[0, 0, 0], [1, 1, 1]])
    np.testing.assert_allclose(flow["prev_token"][1], 1.0)
    rec = P.plot_attention_flow(beta, LABELS, tmp_path / "flow.png", dpi=DPI)
    assert rec.panels == {"flow": 1, "flow_heads": 1, "colorbar": 1}
    _assert_png(rec)


def test_topk_report_uses_given_beta(tmp_path) -> None:
    beta = np.zeros((1, 1, 2, 4, 4))
    beta[..., 0, 0] = 1.0
    beta[0, 0, 0, 3] = [0.7, 0.0, 0.2, 0.1]
    beta[0, 0, 1, 3] = [0.1, 0.0, 0.2, 0.7]
    for i in (1, 2):
        beta[..., i, : i + 1] = 1.0 / (i + 1)
    tokens = ["A", " b", b"\xe2", "\n"]
    text = P.topk_report(beta, tokens, k=2, head=0, head_labels=["ℓ0", "ℓ1"],
                         out=tmp_path / "topk.txt")
    assert (tmp_path / "topk.txt").read_text(encoding="utf-8") == text
    assert "head 0 (ℓ0)" in text
    block = text.split("[  3] «↵» attends most to:")[1]
    assert block.index("«A»") < block.index("«\\xe2»")  # 0.70 before 0.20
    assert "0.700" in block and "0.200" in block
    mean = P.topk_report(beta, tokens, k=1)
    assert "head mean over 2 heads (lossy)" in mean
    assert "[  3] «↵» (self)" not in mean and "0.400" in mean.split("[  3]")[1]


# ---------------------------------------------------------------------------------- seed 003


def test_recency_figures(data: dict, tmp_path) -> None:
    rng = np.random.default_rng(1)
    samples = _causal_softmax(rng.standard_normal((3, L, H, N, N)) * 2)
    recs = P.plot_sample_heatmaps(samples, LABELS, tmp_path, samples=[2], layers=[1],
                                  dpi=DPI)
    assert [r.path.name for r in recs] == ["recency_s2_L1_heads.png"]
    assert recs[0].panels["head"] == H
    _assert_png(recs[0])
    recs = P.plot_recency_lines(samples, LABELS, tmp_path, samples=[1], layers=[0], dpi=DPI)
    assert [r.path.name for r in recs] == ["recency_s1_L0_lines.png"]
    assert recs[0].panels == {"last_query": 1, "received": 1}
    _assert_png(recs[0])
    rec = P.plot_recency_summary(R.analyze_recency(samples), tmp_path / "summary.png",
                                 head_labels=LABELS, dpi=DPI)
    assert rec.panels == {"summary": 6}
    _assert_png(rec)


# ------------------------------------------------------------------ κ sweep, irreps, training


def test_kappa_sweep_and_irrep_summary(tmp_path) -> None:
    kappas = [0.1, 0.3, 1.0, 3.0]
    vals = np.array([[0.3, 0.2, 0.1], [0.2, 0.15, 0.05], [0.1, 0.07, 0.03], [0.05, 0.03, 0.01]])
    rec = P.plot_kappa_sweep(kappas, vals, LABELS, tmp_path / "kappa.png", dpi=DPI)
    assert rec.panels == {"kappa_sweep": 1}
    _assert_png(rec)
    rec = P.plot_irrep_summary(vals, ["ℓ0", "ℓ0", "ℓ1"], tmp_path / "irrep.png", dpi=DPI)
    assert rec.stats["ℓ0"] == pytest.approx(vals[:, :2].mean())
    assert rec.stats["ℓ1"] == pytest.approx(vals[:, 2].mean())
    _assert_png(rec)
    with pytest.raises(ValueError):
        P.plot_kappa_sweep(kappas, vals[:2], LABELS, tmp_path / "bad.png")


def test_training_curves_from_jsonl_and_list(tmp_path) -> None:
    log = tmp_path / "log.jsonl"
    rows = [{"step": s, "loss": 6.0 - math.log1p(s) / 3} for s in range(0, 500, 25)]
    rows += [{"step": s, "split": "eval", "loss": 6.3 - math.log1p(s) / 3, "ppl": 1.0}
             for s in (0, 250, 499)]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    rec = P.plot_training_curves(log, tmp_path / "curves.png", dpi=DPI)
    assert rec.panels == {"loss": 1, "ppl": 1}
    assert rec.stats["eval_ppl"] == 1.0  # given, not derived
    assert rec.stats["train_ppl*"] == pytest.approx(math.exp(rows[19]["loss"]))
    _assert_png(rec)
    rec = P.plot_training_curves([{"step": 1, "train_loss": 5.0, "val_loss": 5.5}],
                                 tmp_path / "one.png", dpi=DPI)
    assert set(rec.stats) == {"train_loss", "eval_loss", "train_ppl*", "eval_ppl*"}
    with pytest.raises(ValueError, match="invalid JSON"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text("{nope\n")
        P.plot_training_curves(bad, tmp_path / "bad.png")


def test_no_pyplot_figures_left_open(data: dict, tmp_path) -> None:
    import matplotlib.pyplot as plt

    P.plot_all_heads(data["beta"], None, LABELS, tmp_path / "x.png", dpi=DPI)
    assert plt.get_fignums() == []
