"""Tests of diagnostics.metrics against hand numbers (ref-diagnostics §2.3) and plain numpy.

Every expected value here is computed independently of the implementation: by formula, or by a
direct float64 numpy loop over the definitions in ref-diagnostics §2-§3. Synthetic tests share
one shape per sequence length ([L=1, B=4, H=1, N, N]: one pattern per batch element) so that
``all_metrics`` compiles once per N.
"""

import math
from pathlib import Path

import jax
import numpy as np
import pytest

from diagnostics import metrics as M
from gaugeformer import stats

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "A_v256" / "golden.npz"
EPS = 1e-8  # the reference's clamp for masked entries


# ------------------------------------------------------------------------------------------------
# Synthetic attention patterns
# ------------------------------------------------------------------------------------------------


def causal(n):
    return np.tri(n, dtype=bool)


def mask_self(n):
    """Causal mask with the diagonal removed except in row 0 (mask_self_attention)."""
    m = causal(n)
    m[np.arange(1, n), np.arange(1, n)] = False
    return m


def from_weights(w, mask):
    """Rows normalised over the mask, masked entries at the reference's 1e-8 floor."""
    w = np.where(mask, w, 0.0)
    return np.where(mask, w / w.sum(1, keepdims=True), EPS)


def uniform_causal(n, self_masked=False):
    m = mask_self(n) if self_masked else causal(n)
    return from_weights(np.ones((n, n)), m)


def prev_onehot(n):
    w = np.zeros((n, n))
    w[0, 0] = 1.0
    w[np.arange(1, n), np.arange(n - 1)] = 1.0
    return from_weights(w, causal(n))


def self_onehot(n):
    return from_weights(np.eye(n), causal(n))


def stack_patterns(*pats):
    """[L=1, B=len(pats), H=1, N, N] float32."""
    return np.stack(pats)[None, :, None].astype(np.float32)


def run(beta, mask=None, **kw):
    return jax.device_get(M.all_metrics(beta, mask=mask, query_var_batches=beta.shape[1], **kw))


def table_patterns(n):
    """[1, 4, 1, N, N]: uniform causal, uniform causal mask_self, previous-token, self one-hot."""
    pats = uniform_causal(n), uniform_causal(n, True), prev_onehot(n), self_onehot(n)
    return stack_patterns(*pats)


@pytest.fixture(scope="module", params=[64, 94, 128])
def table(request):
    n = request.param
    beta = table_patterns(n)
    return n, beta, run(beta)


# ------------------------------------------------------------------------------------------------
# Independent numpy definitions (float64, loops over the spec's wording)
# ------------------------------------------------------------------------------------------------


def np_row_std_legacy(b):
    a = b.astype(np.float64).copy()
    np.fill_diagonal(a, np.nan)
    return np.nanstd(a, axis=1).mean()


def np_row_std_valid(b, mask, include_diag=True):
    vals = []
    for i in range(b.shape[0]):
        sel = mask[i].copy()
        if not include_diag:
            sel[i] = False
        if sel.sum() >= 2:
            vals.append(np.std(b[i, sel].astype(np.float64)))
    return np.mean(vals) if vals else 0.0


def np_uniform_dev(b):
    dev = np.sqrt(((b - 1.0 / b.shape[1]) ** 2).mean(1))
    return dev.mean(), dev.max()


def np_uniform_dev_valid(b, mask):
    devs = []
    for i in range(b.shape[0]):
        n = mask[i].sum()
        if n >= 2:
            devs.append(np.sqrt(((b[i, mask[i]] - 1.0 / n) ** 2).mean()))
    return np.mean(devs), np.max(devs)


def np_entropy_legacy(b):
    return (-(b * np.log(b + 1e-10)).sum(1) / np.log(b.shape[1])).mean()


def np_entropy_valid(b, mask):
    vals = []
    for i in range(b.shape[0]):
        n = mask[i].sum()
        if n >= 2:
            p = b[i, mask[i]]
            vals.append(-(p * np.log(p + 1e-10)).sum() / np.log(n))
    return np.mean(vals)


