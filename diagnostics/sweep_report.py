"""Files of a sweep (:mod:`gaugeformer.train.sweep`): ``sweep.json``, ``sweep.csv``, ``sweep.md`` and figures.

Figures (matplotlib, Agg, PNG):

* ``ppl.png``: validation perplexity per configuration, one bar per profile (per κ in κ mode).
* ``row_std_by_l.png``: one panel per profile, valid row_std against ℓ, one line per configuration, with
  the report's UNIFORM / SHARP boundaries (0.05, 0.10).
* κ mode, ``kappa.png``: valid row_std per ℓ and the seed's KL std against κ (log axes).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from gaugeformer.stats import MEDIUM_THRESHOLD, SHARP_THRESHOLD

_SCALAR_KEYS = ("config", "profile", "kappa", "kappa_label", "irreps", "n_heads", "params", "steps", "val_ppl",
                "val_ce", "kl_mean_seed", "kl_std_seed", "max_grad_norm", "nan", "attention_label",
                "tokens_per_s", "peak_rss_mb", "seconds")
_BY_L = ("row_std_by_l", "row_std_legacy_by_l", "kl_mean_by_l", "kl_std_by_l")


def _ell(label: str) -> int:
    digits = "".join(ch for ch in label[1:] if ch.isdigit())
    return int(digits) if digits else 0


def _labels(rows: Sequence[dict]) -> list[str]:
    return sorted({k for r in rows for k in r["row_std_by_l"]}, key=lambda x: (_ell(x), x))


def _fmt(x: Any, spec: str = ".4g") -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def _causes_short(row: dict) -> str:
    c = row["cause_counts"]
    names = {"token_independent": "tok-indep", "kl_below_temperature": "KL<κ", "not_uniform": "not-unif",
             "other": "other"}
    return ", ".join(f"{names[k]} {v}" for k, v in c.items() if v)


def csv_rows(rows: Sequence[dict]) -> tuple[list[str], list[dict]]:
    """Flat CSV rows: scalars, ``<key>_<ℓ>`` columns for every per-ℓ dict, cause counts and per-head causes."""
    labels = _labels(rows)
    header = list(_SCALAR_KEYS)
    header += [f"{k.removesuffix('_by_l')}_{lab}" for k in _BY_L for lab in labels]
    header += [f"cause_{c}" for c in ("token_independent", "kl_below_temperature", "not_uniform", "other")]
    header += ["causes"]
    out = []
    for r in rows:
        flat = {k: r.get(k) for k in _SCALAR_KEYS}
        for k in _BY_L:
            for lab in labels:
                flat[f"{k.removesuffix('_by_l')}_{lab}"] = r[k].get(lab)
        for c, v in r["cause_counts"].items():
            flat[f"cause_{c}"] = v
        flat["causes"] = " ".join(f"{layer}:{lab}:{cause}" for layer, lab, cause in r["causes"])
        out.append(flat)
    return header, out


def markdown(rows: Sequence[dict], kappa_mode: bool = False) -> str:
    """The sweep table (and, in κ mode, the seed-001 κ table)."""
    labels = _labels(rows)
    head = ["config", "profile", "κ", "irreps", "params", "val PPL"]
    head += [f"row_std {lab}" for lab in labels] + ["legacy row_std (mean)"]
    head += [f"KL mean / std {lab}" for lab in labels]
    head += ["causes (heads)", "tok/s", "peak RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["config"], r["profile"], _fmt(r["kappa"]), f"`{r['irreps']}`", _fmt(r["params"], ",d"),
                 "NaN stop" if r["nan"] else _fmt(r["val_ppl"], ".1f")]
        cells += [_fmt(r["row_std_by_l"].get(lab), ".4f") for lab in labels]
        cells += [_fmt(float(np.mean(list(r["row_std_legacy_by_l"].values()))), ".4f")]
        cells += [("—" if lab not in r["kl_mean_by_l"] else
                   f"{r['kl_mean_by_l'][lab]:.3g} / {r['kl_std_by_l'][lab]:.3g}") for lab in labels]
        cells += [_causes_short(r), _fmt(r["tokens_per_s"], ",.0f"), _fmt(r["peak_rss_mb"], ",.0f")]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if kappa_mode:
        text += "\n" + kappa_markdown(rows)
    return text


def kappa_markdown(rows: Sequence[dict]) -> str:
    """Seed 001's κ table: κ, KL mean, KL std, attention, PPL, stability (max gradient norm, NaN)."""
    lines = ["| config | profile | κ | κ source | KL mean | KL std | Attention | PPL | Stability |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        stab = ("❌ NaN" if r["nan"] else "✓ finite") + f", max ‖∇‖ {_fmt(r['max_grad_norm'], '.3g')}"
        lines.append(f"| {r['config']} | {r['profile']} | {_fmt(r['kappa'], '.5g')} | {r['kappa_label'] or '—'} | "
                     f"{_fmt(r['kl_mean_seed'], '.4f')} | {_fmt(r['kl_std_seed'], '.4f')} | "
                     f"{r['attention_label']} | {'—' if r['nan'] else _fmt(r['val_ppl'], '.1f')} | {stab} |")
    return "\n".join(lines) + "\n"


def write_tables(rows: Sequence[dict], out: Path, kappa_mode: bool = False) -> list[Path]:
    """``sweep.json``, ``sweep.csv`` and ``sweep.md`` (rewritten in full; each via a temporary file)."""
    out = Path(out)
    paths = []

    def put(name: str, text: str) -> None:
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
        paths.append(out / name)

    put("sweep.json", json.dumps(list(rows), indent=1, ensure_ascii=False))
    header, flat = csv_rows(rows)
    tmp = out / ".sweep.csv.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(flat)
    tmp.replace(out / "sweep.csv")
    paths.append(out / "sweep.csv")
    put("sweep.md", markdown(rows, kappa_mode))
    return paths


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def _run_key(r: dict, kappa_mode: bool) -> str:
    return f"{r['profile']}" + (f", κ={r['kappa']:.3g}" if kappa_mode else "")


def plot_ppl(rows: Sequence[dict], path: Path, kappa_mode: bool = False) -> Path:
    configs = list(dict.fromkeys(r["config"] for r in rows))
    keys = list(dict.fromkeys(_run_key(r, kappa_mode) for r in rows))
    fig = Figure(figsize=(max(7.0, 1.3 * len(configs) * max(1, len(keys)) / 2 + 3), 4.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(keys))
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    for k, key in enumerate(keys):
        xs, ys = [], []
        for c, config in enumerate(configs):
            r = next((r for r in rows if r["config"] == config and _run_key(r, kappa_mode) == key), None)
            if r is not None and r["val_ppl"] is not None:
                xs.append(c + (k - (len(keys) - 1) / 2) * width)
                ys.append(r["val_ppl"])
        bars = ax.bar(xs, ys, width, label=key, color=colors[k % len(colors)])
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
    ax.set_xticks(range(len(configs)), configs, rotation=20, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("validation perplexity (log)")
    steps = sorted({r["steps"] for r in rows})
    ax.set_title(f"Validation PPL per configuration ({'/'.join(map(str, steps))} steps, same data and seed)")
    ax.legend(title="profile")
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=130)
    return path


def plot_row_std(rows: Sequence[dict], path: Path, kappa_mode: bool = False) -> Path:
    keys = list(dict.fromkeys(_run_key(r, kappa_mode) for r in rows))
    labels = _labels(rows)
    xs = {lab: i for i, lab in enumerate(labels)}
    fig = Figure(figsize=(5.5 * len(keys) + 2.2, 4.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(keys), sharey=True))
    configs = list(dict.fromkeys(r["config"] for r in rows))
    markers = "osD^v<>pX*"
    colors = [f"C{i}" for i in range(10)]
    top = max([v for r in rows for v in r["row_std_by_l"].values()] + [2 * SHARP_THRESHOLD]) * 1.3
    handles = {}
    for ax, key in zip(axes, keys):
        for c, config in enumerate(configs):  # one colour and marker per configuration in every panel
            r = next((r for r in rows if r["config"] == config and _run_key(r, kappa_mode) == key), None)
            if r is None:
                continue
            items = sorted(r["row_std_by_l"].items(), key=lambda kv: xs[kv[0]])
            (line,) = ax.plot([xs[k] for k, _ in items], [v for _, v in items], marker=markers[c % len(markers)],
                              color=colors[c % len(colors)], label=config, lw=1.2, ms=6, alpha=0.85)
            handles[config] = line
        ax.axhline(MEDIUM_THRESHOLD, color="grey", ls="--", lw=0.8)
        ax.axhline(SHARP_THRESHOLD, color="grey", ls=":", lw=0.8)
        ax.text(len(labels) - 0.55, MEDIUM_THRESHOLD, f"UNIFORM ≤ {MEDIUM_THRESHOLD:.2f}",
                va="bottom", ha="right", fontsize=7,
                color="grey")
        ax.text(len(labels) - 0.55, SHARP_THRESHOLD, f"SHARP > {SHARP_THRESHOLD:.2f}",
                va="bottom", ha="right", fontsize=7,
                color="grey")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_yscale("symlog", linthresh=1e-3, linscale=0.5)
        ax.set_ylim(0, top)
        ax.set_xlabel("head irrep")
        ax.set_title(f"profile {key}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("row_std (valid keys), mean over heads of that ℓ (symlog)")
    fig.legend([handles[c] for c in configs if c in handles], [c for c in configs if c in handles],
               loc="outside right upper", fontsize=8, title="configuration")
    fig.suptitle("Attention sharpness per irrep, configuration and profile")
    fig.savefig(path, dpi=130)
    return path


def plot_kappa(rows: Sequence[dict], path: Path) -> Path:
    groups = list(dict.fromkeys((r["config"], r["profile"]) for r in rows))
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    ax, bx = fig.subplots(1, 2)
    for config, profile in groups:
        rs = sorted((r for r in rows if (r["config"], r["profile"]) == (config, profile)), key=lambda r: r["kappa"])
        for lab in _labels(rs):
            pts = [(r["kappa"], r["row_std_by_l"][lab]) for r in rs if lab in r["row_std_by_l"] and not r["nan"]]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{config}/{profile} {lab}")
        pts = [(r["kappa"], r["kl_std_seed"]) for r in rs if r["kl_std_seed"]]  # > 0 on the log axis
        if pts:
            bx.plot(*zip(*pts), marker="s", label=f"{config}/{profile}")
        for r in rs:
            if r["nan"]:
                ax.axvline(r["kappa"], color="red", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.axhline(MEDIUM_THRESHOLD, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("κ")
    ax.set_ylabel("row_std (valid keys)")
    ax.set_title("Sharpness per irrep vs κ (red: NaN stop)")
    ax.legend(fontsize=7)
    bx.set_xscale("log")
    bx.set_yscale("log")
    bx.set_xlabel("κ")
    bx.set_ylabel("KL std (seed tracker, last train step)")
    bx.set_title("KL spread vs κ")
    bx.legend(fontsize=7)
    fig.savefig(path, dpi=130)
    return path


def write_figures(rows: Sequence[dict], out: Path, kappa_mode: bool = False) -> list[Path]:
    out = Path(out)
    paths = [plot_ppl(rows, out / "ppl.png", kappa_mode), plot_row_std(rows, out / "row_std_by_l.png", kappa_mode)]
    if kappa_mode:
        paths.append(plot_kappa(rows, out / "kappa.png"))
    return paths
