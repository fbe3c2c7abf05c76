"""Self-contained offline HTML explorer for attention (layers × heads, token labels).

One HTML file, no network: the data is embedded as base64 float32 in a
``<script type="application/json">`` block and drawn by a small inline script on ``<canvas>``
elements. There is no ``src=``/``href=`` anywhere in the page and no external URL.

The page shows the caption, a detail heatmap of the selected layer/head with token labels,
hover read-outs (query, key, β, KL), log/linear and β/KL switches, keyboard navigation (←/→
heads, ↑/↓ layers), and a scrollable overview of every layer × head as clickable thumbnails,
each titled with its irrep label and valid-keys row_std.
"""

from __future__ import annotations

import base64
import html as _html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps

from gaugeformer import stats as attn_stats
from gaugeformer.stats import KeyPattern

from diagnostics.figures.base import as_attention, format_tokens

__all__ = ["render_attention_html", "write_attention_html"]


def _b64(a: np.ndarray, dtype: str) -> str:
    """Little-endian base64 of ``a`` as ``dtype``."""
    return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode("ascii")


def _lut(name: str) -> list[str]:
    """256-entry ``#rrggbb`` lookup table of a matplotlib colormap."""
    rgba = colormaps[name](np.linspace(0, 1, 256))
    return ["#" + "".join(f"{round(255 * c):02x}" for c in px[:3]) for px in rgba]


def _caption_lines(caption: Mapping[str, Any], n: int, batch: int) -> list[str]:
    """Caption lines (plain text; escaped later)."""
    masked = caption.get("self_attention_masked")
    mask_txt = "unknown" if masked is None else ("yes" if masked else "no")
    lines = [
        f"Source: {caption.get('source', '?')}",
        f"Checkpoint: {caption.get('checkpoint') or 'random weights'}",
        f"Self-attention masked: {mask_txt} · N = {n} tokens · batch element {batch}",
    ]
    if caption.get("text_preview"):
        lines.append(f"Text: \u201c{str(caption['text_preview'])[:160]}\u2026\u201d")
    return lines


def _payload(
    beta: np.ndarray, kl: np.ndarray | None, tokens: Sequence[str | bytes],
    head_labels: Sequence[str], layers: Sequence[int], batch: int, mask: np.ndarray,
) -> dict[str, Any]:
    """JSON-serialisable data for the page."""
    b = beta[list(layers), batch]  # (L, H, N, N)
    n = b.shape[-1]
    stats = np.stack([attn_stats.row_std_valid(b[i], mask, empty=np.nan) for i in range(b.shape[0])])
    data: dict[str, Any] = {
        "L": int(b.shape[0]), "H": int(b.shape[1]), "N": int(n),
        "layers": [int(x) for x in layers],
        "tokens": format_tokens(tokens, max_len=18),
        "labels": [str(s) for s in head_labels],
        "rowStd": [[round(float(v), 4) for v in row] for row in stats],
        "status": [[attn_stats.status(float(v)) for v in row] for row in stats],
        "beta": _b64(b, "<f4"),
        "mask": _b64(mask.astype(np.uint8), "u1"),
        "logMin": float(min(-3.0, math.floor(math.log10(1.0 / max(n, 1))) - 1)),
        "viridis": _lut("viridis"), "magma": _lut("magma_r"),
        "kl": None, "klMax": None,
    }
    if kl is not None:
        k = kl[list(layers), batch]
        data["kl"] = _b64(k, "<f4")
        data["klMax"] = [float(max(np.percentile(k[i][:, mask], 99), 1e-6)) if mask.any()
                         else 1.0 for i in range(k.shape[0])]
    return data


def _json_for_script(obj: Any) -> str:
    """JSON that cannot terminate the surrounding ``<script>`` element."""
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).replace("</", "<\\/")


