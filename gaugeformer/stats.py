"""Attention statistics, defined once: the valid-key mask of a model, row_std (the reference's
"legacy" form and the causally valid one), row entropy, and the SHARP / MEDIUM / UNIFORM status.

Used by the training metrics (jitted, jnp), the validation report's jitted metrics
(:mod:`diagnostics.metrics`), the figures and the tools (numpy, float64).  The array functions work
on either: they follow the type of their input (``jax.Array`` → jnp, else numpy), like
:func:`gaugeformer.ops.masks.allowed`.

* **valid row_std** of a row: the population std of β over the row's valid keys
  (:func:`model_valid_keys`); rows with fewer than two valid keys have none.  Per head, the mean
  over rows that have one.
* **legacy row_std** (ref-diagnostics §2.1): the std over the ``N − 1`` off-diagonal keys, masked
  (future) keys included, averaged over all ``N`` rows.  It cannot exceed ``√(N−2)/(N−1)``, so
  "SHARP" is impossible at N ≥ 100.
* **status** (ref-diagnostics §2.2): ``SHARP`` above 0.1, ``MEDIUM`` above 0.05, else ``UNIFORM``.

The pieces of row_std are public so that a fused reduction computes the same statistic:
:func:`row_std_keys` (which keys), :func:`row_std_rows` (per-row std, two passes, any values),
:func:`row_std_terms` + :func:`std_from_sums` (the same per-row std in one pass, for attention
rows of unit mass) and :func:`head_row_std` (which rows a head's value averages).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from gaugeformer.config import ModelConfig
from gaugeformer.ops.masks import valid_keys

SHARP_THRESHOLD = 0.1  # row_std > 0.1 -> SHARP (ref §2.2)
MEDIUM_THRESHOLD = 0.05  # row_std > 0.05 -> MEDIUM, else UNIFORM
KL_UNIFORM_THRESHOLD = 0.5  # seed 002: "KL divergences too uniform" below this per-row spread
LABELS = ("SHARP", "MEDIUM", "UNIFORM")
STATUS_RULE = f"SHARP > {SHARP_THRESHOLD:.2f}, MEDIUM > {MEDIUM_THRESHOLD:.2f}, else UNIFORM"
MARKS = {"SHARP": "\u2713", "MEDIUM": "\u26a0", "UNIFORM": "\u274c"}  # the seed report's marks


@dataclasses.dataclass(frozen=True)
class KeyPattern:
    """Which keys a model's queries may attend: what figures and statistics need of a config.

    ``KeyPattern()`` is full causal attention; :meth:`of` reads a ``ModelConfig``.
    """

    pattern: str = "full"
    window: int = 24
    mask_self: bool = False

    @classmethod
    def of(cls, cfg: ModelConfig) -> KeyPattern:
        return cls(cfg.attention_pattern, cfg.attention_window, cfg.mask_self_attention)

    def grid(self, n: int, m: int | None = None) -> np.ndarray:
        """``[N, M]`` bool (:func:`gaugeformer.ops.masks.valid_keys`)."""
        return valid_keys(n, self.pattern, self.window, self.mask_self, m)

    def describe(self) -> str:
        """``"full causal"``, ``"local causal (window 8), self masked"``, ..."""
        what = "full causal" if self.pattern == "full" else (
            f"{self.pattern} causal (window {self.window})")
        return what + (", self masked" if self.mask_self else "")


def model_valid_keys(cfg: ModelConfig, n: int, m: int | None = None) -> np.ndarray:
    """``[N, M]`` bool: the keys query i of ``cfg``'s model may attend (its attention pattern,
    window and self-masking; :func:`gaugeformer.ops.masks.valid_keys`)."""
    return KeyPattern.of(cfg).grid(n, m)


def _xp(x):
    return jnp if isinstance(x, jax.Array) else np


def row_std_keys(mask, *, legacy: bool = False, include_diag: bool = True):
    """``[N, M]`` bool: the keys a row's std runs over.

    Args:
      mask: the valid keys ``[N, M]`` (:func:`model_valid_keys`; numpy, or jnp when traced).
      legacy: the reference's keys, every key but the diagonal, masked ones included (ref §2.1).
      include_diag: valid keys only: keep the diagonal key (self is a valid key of causal
        attention); a diagonal cleared in ``mask`` is never included.
    """
    n, m = mask.shape[-2:]
    off = ~np.eye(n, m, dtype=bool)
    if legacy:
        return off
    return mask if include_diag else mask & off


def row_std_rows(x, mask, *, empty=float("nan")):
    """Population std of each row of ``x [..., N, M]`` over its valid keys: ``[..., N]``
    (``empty`` for rows with fewer than two valid keys).  numpy input is computed in float64."""
    xp = _xp(x)
    x = x if xp is jnp else np.asarray(x, np.float64)
    w = xp.asarray(mask, x.dtype)
    cnt = w.sum(-1)
    mean = (x * w).sum(-1) / xp.maximum(cnt, 1.0)
    var = (xp.square(x - mean[..., None]) * w).sum(-1) / xp.maximum(cnt, 1.0)
    return xp.where(cnt >= 2, xp.sqrt(var), empty)


def row_std_terms(b, keys, n_keys, diag_kept):
    """One attention row block ``b [N, M]`` as the summands of a one-pass std (jnp).

    Summing the two returned ``[N, M]`` arrays over keys and passing the sums to
    :func:`std_from_sums` gives :func:`row_std_rows` of ``b`` over ``keys``, in one reduction that
    can be fused with others (:mod:`diagnostics.metrics`).  The values are shifted by each row's
    expected mean for a row of unit mass, ``(1 − b_ii [ii not a key]) / n_keys`` (clipped to
    [0, 1]): close to the true mean for any attention pattern, which keeps the one-pass variance as
    accurate as two passes (a fixed shift such as 1/M loses ~1e-6 to cancellation on rows whose mass
    sits on an excluded diagonal).  For values that are not attention weights use
    :func:`row_std_rows`.

    Args:
      b: ``[N, M]`` attention weights.
      keys: ``[N, M]`` float 0/1 selection (:func:`row_std_keys`).
      n_keys: ``[N]`` keys per row.
      diag_kept: ``[N]`` float 0/1: whether row i's diagonal key is selected.

    Returns:
      ``(x, x²)``, each ``[N, M]``.
    """
    n, m = b.shape
    diagonal = jnp.zeros((n,), b.dtype).at[: min(n, m)].set(jnp.diagonal(b))
    shift = (1.0 - diagonal * (1.0 - diag_kept)) / jnp.maximum(n_keys, 1.0)
    x = (b - jnp.clip(shift, 0.0, 1.0)[:, None]) * keys
    return x, x * x


def std_from_sums(s1, s2, n_keys):
    """Per-row std ``[N]`` from the key sums of :func:`row_std_terms`; 0 where a row has fewer
    than two keys (jnp)."""
    c = jnp.maximum(n_keys, 1.0)
    mean = s1 / c
    var = jnp.maximum(s2 / c - mean * mean, 0.0)
    return jnp.where(n_keys >= 2, jnp.sqrt(var), 0.0)


def head_row_std(rows, n_keys, *, legacy: bool = False, empty: float = 0.0):
    """A head's row_std from its rows' ``[..., N]``: the reference's mean over all ``N`` rows
    (``legacy``), else the mean over rows with ≥ 2 keys (``n_keys [N]``; ``empty`` where there is
    none)."""
    if legacy:
        return rows.mean(-1)
    xp = _xp(rows)
    ok = xp.asarray(n_keys) >= 2
    okf = xp.broadcast_to(ok, rows.shape).astype(rows.dtype)
    n_ok = okf.sum(-1)
    return xp.where(n_ok > 0, (rows * okf).sum(-1) / xp.maximum(n_ok, 1.0), empty)


def row_std_valid(x, mask, *, empty: float = 0.0):
    """Valid-keys row_std ``[..., N, M] -> [...]``: mean over rows with ≥ 2 valid keys (``empty``
    where there is none: 0 in training metrics, NaN in figures).

    >>> b = np.tril(np.ones((4, 4))) / np.arange(1, 5)[:, None]
    >>> float(row_std_valid(b, np.tril(np.ones((4, 4), bool))))
    0.0
    """
    n_keys = _xp(x).asarray(mask).sum(-1)
    return head_row_std(row_std_rows(x, mask, empty=0.0), n_keys, empty=empty)


def row_std_legacy(x):
    """The reference's row_std: ``[..., N, N] -> [...]`` (see the module docstring); a row with a
    single off-diagonal key (N = 2) has std 0."""
    n = x.shape[-1]
    if n < 2:
        return _xp(x).zeros(x.shape[:-2])
    keys = row_std_keys(np.ones((n, n), bool), legacy=True)
    return head_row_std(row_std_rows(x, keys, empty=0.0), keys.sum(-1), legacy=True)


def row_entropy(beta, mask):
    """Mean over rows of ``−Σ_valid β log β`` (nats): ``[..., N, M] -> [...]``."""
    xp = _xp(beta)
    p = xp.where(mask, beta, 0.0)
    return xp.mean(-xp.sum(xp.where(p > 0, p * xp.log(xp.where(p > 0, p, 1.0)), 0.0), -1), -1)


def status(value: float) -> str:
    """``SHARP`` / ``MEDIUM`` / ``UNIFORM`` for a row_std value; ``n/a`` for NaN (no query row
    with two valid keys)."""
    v = float(value)
    if not math.isfinite(v):
        return "n/a"
    if v > SHARP_THRESHOLD:
        return "SHARP"
    return "MEDIUM" if v > MEDIUM_THRESHOLD else "UNIFORM"


def marked(value: float) -> str:
    """The console's decorated status: ``✓SHARP`` / ``⚠MEDIUM`` / ``❌UNIFORM`` (seed 000)."""
    label = status(value)
    return MARKS.get(label, "") + label


def table_status(label: str) -> str:
    """A status cell of seed 001's per-irrep table: ``✓ SHARP`` / ``⚠️ MEDIUM`` / ``❌ UNIFORM``
    (the seed's text, emoji presentation of the warning sign)."""
    if label not in MARKS:
        return label
    return f"{MARKS[label]}\ufe0f {label}" if label == "MEDIUM" else f"{MARKS[label]} {label}"


def row_std_table(valid: np.ndarray, legacy: np.ndarray, labels: tuple[str, ...]) -> str:
    """Markdown table of per-head row_std with irrep labels.

    Args:
      valid: ``[L, H]`` valid-keys row_std.
      legacy: ``[L, H]`` reference row_std (masked keys included).
      labels: H irrep labels.
    """
    rows = ["| layer | head | irrep | row_std (valid keys) | status | row_std (reference) |",
            "|---:|---:|:---|---:|:---|---:|"]
    for layer in range(valid.shape[0]):
        for h, label in enumerate(labels):
            v = float(valid[layer, h])
            rows.append(f"| {layer} | {h} | {label} | {v:.4f} | {status(v)} | "
                        f"{float(legacy[layer, h]):.4f} |")
    return "\n".join(rows)
