"""Training curves: cross-entropy and perplexity against step, train and eval."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from diagnostics.figures.base import (
    FigureRecord,
    _save,
)

_TRAIN_LOSS = ("train_loss", "train/loss", "loss/train", "loss")
_EVAL_LOSS = ("eval_loss", "val_loss", "eval/loss", "val/loss", "loss/eval", "loss/val",
              "validation_loss", "valid_loss")
_TRAIN_PPL = ("train_ppl", "train/ppl", "ppl/train", "train_perplexity", "ppl", "perplexity")
_EVAL_PPL = ("eval_ppl", "val_ppl", "eval/ppl", "val/ppl", "ppl/eval", "ppl/val",
             "eval_perplexity", "val_perplexity", "validation_ppl")
_STEP = ("step", "global_step", "iteration", "iter", "it")


def _load_records(src: str | os.PathLike[str] | Sequence[Mapping[str, Any]]
                  ) -> list[Mapping[str, Any]]:
    """Reads JSON-lines (blank lines skipped) or returns the given list."""
    if isinstance(src, (str, os.PathLike)):
        recs = []
        for no, line in enumerate(Path(src).read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    recs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{src}:{no}: invalid JSON ({e.msg})") from e
        return recs
    return list(src)


def _split_of(rec: Mapping[str, Any]) -> str | None:
    """``"train"``/``"eval"`` from a ``split``/``phase``/``mode`` field, if any."""
    for key in ("split", "phase", "mode", "kind"):
        val = str(rec.get(key, "")).lower()
        if val in ("train", "training"):
            return "train"
        if val in ("eval", "val", "valid", "validation", "test"):
            return "eval"
    return None


def training_series(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list, list]]:
    """Extracts ``(steps, values)`` for train/eval loss and PPL from log records.

    Keys are recognised by common names (``loss``/``train_loss``, ``eval_loss``/``val_loss``,
    ``ppl``…); a record with ``split``/``phase``/``mode`` = train|eval routes a bare ``loss`` /
    ``ppl``. Missing PPL series are derived as exp(loss) (series name ends in ``*``).

    Args:
        records: log dicts.

    Returns:
        Mapping of ``train_loss``, ``eval_loss``, ``train_ppl``, ``eval_ppl`` (those present) to
        ``(steps, values)``.
    """
    out: dict[str, tuple[list, list]] = {}
    for idx, r in enumerate(records):
        step = next((r[k] for k in _STEP if _finite(r.get(k))), idx)
        split = _split_of(r) or "train"
        for name, keys in (("train_loss", _TRAIN_LOSS), ("eval_loss", _EVAL_LOSS),
                           ("train_ppl", _TRAIN_PPL), ("eval_ppl", _EVAL_PPL)):
            bare = "loss" if name.endswith("loss") else "ppl"
            keys = tuple(k for k in keys if k not in ("loss", "ppl", "perplexity"))
            if name.startswith(split):  # a bare key belongs to the record's split
                keys += ("loss",) if bare == "loss" else ("ppl", "perplexity")
            val = next((r[k] for k in keys if _finite(r.get(k))), None)
            if val is not None:
                out.setdefault(name, ([], []))
                out[name][0].append(step)
                out[name][1].append(float(val))
    for split in ("train", "eval"):
        if f"{split}_ppl" not in out and f"{split}_loss" in out:
            st, vals = out[f"{split}_loss"]
            out[f"{split}_ppl*"] = (st, [math.exp(min(v, 700.0)) for v in vals])
    return out


def _finite(x: Any) -> bool:
    """True for a finite real number (bools excluded)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def plot_training_curves(
    src: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
    out: str | os.PathLike[str],
    *,
    title: str = "Training curves",
    dpi: int = 150,
) -> FigureRecord:
    """Loss and perplexity against step, train and eval (two panels).

    Args:
        src: path of a JSON-lines log or a list of dicts (see :func:`training_series`).
        out: PNG path.
        title: figure title.
        dpi: PNG resolution.

    Returns:
        :class:`FigureRecord` (``stats`` holds the final value of each series).
    """
    series = training_series(_load_records(src))
    if not series:
        raise ValueError("no loss / ppl values found in the training log")
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    ax, px = fig.subplots(1, 2)
    ax.set_label("loss")
    px.set_label("ppl")
    style = {"train": {"color": "#1f77b4", "lw": 1.4},
             "eval": {"color": "#d62728", "lw": 2.0, "marker": "o", "ms": 4}}
    for name, (st, vals) in series.items():
        split, kind = name.rstrip("*").split("_")
        target = ax if kind == "loss" else px
        lab = f"{split}" + (" (exp loss)" if name.endswith("*") else "")
        target.plot(st, vals, label=lab, **style[split])
    ax.set_ylabel("cross-entropy loss [nats]")
    px.set_ylabel("perplexity")
    px.set_yscale("log")
    px.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    px.yaxis.set_major_formatter(ScalarFormatter())
    px.yaxis.set_minor_formatter(NullFormatter())
    for a_ in (ax, px):
        a_.set_xlabel("step")
        a_.grid(alpha=0.3)
        if a_.lines:
            a_.legend(fontsize=9)
    fig.suptitle(title, fontsize=12, fontweight="bold")
    return _save(fig, out, dpi, stats={k: v[1][-1] for k, v in series.items()})
