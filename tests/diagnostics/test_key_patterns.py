"""Local and strided models are drawn and measured with their own key pattern: the figures'
heatmaps and row_std, the HTML explorer, the top-k report and the recency analysis."""

import re

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from diagnostics import html as HT  # noqa: E402
from diagnostics import figures as P  # noqa: E402
from diagnostics import recency as R  # noqa: E402
from diagnostics.figures import base as FB  # noqa: E402
from diagnostics.figures import context as FC  # noqa: E402
from diagnostics.figures import heads as FH  # noqa: E402
from diagnostics.capture import capture_attention  # noqa: E402
from gaugeformer import stats  # noqa: E402
from gaugeformer.model.lm import GaugeTransformerLM  # noqa: E402
from gaugeformer.stats import KeyPattern  # noqa: E402
from gaugeformer.testing import tiny_config  # noqa: E402

N = 16


@pytest.fixture(scope="module", params=["local", "strided"])
def model_case(request):
    # strided: stride = N // window = 4, so keys within 8 positions and every 4th key
    cfg = tiny_config(vocab_size=64, max_seq_len=N, attention_pattern=request.param,
                      attention_window=4, kappa_beta=0.3, n_layers=1, ffn="mlp")
    model = GaugeTransformerLM(cfg, rngs=nnx.Rngs(1))
    ids = np.random.default_rng(0).integers(0, 64, N)
    return cfg, capture_attention(model, ids)


def test_model_attends_only_its_pattern(model_case):
    cfg, cap = model_case
    mask = KeyPattern.of(cfg).grid(N)
    assert not mask.all(where=np.tril(np.ones((N, N), bool)))  # the pattern is not full causal
    assert np.abs(np.asarray(cap.beta)[..., ~mask]).max() == 0.0


def test_figures_and_row_std_use_the_model_pattern(model_case, tmp_path, monkeypatch):
    cfg, cap = model_case
    keys = KeyPattern.of(cfg)
    mask = keys.grid(N)
    drawn = []
    real = FB._heatmap

    def spy(ax, mat, m, **kw):
        drawn.append(np.array(m))
        return real(ax, mat, m, **kw)

    for module in (FC, FH):  # every module that draws heatmaps
        monkeypatch.setattr(module, "_heatmap", spy)
    beta, kl = np.asarray(cap.beta), np.asarray(cap.kl)
    caption = {"source": f"{cfg.attention_pattern} test", "checkpoint": "random",
               "self_attention_masked": False}
    (rec,) = P.plot_attention_with_context(beta, kl, [b"t"] * N, cfg.head_labels, caption,
                                           tmp_path, keys=keys, dpi=40)
    assert drawn and all(np.array_equal(m, mask) for m in drawn)
    want = stats.row_std_valid(beta[0, 0], mask, empty=np.nan)
    np.testing.assert_allclose(rec.stats["row_std"], want)
    # the full-causal mask (the old `causal=True`) would count the pattern's zeros as keys
    full = stats.row_std_valid(beta[0, 0], KeyPattern().grid(N), empty=np.nan)
    assert np.abs(full - want).max() > 1e-3
    drawn.clear()
    P.plot_head_heatmap(beta, [b"t"] * N, cfg.head_labels, tmp_path / "h.png", keys=keys, dpi=40)
    P.plot_all_heads(beta, [b"t"] * N, cfg.head_labels, tmp_path / "a.png", keys=keys, dpi=40)
    assert len(drawn) > 1 and all(np.array_equal(m, mask) for m in drawn)


def test_html_topk_and_recency_use_the_model_pattern(model_case, monkeypatch):
    cfg, cap = model_case
    keys = KeyPattern.of(cfg)
    mask = keys.grid(N)
    beta = np.asarray(cap.beta)
    seen = {}
    real = HT._payload

    def spy(b, k, tokens, labels, layers, batch, m):
        seen["mask"] = np.array(m)
        return real(b, k, tokens, labels, layers, batch, m)

    monkeypatch.setattr(HT, "_payload", spy)
    HT.render_attention_html(beta, [b"t"] * N, cfg.head_labels, {}, keys=keys)
    np.testing.assert_array_equal(seen["mask"], mask)
    text = P.topk_report(beta, [f"k{j}" for j in range(N)], k=N, keys=keys)
    last = text[text.index("[ 15] \u00ab"):]  # the last query's block
    listed = {int(x) for x in re.findall(r"\d+\. \[\s*(\d+)\]", last)}
    assert listed == set(np.flatnonzero(mask[-1]))
    a = R.analyze_recency(beta.swapaxes(0, 1), keys=keys)
    assert a.n_context == int(mask[-1].sum()) < N
