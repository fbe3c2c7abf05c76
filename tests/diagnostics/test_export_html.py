"""Exports for bertviz / circuitsvis and the offline HTML explorer."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from diagnostics import export as E
from diagnostics.html import render_attention_html, write_attention_html

L, B, H, N = 2, 2, 3, 12
LABELS = ["ℓ0", "ℓ1", "ℓ0_pad"]
TOKENS = ["The", " cat", b"\xe2\x80", "</script>", "\n", "<b>"] + [f" w{i}" for i in range(6)]
CAPTION = {"source": "unit <test>", "text_preview": "The cat", "checkpoint": None,
           "self_attention_masked": True}


@pytest.fixture(scope="module")
def beta() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = np.where(np.tril(np.ones((N, N), bool)), rng.random((L, B, H, N, N)), 0.0)
    return x / x.sum(-1, keepdims=True)


def test_bertviz_and_circuitsvis_shapes(beta: np.ndarray, tmp_path) -> None:
    layers = E.to_bertviz(beta, batch=1)
    assert len(layers) == L and all(a.shape == (1, H, N, N) for a in layers)
    np.testing.assert_allclose(layers[1][0], beta[1, 1], rtol=1e-6)
    att, toks = E.to_circuitsvis(beta, 1, TOKENS)
    assert att.shape == (H, N, N) and toks[2] == "\\xe2\\x80" and toks[1] == " cat"
    p = E.save_bertviz(beta, TOKENS, tmp_path / "bv", head_labels=LABELS)
    assert p.suffix == ".npz"
    back, btoks = E.load_bertviz(p)
    assert len(back) == L and back[0].shape == (1, H, N, N) and btoks == toks
    p = E.save_circuitsvis(beta, 0, TOKENS, tmp_path / "cv.json", head_labels=LABELS)
    doc = json.loads(p.read_text(encoding="utf-8"))
    assert np.asarray(doc["attention"]).shape == (H, N, N)
    assert doc["tokens"] == toks and doc["head_labels"] == LABELS and doc["layer"] == 0
    with pytest.raises(ValueError):
        E.to_circuitsvis(beta, 0, TOKENS[:3])


def _page_data(page: str) -> dict:
    blob = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.DOTALL)
    return json.loads(blob.group(1))


def test_html_is_self_contained(beta: np.ndarray, tmp_path) -> None:
    p = write_attention_html(beta, TOKENS, LABELS, CAPTION, tmp_path / "a.html", kl=beta * 2,
                             batch=1)
    page = p.read_text(encoding="utf-8")
    assert "http" not in page.lower()
    assert not re.search(r"\b(src|href)\s*=", page, re.IGNORECASE)
    assert not re.search(r"<(link|img|iframe)\b", page, re.IGNORECASE)
    assert page.count("</script>") == 2  # the token "</script>" is escaped
    assert "unit &lt;test&gt;" in page and "Self-attention masked: yes" in page
    d = _page_data(page)
    assert (d["L"], d["H"], d["N"]) == (L, H, N) and d["labels"] == LABELS
    assert d["tokens"][3] == "</script>" and d["tokens"][2] == "\\xe2\\x80"
    arr = np.frombuffer(base64.b64decode(d["beta"]), "<f4").reshape(L, H, N, N)
    np.testing.assert_allclose(arr, beta[:, 1], rtol=1e-6)
    mask = np.frombuffer(base64.b64decode(d["mask"]), "u1").reshape(N, N)
    assert mask[0, 0] == 1 and mask[1, 1] == 0 and mask[1, 0] == 1 and mask[0, 1] == 0
    assert len(d["rowStd"]) == L and len(d["rowStd"][0]) == H and d["kl"] is not None


def test_html_without_kl_and_layer_subset(beta: np.ndarray) -> None:
    page = render_attention_html(beta, TOKENS, LABELS, CAPTION, layers=[1])
    d = _page_data(page)
    assert d["L"] == 1 and d["layers"] == [1] and d["kl"] is None
    with pytest.raises(ValueError):
        render_attention_html(beta, TOKENS, LABELS[:1], CAPTION)


_STUB = r"""
const fs = require("fs");
const page = fs.readFileSync(process.argv[2], "utf8");
const data = page.match(/<script type="application\/json" id="data">([\s\S]*?)<\/script>/)[1];
const code = page.match(/<script>\n([\s\S]*?)<\/script>/)[1];
const els = {};
function ctx2d() {
  const calls = { fillRect: 0, fillText: 0, putImageData: 0 };
  return { calls, fillRect() { calls.fillRect++; }, strokeRect() {},
    fillText() { calls.fillText++; }, measureText(t) { return { width: 7 * t.length }; },
    save() {}, restore() {}, translate() {}, rotate() {},
    createImageData(w, h) { return { data: new Uint8ClampedArray(4 * w * h) }; },
    putImageData() { calls.putImageData++; } };
}
function el(tag, id) {
  const e = { tagName: tag.toUpperCase(), style: {}, listeners: {}, textContent: "", value: "",
    classList: { add() {}, remove() {} },
    appendChild(c) { return c; }, addEventListener(k, f) { this.listeners[k] = f; },
    getBoundingClientRect() { return { left: 0, top: 0 }; } };
  if (tag === "canvas") { const c = ctx2d(); e.getContext = () => c; e.calls = c.calls; }
  return new Proxy(e, { set(o, k, v) { o[k] = v; if (k === "id") els[v] = o; return true; } });
}
for (const id of ["layer", "head", "scale", "view", "status", "layer-name", "tip", "overview"])
  els[id] = el("div");
els.main = el("canvas");
els.data = { textContent: data };
global.document = { getElementById: (id) => { if (!els[id]) throw new Error(id); return els[id]; },
  createElement: (t) => el(t), querySelector: () => null, addEventListener() {} };
global.window = { scrollTo() {} };
global.atob = (s) => Buffer.from(s, "base64").toString("binary");
eval(code);
els.main.listeners.mousemove({ clientX: 200, clientY: 40 });
els.view.listeners.change({ target: { value: "kl" } });
els.layer.listeners.input({ target: { value: "1" } });
const thumbs = Object.keys(els).filter((k) => /^t\d+_\d+$/.test(k)).length;
console.log(JSON.stringify({ status: els.status.textContent, tip: els.tip.textContent,
  thumbs, cells: els.main.calls.fillRect }));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_html_script_runs_under_node(beta: np.ndarray, tmp_path) -> None:
    p = write_attention_html(beta, TOKENS, LABELS, CAPTION, tmp_path / "a.html", kl=beta)
    stub = tmp_path / "stub.js"
    stub.write_text(_STUB, encoding="utf-8")
    res = subprocess.run(["node", str(stub), str(p)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["thumbs"] == L * H
    assert out["status"].startswith("h0 · ℓ0 — row_std")
    assert "query" in out["tip"] and "β =" in out["tip"]
    assert out["cells"] >= 3 * N * N
