"""Recency / compression analysis on hand-made attention."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diagnostics import recency as R

S, L, H, N = 3, 2, 2, 12


def _tile(mat: np.ndarray) -> np.ndarray:
    return np.broadcast_to(mat, (S, L, H) + mat.shape).copy()


def _uniform_causal(n: int = N, fill: float = 0.0) -> np.ndarray:
    m = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]
    return np.where(m > 0, m, fill)


def test_uniform_rows_give_ratio_one_and_entropy_ln_n() -> None:
    a = R.analyze_recency(_tile(_uniform_causal(fill=1e-8)))
    assert a.shape == (S, L, H) and a.n_context == N
    np.testing.assert_allclose(a.last.entropy, math.log(N), rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.last.entropy_norm, 1.0, atol=1e-12)
    np.testing.assert_allclose(a.last.recent_distant, 1.0, atol=1e-12)
    np.testing.assert_allclose(a.last.mean, 1.0 / N)
    np.testing.assert_allclose(a.last.std, 0.0, atol=1e-12)
    # every row: entropy ln(i+1), ratio defined from min_context keys on
    i = np.arange(N)
    np.testing.assert_allclose(a.rows.entropy[0, 0, 0], np.log(i + 1), atol=1e-12)
    ratio = a.rows.recent_distant[0, 0, 0]
    assert np.isnan(ratio[:3]).all() and np.allclose(ratio[3:], 1.0)
    assert a.rows.n_context[0, 0, 0].tolist() == list(range(1, N + 1))


def test_one_hot_on_last_key_is_recency() -> None:
    a = R.analyze_recency(_tile(np.eye(N)))
    assert np.isinf(a.last.recent_distant).all()
    np.testing.assert_allclose(a.last.entropy, 0.0, atol=1e-12)
    assert (a.last.argmax == N - 1).all() and (a.last.argmax_dist == 0).all()
    np.testing.assert_allclose(a.last.std, math.sqrt(N - 1) / N)
    recs = R.recommend_compression(a)
    assert recs[0].strategy == "keep_last" and recs[0].k == 1
    assert "history[-1:]" in recs[0].snippet
    text = R.format_report(a, ["ℓ0", "ℓ1"])
    assert "ratio > 2.0" in text and "inf" in text and "keep_last K=1" in text


def test_one_hot_on_first_key_and_exact_ratio() -> None:
    first = np.zeros((N, N))
    first[:, 0] = 1.0
    a = R.analyze_recency(_tile(first))
    np.testing.assert_allclose(a.last.recent_distant, 0.0)
    assert (a.last.argmax_dist == N - 1).all()
    w = np.array([0.05, 0.15, 0.1, 0.1, 0.1, 0.1, 0.1, 0.3])  # q = 2 keys per part
    m = np.tril(np.ones((8, 8))) / np.arange(1, 9)[:, None]
    m[-1] = w
    a = R.analyze_recency(m[None, None, None])
    assert float(a.last.recent_distant[0, 0, 0]) == pytest.approx((0.1 + 0.3) / (0.05 + 0.15))
    p = w / w.sum()
    assert float(a.last.entropy[0, 0, 0]) == pytest.approx(-(p * np.log(p)).sum())
    assert int(a.last.argmax[0, 0, 0]) == 7


def test_masked_fill_values_and_self_exclusion() -> None:
    clean = R.analyze_recency(_tile(_uniform_causal()))
    filled = R.analyze_recency(_tile(_uniform_causal(fill=1e-8)))
    np.testing.assert_allclose(clean.last.entropy, filled.last.entropy)
    np.testing.assert_allclose(clean.rows.std, filled.rows.std, equal_nan=True)
    # context without the query's own key: uniform over j < i (renormalised entropy)
    m = np.tril(np.ones((N, N)), -1) / np.maximum(np.arange(N), 1)[:, None]
    a = R.analyze_recency(_tile(m), include_self=False)
    assert a.n_context == N - 1
    np.testing.assert_allclose(a.last.entropy, math.log(N - 1), atol=1e-12)
    np.testing.assert_allclose(a.last.recent_distant, 1.0)


def test_sparse_landmark_gives_top_k() -> None:
    land = np.zeros((N, N))
    land[np.arange(N), np.minimum(np.arange(N), 3)] = 1.0
    a = R.analyze_recency(_tile(land))
    recs = R.recommend_compression(a)
    assert recs[0].strategy == "top_k" and recs[0].positions == (3,) and recs[0].k == 1
    lines = R.insights(a)
    assert any(line.startswith("INSIGHT: Sparse attention") for line in lines)


def test_uniform_gives_uniform_sampling_with_thresholds() -> None:
    a = R.analyze_recency(_tile(_uniform_causal()))
    recs = R.recommend_compression(a)
    assert [r.strategy for r in recs] == ["uniform_sampling"]
    assert recs[0].k == N // 2 and "linspace" in recs[0].snippet
    lines = R.insights(a, head_labels=["ℓ0", "ℓ1"])
    assert any("entropy > 2.00 nats" in line for line in lines)
    tight = R.Thresholds(entropy_nats=5.0)
    assert R.recommend_compression(a, tight)[0].strategy == "none"


def test_coverage_k_and_shapes() -> None:
    w = np.array([0.05, 0.05, 0.1, 0.8])
    assert R.coverage_k(w, 0.8, order="last") == 1
    assert R.coverage_k(w, 0.9, order="last") == 2
    assert R.coverage_k(w, 0.9, order="top") == 2
    assert R.coverage_k(np.zeros(3), 0.9, order="top") == 0
    with pytest.raises(ValueError):
        R.coverage_k(w, 0.9, order="middle")
    with pytest.raises(ValueError):
        R.analyze_recency(np.zeros((2, 3, 4)))
    rng = np.random.default_rng(0)
    x = rng.random((S, L, H, N, N))
    a = R.analyze_recency(x)
    assert a.rows.entropy.shape == (S, L, H, N) and a.profile.shape == (L, H, N)
    report = R.format_report(a)
    assert report.count("\n") > L * H
