"""gaugeformer.stats: row_std (valid and legacy), entropy and the status labels, hand-computed, in
numpy and jnp alike."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from gaugeformer import stats
from gaugeformer.stats import KeyPattern


def test_valid_row_std_reference_values() -> None:
    n = 10
    mask = KeyPattern().grid(n)
    uniform = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]
    assert np.nanmax(stats.row_std_rows(uniform, mask)) < 1e-12
    assert np.isnan(stats.row_std_rows(uniform, mask)[0])  # one valid key
    prev = np.eye(n, k=-1)
    prev[0, 0] = 1.0
    per_row = stats.row_std_rows(prev, mask)
    cnt = np.arange(1, n + 1)
    np.testing.assert_allclose(per_row[1:], np.sqrt(cnt[1:] - 1) / cnt[1:])
    assert float(stats.row_std_valid(prev, mask)) == pytest.approx(np.mean(per_row[1:]))
    # masked future keys (1e-8) and a masked diagonal do not enter the statistic
    filled = np.where(mask, uniform, 1e-8)
    assert np.nanmax(stats.row_std_rows(filled, mask)) < 1e-12
    ms = KeyPattern(mask_self=True).grid(n)
    assert ms[0, 0] and not ms[1, 1] and ms[1, 0] and not ms[0, 1]
    # jnp follows the same formulas (float32)
    np.testing.assert_allclose(np.asarray(stats.row_std_valid(jnp.asarray(prev), mask)),
                               np.mean(per_row[1:]), rtol=1e-6)


def test_legacy_row_std_counts_masked_keys() -> None:
    n = 6
    one_hot = np.eye(n, k=-1)
    one_hot[0, 0] = 1.0
    # row i: one 1 among the N-1 off-diagonal keys (row 0: its only mass is the excluded diagonal)
    std_one = math.sqrt(1 / (n - 1) - 1 / (n - 1) ** 2)
    expected = (0.0 + (n - 1) * std_one) / n
    assert float(stats.row_std_legacy(one_hot)) == pytest.approx(expected)
    assert float(stats.row_std_legacy(jnp.asarray(one_hot))) == pytest.approx(expected, rel=1e-6)
    # the bound that makes SHARP impossible at N >= 100
    assert math.sqrt(98) / 99 < stats.SHARP_THRESHOLD < math.sqrt(97) / 98


def test_entropy_over_valid_keys() -> None:
    n = 5
    mask = KeyPattern().grid(n)
    uniform = np.where(mask, 1.0, 0.0) / mask.sum(-1, keepdims=True)
    assert float(stats.row_entropy(uniform, mask)) == pytest.approx(
        np.mean(np.log(np.arange(1, n + 1))))


def test_labels_defined_once() -> None:
    assert [stats.status(x) for x in (0.2, 0.1, 0.06, 0.05, 0.0, float("nan"))] == [
        "SHARP", "MEDIUM", "MEDIUM", "UNIFORM", "UNIFORM", "n/a"]
    assert stats.marked(0.5) == "\u2713SHARP" and stats.marked(0.0) == "\u274cUNIFORM"
    assert stats.table_status("MEDIUM") == "\u26a0\ufe0f MEDIUM"
    assert stats.table_status("SHARP") == "\u2713 SHARP"


def test_key_pattern_matches_the_model_mask() -> None:
    from gaugeformer.ops.masks import valid_keys
    from gaugeformer.testing import tiny_config

    for pattern in ("full", "local", "strided"):
        cfg = tiny_config(attention_pattern=pattern, attention_window=4, mask_self_attention=True)
        np.testing.assert_array_equal(stats.model_valid_keys(cfg, 12),
                                      valid_keys(12, pattern, 4, True))
    assert KeyPattern("local", 8, True).describe() == "local causal (window 8), self masked"