def np_positional(heads, mask=None):
    """Pooled distance buckets over heads [H, N, N] -> (near, far, ratio, profile).

    Legacy (mask None): bucket d holds beta[h, i, i-d] for every j < i. Corrected: only valid
    pairs, each weighted by the row's number of valid keys n_i.
    """
    n = heads.shape[-1]
    avg = {}
    for d in range(1, n):
        vals = []
        for i in range(d, n):
            if mask is None:
                vals.extend(heads[:, i, i - d])
            elif mask[i, i - d]:
                vals.extend(mask[i].sum() * heads[:, i, i - d])
        if vals:
            avg[d] = np.mean(vals)
    near = np.mean([avg[d] for d in range(1, 6) if d in avg])
    far = np.mean([avg[d] for d in range(n - 5, n) if d in avg])
    return near, far, near / (far + 1e-10), avg


def np_query_var(b):
    n = b.shape[0]
    b = b.astype(np.float64)
    d = np.linalg.norm(b[:, None, :] - b[None, :, :], axis=-1)
    return d[np.triu_indices(n, 1)].mean()


def np_adjacent_distant(b):
    nq = min(b.shape[0], 20)
    adj = np.mean([np.linalg.norm(b[i] - b[i - 1]) for i in range(1, nq)])
    dist = np.mean([np.linalg.norm(b[i] - b[i - 10]) for i in range(10, nq)])
    return adj, dist


def np_uniform_rows(mask):
    return np.where(mask, 1.0 / mask.sum(1, keepdims=True), 0.0)


# ------------------------------------------------------------------------------------------------
# ref-diagnostics §2.3: the reference values for sanity tests
# ------------------------------------------------------------------------------------------------

# N -> (uniform causal, uniform causal mask_self) x (row_std, dev, H/Hmax, pos ratio, query var)
SPEC_TABLE = {
    64: ((0.0187, 0.0217, 0.771, 3.09, 0.222), (0.0217, 0.0236, 0.755, 3.49, 0.247)),
    94: ((0.0134, 0.0151, 0.787, 3.45, 0.189), (0.0151, 0.0162, 0.777, 3.86, 0.206)),
    128: ((0.0102, 0.0113, 0.799, 3.75, 0.165), (0.0113, 0.0120, 0.791, 4.17, 0.178)),
}
SPEC_ONEHOT = {64: 0.1230, 94: 0.1020, 128: 0.0877}


def test_spec_table_legacy(table):
    n, _, m = table
    for b_idx, row in enumerate(SPEC_TABLE[n]):
        rs, dev, ent, ratio, qv = row
        # the spec prints 4/4/3/2/3 decimals; allow the last printed digit (+ rounding of 0.1885)
        assert m["row_std_legacy"][0, b_idx, 0] == pytest.approx(rs, abs=6e-5)
        assert m["uniform_dev_mean_legacy"][0, b_idx, 0] == pytest.approx(dev, abs=6e-5)
        assert m["entropy_norm_legacy"][0, b_idx, 0] == pytest.approx(ent, abs=6e-4)
        assert m["pos_ratio_legacy"][0, b_idx] == pytest.approx(ratio, abs=6e-3)
        assert m["query_var_legacy"][0, b_idx, 0] == pytest.approx(qv, abs=1.1e-3)


def test_legacy_matches_numpy(table):
    _, beta, m = table
    for b_idx in range(beta.shape[1]):
        b = beta[0, b_idx, 0].astype(np.float64)
        assert m["row_std_legacy"][0, b_idx, 0] == pytest.approx(np_row_std_legacy(b), abs=2e-6)
        mean, mx = np_uniform_dev(b)
        assert m["uniform_dev_mean_legacy"][0, b_idx, 0] == pytest.approx(mean, abs=2e-6)
        assert m["uniform_dev_max_legacy"][0, b_idx, 0] == pytest.approx(mx, abs=2e-6)
        ent = np_entropy_legacy(b)
        assert m["entropy_norm_legacy"][0, b_idx, 0] == pytest.approx(ent, abs=1e-5)
        near, far, _, _ = np_positional(b[None])
        assert m["pos_near_legacy"][0, b_idx] == pytest.approx(near, rel=1e-5)
        assert m["pos_far_legacy"][0, b_idx] == pytest.approx(far, rel=1e-4)
        assert m["query_var_legacy"][0, b_idx, 0] == pytest.approx(np_query_var(b), abs=1e-5)