def render_attention_html(
    beta: np.ndarray,
    tokens: Sequence[str | bytes],
    head_labels: Sequence[str],
    caption: Mapping[str, Any],
    *,
    kl: np.ndarray | None = None,
    batch: int = 0,
    keys: KeyPattern | None = None,
    layers: Sequence[int] | None = None,
    title: str = "Gauge attention explorer",
) -> str:
    r"""Builds the self-contained HTML page.

    Args:
        beta: attention ``(L, B, H, N, N)``.
        tokens: N decoded tokens (raw bytes allowed; shown with ``\\xNN``).
        head_labels: H irrep labels.
        caption: ``source``, ``text_preview``, ``checkpoint``, ``self_attention_masked``.
        kl: optional KL matrix of the same shape (enables the KL view).
        batch: batch element.
        keys: the model's key pattern (``KeyPattern.of(cfg)``); invalid keys are drawn grey and
            excluded from row_std.  Default: full causal, self-masked if the caption says so.
        layers: subset of layers to embed (default all).
        title: page title.

    Returns:
        The HTML text.
    """
    b = as_attention(beta, "beta")
    k = None if kl is None else as_attention(kl, "kl")
    if k is not None and k.shape != b.shape:
        raise ValueError(f"kl shape {k.shape} != beta shape {b.shape}")
    n, h = b.shape[-1], b.shape[2]
    if len(tokens) != n:
        raise ValueError(f"got {len(tokens)} tokens for sequence length {n}")
    if len(head_labels) != h:
        raise ValueError(f"got {len(head_labels)} head labels for {h} heads")
    mask = (keys or KeyPattern(mask_self=bool(caption.get("self_attention_masked")))).grid(n)
    lays = list(range(b.shape[0])) if layers is None else list(layers)
    data = _payload(b, k, tokens, head_labels, lays, batch, mask)
    cap = "".join(f"<div>{_html.escape(s)}</div>" for s in _caption_lines(caption, n, batch))
    return (_TEMPLATE
            .replace("%TITLE%", _html.escape(title))
            .replace("%CAPTION%", cap)
            .replace("%DATA%", _json_for_script(data)))


def write_attention_html(
    beta: np.ndarray,
    tokens: Sequence[str | bytes],
    head_labels: Sequence[str],
    caption: Mapping[str, Any],
    out: str | os.PathLike[str],
    **kwargs: Any,
) -> Path:
    """Writes :func:`render_attention_html` to ``out``.

    Args:
        beta: attention ``(L, B, H, N, N)``.
        tokens: N decoded tokens.
        head_labels: H irrep labels.
        caption: caption dict.
        out: ``.html`` path.
        **kwargs: passed to :func:`render_attention_html`.

    Returns:
        The written path.
    """
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_attention_html(beta, tokens, head_labels, caption, **kwargs),
                 encoding="utf-8")
    return p


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 20px; margin: 0 0 6px 0; }
#caption { font-size: 13px; color: #444; margin-bottom: 10px; }
#controls { display: flex; gap: 14px; align-items: center; flex-wrap: wrap; margin: 8px 0;
  padding: 8px; background: #f3f6fa; border: 1px solid #d0dae6; border-radius: 6px;
  font-size: 13px; position: sticky; top: 0; z-index: 2; }
#status { font-weight: bold; }
#main-wrap { position: relative; display: inline-block; }
#tip { position: absolute; pointer-events: none; background: rgba(20,20,20,.88); color: #fff;
  font: 12px monospace; padding: 4px 7px; border-radius: 4px; display: none;
  white-space: pre; z-index: 3; }
#overview { margin-top: 14px; border-top: 1px solid #ccc; padding-top: 8px; }
.layer-row { display: flex; gap: 8px; align-items: flex-start; margin-bottom: 8px;
  overflow-x: auto; }
.layer-name { width: 56px; font-weight: bold; font-size: 13px; padding-top: 40px;
  flex: none; }
.thumb { flex: none; text-align: center; font-size: 11px; cursor: pointer; padding: 3px;
  border: 2px solid transparent; border-radius: 4px; }