def test_onehot_rows_and_the_legacy_bound(table):
    n, _, m = table
    bound = math.sqrt(n - 2) / (n - 1)
    prev, selfo = m["row_std_legacy"][0, 2, 0], m["row_std_legacy"][0, 3, 0]
    assert prev == pytest.approx(SPEC_ONEHOT[n], abs=6e-5)
    assert prev < bound
    assert selfo == pytest.approx(0.0, abs=1e-5)  # peaked on the excluded diagonal -> "uniform"
    # valid mode: a one-hot row over n keys has std sqrt(n-1)/n; rows with >= 2 keys
    keys = np.arange(2, n + 1)
    expect = np.mean(np.sqrt(keys - 1) / keys)
    assert m["row_std_valid"][0, 2, 0] == pytest.approx(expect, rel=1e-5)
    assert m["row_std_valid"][0, 3, 0] == pytest.approx(expect, rel=1e-5)  # self is a valid key
    assert stats.status(m["row_std_valid"][0, 3, 0]) == "SHARP"


def test_sharp_impossible_in_legacy_mode_for_long_sequences(table):
    # max std of N-1 non-negative entries summing to <= 1 is the one-hot's sqrt(N-2)/(N-1)
    bounds = [math.sqrt(n - 2) / (n - 1) for n in range(100, 4097)]
    assert max(bounds) < stats.SHARP_THRESHOLD
    assert math.sqrt(99 - 2) / (99 - 1) > stats.SHARP_THRESHOLD  # ... and it is the N >= 100 edge
    n, _, m = table
    label = stats.status(m["row_std_legacy"][0, 2, 0])
    assert label == ("SHARP" if n < 100 else "MEDIUM")


def test_labels():
    assert [stats.status(x) for x in (0.2, 0.1, 0.06, 0.05, 0.0)] == [
        "SHARP", "MEDIUM", "MEDIUM", "UNIFORM", "UNIFORM"
    ]
    assert stats.marked(0.07) == "⚠MEDIUM" and stats.table_status("MEDIUM") == "⚠️ MEDIUM"


def test_uniform_causal_is_uniform_in_valid_mode(table):
    n, _, m = table
    assert m["row_std_valid"][0, 0, 0] == pytest.approx(0.0, abs=1e-6)
    assert m["uniform_dev_mean_valid"][0, 0, 0] == pytest.approx(0.0, abs=1e-6)
    assert m["entropy_norm_valid"][0, 0, 0] == pytest.approx(1.0, abs=1e-5)
    assert m["pos_ratio_valid"][0, 0] == pytest.approx(1.0, abs=1e-5)
    assert m["query_var_valid"][0, 0, 0] == pytest.approx(0.0, abs=1e-5)
    assert m["row_uniformity_std"][0, 0] == pytest.approx(np.zeros(n), abs=1e-6)


def test_valid_mode_matches_numpy(table):
    n, beta, m = table
    mk = causal(n)
    for b_idx in range(beta.shape[1]):
        b = beta[0, b_idx, 0].astype(np.float64)
        got = m["row_std_valid"][0, b_idx, 0]
        assert got == pytest.approx(np_row_std_valid(b, mk), abs=2e-6)
        mean, mx = np_uniform_dev_valid(b, mk)
        assert m["uniform_dev_mean_valid"][0, b_idx, 0] == pytest.approx(mean, abs=2e-6)
        assert m["uniform_dev_max_valid"][0, b_idx, 0] == pytest.approx(mx, abs=2e-6)
        ent = np_entropy_valid(b, mk)
        assert m["entropy_norm_valid"][0, b_idx, 0] == pytest.approx(ent, abs=1e-5)
        _, _, ratio, _ = np_positional(b[None], mk)
        assert m["pos_ratio_valid"][0, b_idx] == pytest.approx(ratio, rel=1e-4)
        qv = np_query_var(b - np_uniform_rows(mk))
        assert m["query_var_valid"][0, b_idx, 0] == pytest.approx(qv, abs=1e-5)


def test_mask_self_pattern_with_its_own_mask(table):
    """Same shape, another (traced) mask: no recompile; uniform over its valid keys again."""
    n, beta, _ = table
    m = run(beta, mask=mask_self(n))
    assert m["row_std_valid"][0, 1, 0] == pytest.approx(0.0, abs=1e-6)
    assert m["entropy_norm_valid"][0, 1, 0] == pytest.approx(1.0, abs=1e-5)
    assert m["rowsum_maxerr_valid"][0, 1, 0] == pytest.approx(0.0, abs=2e-6)
    assert m["pos_ratio_valid"][0, 1] == pytest.approx(1.0, abs=1e-5)
    # legacy numbers do not depend on the mask
    assert m["row_std_legacy"][0, 1, 0] == pytest.approx(SPEC_TABLE[n][1][0], abs=6e-5)


def test_row_sums_with_the_eps_floor(table):
    n, beta, m = table
    b = beta[0, 0, 0]
    masked = n - 1 - np.arange(n)  # keys j > i of row i
    s_all, s_valid = jax.device_get(M.row_sums(b))
    # float32 sums of ~1/n terms carry ~1e-6 rounding; the masked part is summed exactly enough
    np.testing.assert_allclose(s_all, 1.0 + masked * EPS, atol=2e-6, rtol=0)
    np.testing.assert_allclose(s_valid, 1.0, atol=2e-6, rtol=0)
    np.testing.assert_allclose(s_all - s_valid, masked * EPS, atol=2.5e-7, rtol=0)
    assert m["rowsum_maxerr_all"][0, 0, 0] == pytest.approx((n - 1) * EPS, abs=1.5e-6)
    assert m["rowsum_maxerr_valid"][0, 0, 0] < 2e-6
    # both pass the reference's allclose(atol=1e-4) check; the floor is what causality sees
    assert m["future_max"][0, 0, 0] == pytest.approx(EPS, rel=1e-6)
    assert m["future_mass_max"][0, 0, 0] == pytest.approx((n - 1) * EPS, rel=1e-4)
    assert m["future_mass_mean"][0, 0, 0] == pytest.approx(masked.mean() * EPS, rel=1e-4)