.thumb.sel { border-color: #d62728; }
.thumb canvas { width: 104px; height: 104px; image-rendering: pixelated; display: block;
  border: 1px solid #bbb; }
.SHARP { color: #1a7f37; } .MEDIUM { color: #d97706; } .UNIFORM { color: #c62828; }
.note { font-size: 12px; color: #666; }
</style>
</head>
<body>
<h1>%TITLE%</h1>
<div id="caption">%CAPTION%</div>
<div id="controls">
  <label>layer <input id="layer" type="range" min="0" value="0" step="1"></label>
  <span id="layer-name"></span>
  <label>head <select id="head"></select></label>
  <label>scale <select id="scale"><option value="log">log10</option>
    <option value="lin">linear</option></select></label>
  <label>matrix <select id="view"><option value="beta">attention &beta;</option></select></label>
  <span id="status"></span>
  <span class="note">keys: &larr;/&rarr; head, &uarr;/&darr; layer; grey = masked key</span>
</div>
<div id="main-wrap"><canvas id="main"></canvas><div id="tip"></div></div>
<div id="overview"><div class="note">All layers &times; heads (click to select;
  head-averaged views are deliberately not offered: averaging hides per-head patterns)</div>
</div>
<script type="application/json" id="data">%DATA%</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
function decode(b64, Ctor) {
  const s = atob(b64), u = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) u[i] = s.charCodeAt(i);
  return new Ctor(u.buffer);
}
const BETA = decode(D.beta, Float32Array);
const KL = D.kl ? decode(D.kl, Float32Array) : null;
const MASK = decode(D.mask, Uint8Array);
const N = D.N, H = D.H, L = D.L, NN = N * N;
const S = { layer: 0, head: 0, scale: "log", view: "beta" };
const $ = (id) => document.getElementById(id);

function matrix(view, l, h) {
  const arr = view === "kl" ? KL : BETA, off = (l * H + h) * NN;
  return arr.subarray(off, off + NN);
}
function colourOf(v, view, scale, l) {
  let t;
  if (view === "kl") { t = v / D.klMax[l]; return D.magma[clampIdx(t)]; }
  if (scale === "log") { t = (Math.log10(Math.max(v, 1e-30)) - D.logMin) / -D.logMin; }
  else { t = v; }
  return D.viridis[clampIdx(t)];
}
function clampIdx(t) { return Math.max(0, Math.min(255, Math.round(t * 255))); }
function hexRGB(hx) {
  const n = parseInt(hx.slice(1), 16);
  return [n >> 16, (n >> 8) & 255, n & 255];
}

function geometry(ctx) {
  const cell = Math.max(3, Math.min(26, Math.floor(760 / N)));
  const fs = Math.min(12, cell - 1);
  let lab = 0;
  if (cell >= 7) {
    ctx.font = fs + "px monospace";
    for (let i = 0; i < N; i++) lab = Math.max(lab, ctx.measureText(D.tokens[i] + " " + i).width);
  } else { lab = 30; }
  return { cell: cell, fs: fs, left: lab + 10, top: 10, bottom: lab + 28, right: 110 };
}

function drawMain() {
  const cv = $("main"), ctx = cv.getContext("2d");
  const g = geometry(ctx), M = matrix(S.view, S.layer, S.head);
  cv.width = g.left + N * g.cell + g.right;
  cv.height = g.top + N * g.cell + g.bottom;
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, cv.width, cv.height);
  for (let i = 0; i < N; i++) for (let j = 0; j < N; j++) {
    ctx.fillStyle = MASK[i * N + j] ? colourOf(M[i * N + j], S.view, S.scale, S.layer) : "#e6e6e6";
    ctx.fillRect(g.left + j * g.cell, g.top + i * g.cell, g.cell, g.cell);
  }
  ctx.strokeStyle = "#333"; ctx.strokeRect(g.left, g.top, N * g.cell, N * g.cell);
  drawLabels(ctx, g);
  drawColourbar(ctx, g);
  const st = D.status[S.layer][S.head];
  $("status").textContent = "h" + S.head + " \u00b7 " + D.labels[S.head] + " \u2014 row_std " +
    D.rowStd[S.layer][S.head].toFixed(3) + " " + st;
  $("status").className = st;
  $("layer-name").textContent = "L" + D.layers[S.layer];
}

function drawLabels(ctx, g) {
  ctx.fillStyle = "#222";
  const step = g.cell >= 7 ? 1 : Math.ceil(10 / g.cell);
  ctx.font = (g.cell >= 7 ? g.fs : 10) + "px monospace";
  for (let i = 0; i < N; i += step) {
    const txt = g.cell >= 7 ? D.tokens[i] + " " + i : String(i);
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    ctx.fillText(txt, g.left - 4, g.top + (i + 0.5) * g.cell);
    ctx.save();
    ctx.translate(g.left + (i + 0.5) * g.cell, g.top + N * g.cell + 4);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "right"; ctx.fillText(txt, 0, 0);
    ctx.restore();
  }
  ctx.font = "12px sans-serif"; ctx.textAlign = "center"; ctx.textBaseline = "bottom";
  ctx.fillText("key j", g.left + N * g.cell / 2, g.top + N * g.cell + g.bottom - 2);
}

function drawColourbar(ctx, g) {
  const x = g.left + N * g.cell + 24, h = Math.min(N * g.cell, 320), y = g.top;
  const lut = S.view === "kl" ? D.magma : D.viridis;
  for (let k = 0; k < h; k++) {
    ctx.fillStyle = lut[clampIdx(1 - k / (h - 1))];
    ctx.fillRect(x, y + k, 16, 1);
  }
  ctx.strokeStyle = "#333"; ctx.strokeRect(x, y, 16, h);
  let hi, lo, name;
  if (S.view === "kl") { hi = D.klMax[S.layer].toFixed(2); lo = "0"; name = "KL (p99 clip)"; }
  else if (S.scale === "log") { hi = "0"; lo = String(D.logMin); name = "log10 \u03b2"; }
  else { hi = "1"; lo = "0"; name = "\u03b2"; }
  ctx.fillStyle = "#222"; ctx.font = "11px sans-serif"; ctx.textAlign = "left";
  ctx.textBaseline = "top"; ctx.fillText(hi, x + 20, y);
  ctx.textBaseline = "bottom"; ctx.fillText(lo, x + 20, y + h);
  ctx.textBaseline = "top"; ctx.fillText(name, x - 4, y + h + 6);
}

function onMove(ev) {
  const cv = $("main"), g = geometry(cv.getContext("2d")), r = cv.getBoundingClientRect();
  const j = Math.floor((ev.clientX - r.left - g.left) / g.cell);
  const i = Math.floor((ev.clientY - r.top - g.top) / g.cell);
  const tip = $("tip");
  if (i < 0 || j < 0 || i >= N || j >= N) { tip.style.display = "none"; return; }
  const b = matrix("beta", S.layer, S.head)[i * N + j];
  let t = "query " + i + " \u00ab" + D.tokens[i] + "\u00bb\nkey   " + j + " \u00ab" +
    D.tokens[j] + "\u00bb\n\u03b2 = " + b.toPrecision(4);
  if (KL) t += "\nKL = " + matrix("kl", S.layer, S.head)[i * N + j].toPrecision(4);
  if (!MASK[i * N + j]) t += "\n(masked key)";
  tip.textContent = t; tip.style.display = "block";
  tip.style.left = (ev.clientX - r.left + 14) + "px";
  tip.style.top = (ev.clientY - r.top + 14) + "px";
}

function drawThumb(cv, l, h) {
  const ctx = cv.getContext("2d"), img = ctx.createImageData(N, N), M = matrix("beta", l, h);
  for (let p = 0; p < NN; p++) {
    const rgb = MASK[p] ? hexRGB(colourOf(M[p], "beta", "log", l)) : [230, 230, 230];
    img.data.set([rgb[0], rgb[1], rgb[2], 255], 4 * p);
  }
  ctx.putImageData(img, 0, 0);
}

function buildOverview() {
  const ov = $("overview");
  for (let l = 0; l < L; l++) {
    const row = document.createElement("div"); row.className = "layer-row";
    const name = document.createElement("div"); name.className = "layer-name";
    name.textContent = "L" + D.layers[l]; row.appendChild(name);
    for (let h = 0; h < H; h++) {
      const th = document.createElement("div"); th.className = "thumb"; th.id = "t" + l + "_" + h;
      const cv = document.createElement("canvas"); cv.width = N; cv.height = N;
      drawThumb(cv, l, h); th.appendChild(cv);
      const cap = document.createElement("div");
      cap.textContent = "h" + h + " \u00b7 " + D.labels[h];
      const st = document.createElement("div"); st.className = D.status[l][h];
      st.textContent = D.rowStd[l][h].toFixed(3) + " " + D.status[l][h];
      th.appendChild(cap); th.appendChild(st);
      th.addEventListener("click", () => { select(l, h); window.scrollTo(0, 0); });
      row.appendChild(th);
    }
    ov.appendChild(row);
  }
}

function select(l, h) {
  const old = document.querySelector(".thumb.sel"); if (old) old.classList.remove("sel");
  S.layer = (l + L) % L; S.head = (h + H) % H;
  $("layer").value = S.layer; $("head").value = S.head;
  $("t" + S.layer + "_" + S.head).classList.add("sel");
  drawMain();
}

function init() {
  $("layer").max = L - 1;
  for (let h = 0; h < H; h++) {
    const o = document.createElement("option"); o.value = h;
    o.textContent = "h" + h + " \u00b7 " + D.labels[h]; $("head").appendChild(o);
  }
  if (KL) {
    const o = document.createElement("option"); o.value = "kl";
    o.textContent = "KL(q_i \u2016 \u03a9_ij q_j)"; $("view").appendChild(o);
  }
  $("layer").addEventListener("input", (e) => select(+e.target.value, S.head));
  $("head").addEventListener("change", (e) => select(S.layer, +e.target.value));
  $("scale").addEventListener("change", (e) => { S.scale = e.target.value; drawMain(); });
  $("view").addEventListener("change", (e) => { S.view = e.target.value; drawMain(); });
  $("main").addEventListener("mousemove", onMove);
  $("main").addEventListener("mouseleave", () => { $("tip").style.display = "none"; });
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "SELECT" || e.target.tagName === "INPUT") return;
    const mv = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
    if (mv[e.key]) { e.preventDefault(); select(S.layer + mv[e.key][0], S.head + mv[e.key][1]); }
  });
  buildOverview();
  select(0, 0);
}
init();
</script>
</body>
</html>
"""