def test_report_row_std_is_the_stats_row_std():
    """all_metrics computes row_std in one fused pass from gaugeformer.stats' pieces: its numbers
    are stats.row_std_legacy / row_std_valid (two passes, float64 here) to float32 rounding."""
    import jax.numpy as jnp

    n = 64
    beta = table_patterns(n)
    m = run(beta)
    mask = causal(n)
    b64 = np.asarray(beta, np.float64)
    np.testing.assert_allclose(stats.row_std_legacy(b64), m["row_std_legacy"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(stats.row_std_valid(b64, mask), m["row_std_valid"], atol=1e-6,
                               rtol=0)
    keys = stats.row_std_keys(mask, include_diag=False)
    np.testing.assert_array_equal(keys.sum(-1), np.arange(n))  # row i: keys 0..i-1
    cnt = np.arange(n)
    expect = np.where(cnt >= 2, np.sqrt(np.maximum(cnt - 1, 0)) / np.maximum(cnt, 1), 0.0)
    np.testing.assert_allclose(stats.row_std_rows(b64[0, 2, 0], keys, empty=0.0), expect,
                               atol=1e-12)
    # the one-pass summands give the same per-row std as two passes
    b = jnp.asarray(beta[0, 2, 0])
    keys_f = jnp.asarray(keys, b.dtype)
    diag = jnp.asarray(np.diagonal(keys), b.dtype)
    x, xx = stats.row_std_terms(b, keys_f, keys_f.sum(-1), diag)
    one_pass = stats.std_from_sums(x.sum(-1), xx.sum(-1), keys_f.sum(-1))
    np.testing.assert_allclose(np.asarray(one_pass), expect, atol=2e-6)


def test_hand_made_positional_bias():
    """Keys at distance 1..5 get weight 4, others 1: a local bias the legacy ratio inflates."""
    n = 64
    d = np.arange(n)[:, None] - np.arange(n)[None, :]
    local = from_weights(np.where((d >= 1) & (d <= 5), 4.0, 1.0), causal(n))
    flat = uniform_causal(n)
    # exact corrected profile of `local`: n_i * w / sum(w) on row i
    beta = stack_patterns(local, flat, local, flat)
    m = run(beta)
    for mask in (None, causal(n)):
        near, far, ratio, avg = np_positional(local[None], mask)
        tag = "legacy" if mask is None else "valid"
        assert m[f"pos_near_{tag}"][0, 0] == pytest.approx(near, rel=1e-5)
        assert m[f"pos_far_{tag}"][0, 0] == pytest.approx(far, rel=1e-4)
        assert m[f"pos_ratio_{tag}"][0, 0] == pytest.approx(ratio, rel=1e-4)
        prof = m[f"pos_profile_{tag}"][0, 0]
        np.testing.assert_allclose(prof[1:], [avg[k] for k in range(1, n)], rtol=1e-4)
    # distance N-1 is only (N-1, 0), a weight-1 key of a row with n keys and 5 local ones:
    # corrected value n * 1 / (n + 3 * 5); distance 1 averages n_i * 4 / (n_i + 15) over rows
    assert m["pos_profile_valid"][0, 0, -1] == pytest.approx(n / (n + 15), rel=1e-5)
    rows = np.arange(1, n)
    n_i = rows + 1
    w_sum = n_i + 3 * np.minimum(rows, 5)
    assert m["pos_profile_valid"][0, 0, 1] == pytest.approx(np.mean(4 * n_i / w_sum), rel=1e-5)
    assert m["pos_ratio_valid"][0, 0] > 3.0
    # the uniform causal pattern: no corrected bias, legacy still reports 3.09
    assert m["pos_ratio_valid"][0, 1] == pytest.approx(1.0, abs=1e-5)
    assert m["pos_ratio_legacy"][0, 1] == pytest.approx(3.09, abs=6e-3)
    np.testing.assert_array_equal(m["pos_count_valid"], n - np.arange(n))


# ------------------------------------------------------------------------------------------------
# The reference fixture: every layer, every head, against numpy
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden():
    g = np.load(FIXTURE)
    beta = np.stack([g["attn_beta_L0"], g["attn_beta_L1"]])
    kl = np.stack([g["attn_kl_L0"], g["attn_kl_L1"]])
    sigma_diag = np.diagonal(g["sigma_final"], axis1=-2, axis2=-1)
    tokens = g["tokens"]
    special = (int(tokens[0, 3]),)  # any id present in the sequence exercises the special path
    m = jax.device_get(
        M.all_metrics(
            beta, kl, None, tokens, mu=g["mu_final"], phi=g["phi_final"],
            sigma_diag=sigma_diag, special_ids=special,
        )
    )
    return {"beta": beta, "kl": kl, "tokens": tokens, "special": special, "g": g,
            "sd": sigma_diag, "m": m}


def test_golden_shapes(golden):
    m = golden["m"]
    L, B, H, N, _ = golden["beta"].shape
    letters = {"L": L, "B": B, "H": H, "N": N, "D": N, "Bq": 1, "S": 5}
    for key, (shape, _) in M.METRIC_KEYS.items():
        assert key in m, key
        assert m[key].shape == tuple(letters[s] for s in shape.split()), key
        assert np.all(np.isfinite(m[key])), key


def test_golden_per_head_against_numpy(golden):
    beta, kl, m = golden["beta"].astype(np.float64), golden["kl"].astype(np.float64), golden["m"]
    L, B, H, N, _ = beta.shape
    mk = causal(N)
    future = np.triu(np.ones((N, N), bool), 1)
    for idx in np.ndindex(L, B, H):
        b, k = beta[idx], kl[idx]

        def close(key, v, tol=2e-6, idx=idx):
            np.testing.assert_allclose(m[key][idx], v, atol=tol, err_msg=key)

        close("row_std_legacy", np_row_std_legacy(b))
        close("row_std_valid", np_row_std_valid(b, mk))
        close("rowsum_maxerr_all", np.abs(b.sum(1) - 1).max(), 5e-7)
        close("rowsum_maxerr_valid", np.abs(np.where(mk, b, 0).sum(1) - 1).max(), 5e-7)
        close("future_max", b[future].max(), 1e-12)
        close("future_mass_max", np.where(future, b, 0).sum(1).max(), 1e-12)
        close("entropy_norm_legacy", np_entropy_legacy(b), 1e-5)
        close("entropy_norm_valid", np_entropy_valid(b, mk), 1e-5)
        close("uniform_dev_mean_legacy", np_uniform_dev(b)[0])
        close("uniform_dev_mean_valid", np_uniform_dev_valid(b, mk)[0])
        adj, dist = np_adjacent_distant(b)
        close("query_adjacent_legacy", adj, 1e-5)
        close("query_distant_legacy", dist, 1e-5)
        adj, dist = np_adjacent_distant(b - np_uniform_rows(mk))
        close("query_distant_valid", dist, 1e-5)
        close("kl_min", k.min(), 1e-7)
        close("kl_neg_frac", (k < 0).mean(), 1e-9)
        close("kl_diag_max", np.diagonal(k).max(), 1e-7)
        close("kl_diag_mean", np.diagonal(k).mean(), 1e-7)
        if idx[1] == 0:  # O(N^3) statistics run on batch element 0 only
            close("query_var_legacy", np_query_var(b), 1e-5)
            close("query_var_valid", np_query_var(b - np_uniform_rows(mk)), 1e-5)
            off = ~np.eye(N, dtype=bool)
            asym = np.abs(k - k.T)[off].mean()
            close("kl_asym", asym, 1e-6)
            close("kl_asym_rel", asym / np.abs(k)[off].mean(), 1e-4)


def test_golden_head_means_against_numpy(golden):
    beta, kl, m = golden["beta"].astype(np.float64), golden["kl"].astype(np.float64), golden["m"]
    tokens, special = golden["tokens"], golden["special"]
    L, B, _, N, _ = beta.shape
    mk = causal(N)
    n_i = mk.sum(1)
    past = np.tri(N, k=-1, dtype=bool)
    off = ~np.eye(N, dtype=bool)
    for l, b in np.ndindex(L, B):
        bm, km = beta[l, b].mean(0), kl[l, b].mean(0)

        def close(key, v, tol=2e-6, lb=(l, b)):
            np.testing.assert_allclose(m[key][lb], v, atol=tol, err_msg=key)

        # positional bias pooled over heads, legacy and corrected
        _, _, ratio, _ = np_positional(beta[l, b])
        close("pos_ratio_legacy", ratio, 1e-4 * ratio)
        _, _, ratio, _ = np_positional(beta[l, b], mk)
        close("pos_ratio_valid", ratio, 1e-4 * ratio)
        close("row_std_avg_legacy", np_row_std_legacy(bm))
        # §2.4 bars: std over j <= i of the head mean, 0 for the one-element row
        bars = [np.std(bm[i, : i + 1]) for i in range(N)]
        close("row_uniformity_std", bars)
        p = np.maximum(bm, 1e-10)
        close("entropy_nats", (-(p * np.log(p)).sum(1)).mean(), 1e-5)
        close("concentration", bm.max(1).mean(), 1e-6)
        # token repetition over pairs j < i
        same = (tokens[b][:, None] == tokens[b][None, :]) & past
        diff = ~same & past
        close("rep_pairs", same.sum(), 0)
        close("rep_same_legacy", bm[same].mean() if same.any() else 0.0, 1e-7)
        close("rep_diff_legacy", bm[diff].mean(), 1e-7)
        scaled = bm * n_i[:, None]
        close("rep_diff_valid", scaled[diff & mk].mean(), 1e-6)
        # special-token columns: column means over ALL rows (masked rows included)
        sp = np.isin(tokens[b], special)
        col = bm.mean(0)
        close("special_count", sp.sum(), 0)
        close("special_mean_legacy", col[sp].mean() if sp.any() else 0.0, 1e-7)
        close("regular_mean_legacy", col[~sp].mean(), 1e-7)
        # KL spread of the head mean, diagonal excluded, future pairs included (§6.3)
        vals = km[off]
        close("kl_offdiag_mean", vals.mean(), 1e-7)
        close("kl_offdiag_std", vals.std(ddof=1), 1e-6)
        close("kl_offdiag_min", vals.min(), 1e-7)
        close("kl_offdiag_max", vals.max(), 1e-6)
        vals = km[off & mk]
        close("kl_valid_std", vals.std(ddof=1), 1e-6)
        close("kl_sample", km[:5, :5], 1e-6)


def test_golden_diversity_against_numpy(golden):
    g, m = golden["g"], golden["m"]
    mu = g["mu_final"].astype(np.float64)
    phi = g["phi_final"].astype(np.float64)
    sd = golden["sd"].astype(np.float64)
    for b in range(mu.shape[0]):
        d = np.linalg.norm(mu[b][:, None] - mu[b][None, :], axis=-1)
        off = ~np.eye(d.shape[0], dtype=bool)
        for l in range(m["mu_div"].shape[0]):  # shared inputs are broadcast over layers
            np.testing.assert_allclose(m["mu_div"][l, b], d.mean(), rtol=1e-5)
            np.testing.assert_allclose(m["mu_dist_mean"][l, b], d[off].mean(), rtol=1e-5)
            np.testing.assert_allclose(m["mu_dist_std"][l, b], d[off].std(ddof=1), rtol=1e-4)
            np.testing.assert_allclose(m["phi_std"][l, b], phi[b].std(0, ddof=1).mean(), 1e-5)
            np.testing.assert_allclose(m["sigma_mean"][l, b], sd[b].mean(), rtol=1e-5)
            np.testing.assert_allclose(m["sigma_min"][l, b], sd[b].min(), rtol=1e-6)
            np.testing.assert_allclose(m["sigma_max"][l, b], sd[b].max(), rtol=1e-6)
