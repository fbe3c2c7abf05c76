"""The 9-part attention validation report (seed 000), for every layer, from host-side metrics.

The decision logic of the reference validator (ref-diagnostics §3) is reimplemented here on top
of :func:`diagnostics.metrics.all_metrics` results fetched to the host (``jax.device_get``):
:func:`validate` and the renderers only read numpy arrays; :func:`run_validation` and
:func:`kappa_sweep` call the jitted metrics.

Parts and tests (name, the reference's thresholds and severities):

1. Sanity checks: ``Normalization`` (allclose(row sums, 1, atol=1e-4), critical),
   ``Causality`` (max future weight, info), ``KL Properties`` (min KL >= -1e-5 and
   max KL_ii < 0.1, critical).
2. ``Positional Bias``: nearby (d=1..5) > 1.1 x far (last 5 distances), warning.
3. ``Token Repetition`` (same-token pairs > 1.2 x different, warning), ``Special Tokens`` (info).
4. ``vs Uniform`` (mean RMS deviation > 0.05, critical), ``Entropy`` (H/H_max < 0.5 pass,
   < 0.8 pass with a warning, else critical).
5. ``Per-Head Analysis``: any SHARP head passes; more than H//2 MEDIUM passes with a warning;
   otherwise critical.
6. ``Query Variation``: > 0.05 pass, > 0.02 pass with a warning, else critical; plus the
   adjacent/distant sub-analysis (printed only).
7. ``Diversity Correlation``: μ_div > 0.3 with row_std > 0.05 passes; μ_div > 0.3 with uniform
   attention is critical; low μ_div is a warning.
8. ``Gradient Flow`` from precomputed per-group gradient norms (the reference only counted
   parameter names; see :func:`validate` for what the model side supplies).
9. ``Ablation: <variant>`` from precomputed losses per attention override.

Metric modes (``--metrics``): ``legacy`` decides with the reference's bug-compatible numbers,
``valid`` with the causally-valid ones (same thresholds), ``both`` decides with legacy and
carries the valid verdict next to every test (``CheckResult.valid``), with a summary and
conclusion for each mode.

Batch handling follows the reference: batch element ``batch_index`` (0) for every test except
normalisation, entropy and KL properties, which use the whole batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import jax
import numpy as np

from gaugeformer import stats
from gaugeformer.stats import SHARP_THRESHOLD

from diagnostics.metrics import all_metrics, row_std

Severity = Literal["info", "warning", "critical"]
Mode = Literal["legacy", "valid"]
MetricsMode = Literal["legacy", "valid", "both"]
MODES: dict[str, tuple[Mode, ...]] = {
    "legacy": ("legacy",),
    "valid": ("valid",),
    "both": ("legacy", "valid"),
}

PART_TITLES = {
    1: "Sanity Checks (Correctness)",
    2: "Positional Patterns",
    3: "Token-Level Patterns",
    4: "Statistical Tests",
    5: "Per-Head Analysis",
    6: "Query-Side Variation (Do different tokens attend differently?)",
    7: "Diversity Correlation",
    8: "Gradient Flow Check",
    9: "Ablation Study (Does Attention Help?)",
}

# Thresholds of the reference validator (ref-diagnostics §3.3-§3.11).
NORM_ATOL, NORM_RTOL = 1e-4, 1e-5
CAUSAL_TOL = 1e-6
FUTURE_MASS_TOL = 1e-4  # valid mode only: more future mass than this per row is a leak
KL_NEG_TOL, KL_DIAG_TOL = -1e-5, 0.1
POS_RATIO = 1.1
REP_RATIO = 1.2
UNIFORM_DEV = 0.05
ENTROPY_SHARP, ENTROPY_UNIFORM = 0.5, 0.8
QV_PASS, QV_WEAK = 0.05, 0.02
MU_DIV, ATTN_DIV = 0.3, 0.05
ABLATION_HELPS, ABLATION_SLIGHT = 10.0, 2.0  # percent PPL degradation
RATIO_EPS = 1e-10
SUB_HEADS = 3  # heads in the query sub-analysis
DEFAULT_KAPPAS = (0.3, 0.5, 1.0, 2.0, 5.0)  # the reference's κ sweep
RULE = "=" * 70
THIN = "-" * 70
CRITICAL_HEADLINE = "❌ Critical issues detected! Attention may not be working correctly."
WARNING_HEADLINE = "⚠️  Attention is correct but may not be learning meaningful patterns."
WARNING_HINTS = (
    "Architectural limitations (low-dimensional heads)",
    "Insufficient training",
    "Hyperparameter issues (temperature, learning rate)",
)


# ------------------------------------------------------------------------------------------------
# Result records
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One test's verdict.

    Attributes:
        name: test name (e.g. ``"vs Uniform"``).
        passed: whether the test passed.
        score: the number the decision was made on (None when there is none).
        threshold: the decisive threshold (None for informational tests).
        severity: ``"info"``, ``"warning"`` or ``"critical"``. Failures count as critical or
            warning issues by severity; an ``info`` failure only counts in the total.
        message: the console line, with its status symbol.
        part: report part 1..9.
        valid: the valid-mode verdict of the same test when the report runs ``both`` modes.
    """

    name: str
    passed: bool
    score: float | None
    threshold: float | None
    severity: Severity
    message: str
    part: int = 0
    valid: CheckResult | None = None


@dataclasses.dataclass(frozen=True)
class PartReport:
    """One of the nine parts of a layer's report: info lines, results, trailing notes."""

    part: int
    title: str
    ran: bool
    lines: tuple[str, ...] = ()
    results: tuple[CheckResult, ...] = ()
    notes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Summary:
    """Counts over a list of results (ref §3.2)."""

    total_tests: int
    passed: int
    critical_failures: int
    warnings: int
    issues: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Conclusion:
    status: Literal["ok", "warning", "critical"]
    headline: str
    hints: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A matching interpretation scenario of seed 000."""

    number: int
    title: str
    evidence: str
    interpretation: str
    action: str


@dataclasses.dataclass(frozen=True)
class HeadRow:
    head: int
    label: str
    row_std: float  # legacy
    row_std_valid: float


@dataclasses.dataclass(frozen=True)
class IrrepRow:
    """Per-irrep summary of head row_std values (seed 001's table)."""

    label: str
    kind: str
    dim: int
    heads: int
    row_std_min: float
    row_std_max: float
    row_std_mean: float

    @property
    def status(self) -> str:
        return stats.status(self.row_std_mean)


@dataclasses.dataclass(frozen=True)
class LayerReport:
    layer: int
    parts: tuple[PartReport, ...]
    heads: tuple[HeadRow, ...]
    summaries: Mapping[str, Summary]  # mode -> summary; the first key is the deciding mode
    conclusions: Mapping[str, Conclusion]
    scenarios: Mapping[str, tuple[Scenario, ...]]
    irreps: Mapping[str, tuple[IrrepRow, ...]]

    def results(self, mode: str | None = None) -> list[CheckResult]:
        """All results of this layer in order; with ``mode``, that mode's verdicts."""
        deciding = next(iter(self.summaries), None)
        return _mode_results(self.parts, mode is not None and mode != deciding)


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    metrics_mode: MetricsMode
    layers: tuple[LayerReport, ...]
    summaries: Mapping[str, Summary]  # over all layers
    conclusions: Mapping[str, Conclusion]
    head_labels: tuple[str, ...]
    head_dims: tuple[int, ...]
    batch_index: int = 0
    meta: Mapping[str, object] = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# Head labels from irrep specifications
# ------------------------------------------------------------------------------------------------

_IRREP_ITEM = re.compile(r"^\s*(?:(\d+)\s*x\s*)?(\d+)([eo])\s*$")
_ELL = re.compile(r"^ℓ(\d+)")


def head_labels(
    irreps: str | Sequence[tuple[str, int, int]], embed_dim: int | None = None
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Per-head labels and dimensions, one head per irrep copy, padding heads last.

    Args:
        irreps: an e3nn-style string (``"5x0e+3x1e+1x2e"``) or the reference's
            ``[(label, multiplicity, dim), ...]``.
        embed_dim: K; if the irrep dims sum to less, the rest becomes ``ℓ0_pad`` scalar heads.

    Returns:
        ``(labels, dims)``; ``"5x0e+3x1e+1x2e"`` gives 9 heads labelled ℓ0 x5, ℓ1 x3, ℓ2 with
        dims 1 x5, 3 x3, 5.
    """
    labels: list[str] = []
    dims: list[int] = []
    if isinstance(irreps, str):
        for item in irreps.split("+"):
            match = _IRREP_ITEM.match(item)
            if match is None:
                raise ValueError(f"cannot parse irrep {item!r} in {irreps!r}")
            mult, ell = int(match.group(1) or 1), int(match.group(2))
            labels += [f"ℓ{ell}"] * mult
            dims += [2 * ell + 1] * mult
    else:
        for label, mult, dim in irreps:
            labels += [str(label)] * int(mult)
            dims += [int(dim)] * int(mult)
    if embed_dim is not None:
        pad = embed_dim - sum(dims)
        if pad < 0:
            raise ValueError(f"irrep dims sum to {sum(dims)} > embed_dim {embed_dim}")
        labels += ["ℓ0_pad"] * pad
        dims += [1] * pad
    return tuple(labels), tuple(dims)


def _mode_results(parts: Sequence[PartReport], second: bool) -> list[CheckResult]:
    """Results in order: the deciding mode's, or (``second``) the valid twins of a ``both`` run."""
    out = [r for p in parts for r in p.results]
    return [r.valid if second and r.valid is not None else r for r in out]


def _ell(label: str) -> int | None:
    match = _ELL.match(label)
    return int(match.group(1)) if match else None


def _kind(label: str) -> str:
    ell = _ell(label)
    if ell is None:
        return "head"
    names = {0: "scalar", 1: "vector", 2: "tensor"}
    kind = names.get(ell, f"rank-{ell} tensor")
    return kind + (", padding" if label.endswith("_pad") else "")


def _default_dim(label: str) -> int:
    ell = _ell(label)
    return 1 if ell is None or label.endswith("_pad") else 2 * ell + 1


def irrep_summary(
    row_std: Sequence[float], labels: Sequence[str], dims: Sequence[int] | None = None
) -> tuple[IrrepRow, ...]:
    """Group per-head row_std values by irrep label (first-appearance order).

    Args:
        row_std: one value per head ``[H]``.
        labels: head labels ``[H]`` (see :func:`head_labels`).
        dims: head dimensions; derived from ``ℓ`` (2ℓ+1) when omitted.
    """
    values = np.asarray(row_std, dtype=np.float64)
    if len(labels) != len(values):
        raise ValueError(f"{len(labels)} labels for {len(values)} heads")
    rows = []
    for label in dict.fromkeys(labels):
        idx = [h for h, lab in enumerate(labels) if lab == label]
        dim = int(dims[idx[0]]) if dims is not None else _default_dim(label)
        v = values[idx]
        rows.append(
            IrrepRow(label, _kind(label), dim, len(idx), float(v.min()), float(v.max()),
                     float(v.mean()))
        )
    return tuple(rows)


def render_irrep_table(rows: Sequence[IrrepRow], valid: Sequence[IrrepRow] | None = None) -> str:
    """Markdown table in seed 001's format (plus head counts and means); ``valid`` adds columns."""
    head = "| Head Type | Dimensionality | Heads | Typical row_std | Mean row_std | Status |"
    rule = "|-----------|----------------|-------|-----------------|--------------|--------|"
    if valid is not None:
        head += " Mean row_std (valid) | Status (valid) |"
        rule += "----------------------|----------------|"
    lines = [head, rule]
    for k, r in enumerate(rows):
        line = (
            f"| {r.label} ({r.kind}) | {r.dim} | {r.heads} | {r.row_std_min:.3f} - "
            f"{r.row_std_max:.3f} | {r.row_std_mean:.4f} | {stats.table_status(r.status)} |"
        )
        if valid is not None:
            v = valid[k]
            line += f" {v.row_std_mean:.4f} | {stats.table_status(v.status)} |"
        lines.append(line)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Checks, one builder per part and mode
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Ctx:
    m: Mapping[str, np.ndarray]
    layer: int
    b0: int
    labels: tuple[str, ...]
    special_ids: tuple[int, ...] | None
    grad_norms: Mapping[str, float] | None
    param_counts: Mapping[str, int] | None
    ablation: Mapping[str, float] | None

    def get(self, key: str) -> np.ndarray | None:
        """Metric ``key`` of this layer (all batch elements), or None when absent."""
        value = self.m.get(key)
        return None if value is None else np.asarray(value)[self.layer]

    def at_b0(self, key: str) -> np.ndarray | None:
        value = self.get(key)
        return None if value is None else value[self.b0]


def _sym(passed: bool, severity: Severity) -> str:
    if passed:
        return "⚠️ " if severity == "warning" else "✓"
    return {"critical": "❌", "warning": "⚠️ ", "info": "ℹ"}[severity]


def _result(name, passed, score, threshold, severity, text, part) -> CheckResult:
    score = None if score is None or not math.isfinite(float(score)) else float(score)
    return CheckResult(name, bool(passed), score, threshold, severity, text, part)


def _fmt_ratio(near: float, far: float) -> str:
    return f"nearby: {near:.4f}, far: {far:.4f}, ratio: {near / (far + RATIO_EPS):.2f}x"


def _part1(c: _Ctx, mode: Mode) -> PartReport:
    res = []
    key = "rowsum_maxerr_all" if mode == "legacy" else "rowsum_maxerr_valid"
    err = float(np.max(c.get(key)))
    tol = NORM_ATOL + NORM_RTOL
    where = "" if mode == "legacy" else " over valid keys"
    if err <= tol:
        res.append(_result("Normalization", True, err, tol, "info",
                           f"✓ All rows sum to 1.0{where} (max error: {err:.2e})", 1))
    else:
        res.append(_result("Normalization", False, err, tol, "critical",
                           f"❌ Rows do not sum to 1{where} (max error: {err:.2e})", 1))
    if mode == "legacy":  # the reference looks at batch 0, head 0 only
        fmax = float(c.at_b0("future_max")[0])
        text = (f"✓ No future attention (max future attn: {fmax:.2e})" if fmax < CAUSAL_TOL
                else f"ℹ Non-causal attention detected (max future attn: {fmax:.4f})")
        res.append(_result("Causality", True, fmax, CAUSAL_TOL, "info", text, 1))
    else:  # measured over every head and batch element; the ε floor stays far below the bound
        mass = float(np.max(c.get("future_mass_max")))
        fmax = float(np.max(c.get("future_max")))
        if mass <= FUTURE_MASS_TOL:
            text = f"✓ No future attention (max future mass per row: {mass:.2e}, max weight: " \
                   f"{fmax:.2e})"
            res.append(_result("Causality", True, mass, FUTURE_MASS_TOL, "info", text, 1))
        else:
            text = f"❌ Attention leaks to future keys (max mass per row: {mass:.4f})"
            res.append(_result("Causality", False, mass, FUTURE_MASS_TOL, "critical", text, 1))
    notes = []
    if c.get("kl_min") is not None:
        kmin = float(np.min(c.get("kl_min")))
        dmax = float(np.max(c.get("kl_diag_max")))
        dmean = float(np.mean(c.get("kl_diag_mean")))
        if kmin >= KL_NEG_TOL and dmax < KL_DIAG_TOL:
            text = f"✓ KL ≥ 0 (min: {kmin:.2e}), diag ≈ 0 (mean: {dmean:.4f})"
            res.append(_result("KL Properties", True, dmean, KL_DIAG_TOL, "info", text, 1))
        else:
            what = []
            if kmin < KL_NEG_TOL:
                what.append(f"negative KL (min: {kmin:.2e})")
            if dmax >= KL_DIAG_TOL:
                what.append(f"large diagonal (max: {dmax:.4f})")
            score = max(abs(kmin), dmax)
            res.append(_result("KL Properties", False, score, KL_DIAG_TOL, "critical",
                               "❌ Invalid KL: " + ", ".join(what), 1))
        if c.get("kl_asym") is not None:
            asym = c.get("kl_asym")
            notes.append(f"  KL asymmetry: mean |KL_ij - KL_ji| = {float(np.mean(asym)):.4f} "
                         f"(relative {float(np.mean(c.get('kl_asym_rel'))):.3f})")
    else:
        notes.append("  ℹ KL not supplied: KL checks skipped")
    return PartReport(1, PART_TITLES[1], True, (), tuple(res), tuple(notes))


def _part2(c: _Ctx, mode: Mode) -> PartReport:
    ratio = c.at_b0(f"pos_ratio_{mode}")
    if ratio is None:  # fewer than 10 distances
        mean = float(c.at_b0(f"pos_all_{mode}"))
        text = f"ℹ Sequence too short for positional analysis (mean attention: {mean:.4f})"
        r = _result("Positional Bias", True, mean, None, "info", text, 2)
        return PartReport(2, PART_TITLES[2], True, (), (r,))
    near, far = float(c.at_b0(f"pos_near_{mode}")), float(c.at_b0(f"pos_far_{mode}"))
    note = "" if mode == "legacy" else ", mask-corrected"
    if near > POS_RATIO * far:
        r = _result("Positional Bias", True, ratio, POS_RATIO, "info",
                    f"✓ Local bias detected ({_fmt_ratio(near, far)}{note})", 2)
    else:
        r = _result("Positional Bias", False, ratio, POS_RATIO, "warning",
                    f"⚠️  No local bias ({_fmt_ratio(near, far)}{note})", 2)
    return PartReport(2, PART_TITLES[2], True, (), (r,))


def _part3(c: _Ctx, mode: Mode) -> PartReport:
    if c.get("rep_pairs") is None:
        return PartReport(3, PART_TITLES[3], False,
                          ("  ℹ Not run: token ids not supplied",))
    res = []
    if float(c.at_b0("rep_pairs")) == 0:
        res.append(_result("Token Repetition", True, None, REP_RATIO, "info",
                           "ℹ No repeated tokens", 3))
    else:
        same, diff = float(c.at_b0(f"rep_same_{mode}")), float(c.at_b0(f"rep_diff_{mode}"))
        ratio = same / (diff + RATIO_EPS)
        vals = f"same: {same:.4f}, diff: {diff:.4f}, ratio: {ratio:.2f}x"
        if same > REP_RATIO * diff:
            res.append(_result("Token Repetition", True, ratio, REP_RATIO, "info",
                               f"✓ Repeated tokens attract ({vals})", 3))
        else:
            res.append(_result("Token Repetition", False, ratio, REP_RATIO, "warning",
                               f"⚠️  Repeated tokens do not attract ({vals})", 3))
    if not c.special_ids:
        res.append(_result("Special Tokens", True, None, None, "info",
                           "ℹ No special-token ids supplied", 3))
    elif float(c.at_b0("special_count")) == 0:
        res.append(_result("Special Tokens", True, None, None, "info",
                           "ℹ No special tokens in the sequence", 3))
    else:
        sp, reg = float(c.at_b0(f"special_mean_{mode}")), float(c.at_b0(f"regular_mean_{mode}"))
        ratio = sp / (reg + RATIO_EPS)
        res.append(_result("Special Tokens", True, ratio, None, "info",
                           f"ℹ Special token attention: {sp:.4f} vs regular: {reg:.4f} "
                           f"(ratio: {ratio:.2f}x)", 3))
    return PartReport(3, PART_TITLES[3], True, (), tuple(res))


def _part4(c: _Ctx, mode: Mode) -> PartReport:
    mean_dev = float(np.mean(c.at_b0(f"uniform_dev_mean_{mode}")))
    max_dev = float(np.max(c.at_b0(f"uniform_dev_max_{mode}")))
    dev = f"mean dev: {mean_dev:.4f}, max: {max_dev:.4f}"
    if mean_dev > UNIFORM_DEV:
        r1 = _result("vs Uniform", True, mean_dev, UNIFORM_DEV, "info",
                     f"✓ Significantly non-uniform ({dev})", 4)
    else:
        r1 = _result("vs Uniform", False, mean_dev, UNIFORM_DEV, "critical",
                     f"❌ Nearly uniform ({dev})", 4)
    ent = float(np.mean(c.get(f"entropy_norm_{mode}")))  # the whole batch
    if ent < ENTROPY_SHARP:
        r2 = _result("Entropy", True, ent, ENTROPY_UNIFORM, "info",
                     f"✓ Sharp attention (H/H_max: {ent:.3f})", 4)
    elif ent < ENTROPY_UNIFORM:
        r2 = _result("Entropy", True, ent, ENTROPY_UNIFORM, "warning",
                     f"⚠️  Moderate sharpness (H/H_max: {ent:.3f})", 4)
    else:
        r2 = _result("Entropy", False, ent, ENTROPY_UNIFORM, "critical",
                     f"❌ Nearly uniform (H/H_max: {ent:.3f})", 4)
    return PartReport(4, PART_TITLES[4], True, (), (r1, r2))


def _head_counts(values: np.ndarray) -> tuple[int, int, int]:
    labels = [stats.status(v) for v in values]
    return labels.count("SHARP"), labels.count("MEDIUM"), labels.count("UNIFORM")


def _part5(c: _Ctx, mode: Mode) -> PartReport:
    values = c.at_b0(f"row_std_{mode}")
    n = len(values)
    sharp, medium, uniform = _head_counts(values)
    line = "  Summary: " + ", ".join(
        f"{k}/{n} {what} ({100 * k / n:.0f}%)"
        for k, what in ((sharp, "sharp"), (medium, "medium"), (uniform, "uniform"))
    )
    score = sharp / n + 0.5 * medium / n
    if sharp >= 1:
        r = _result("Per-Head Analysis", True, score, SHARP_THRESHOLD, "info",
                    f"✓ {sharp}/{n} heads sharp", 5)
    elif medium > n // 2:
        r = _result("Per-Head Analysis", True, score, SHARP_THRESHOLD, "warning",
                    f"⚠️  {medium}/{n} heads medium, none sharp", 5)
    else:
        r = _result("Per-Head Analysis", False, score, SHARP_THRESHOLD, "critical",
                    f"❌ {uniform}/{n} heads uniform", 5)
    return PartReport(5, PART_TITLES[5], True, (line,), (r,))


def _part6(c: _Ctx, mode: Mode) -> PartReport:
    qv_all = c.get(f"query_var_{mode}")
    if c.b0 >= qv_all.shape[0]:
        raise ValueError(
            f"batch_index {c.b0} has no query variation; pass query_var_batches > {c.b0}"
        )
    qv = qv_all[c.b0]
    avg, mx = float(np.mean(qv)), float(np.max(qv))
    lines = (f"  Average query variation (L2 between rows): {avg:.4f}",
             f"  Max query variation: {mx:.4f}")
    if avg > QV_PASS:
        r = _result("Query Variation", True, avg, QV_WEAK, "info",
                    f"✓ Different queries attend differently (L2={avg:.4f})", 6)
    elif avg > QV_WEAK:
        r = _result("Query Variation", True, avg, QV_WEAK, "warning",
                    f"⚠️  Weak query variation (L2={avg:.4f})", 6)
    else:
        r = _result("Query Variation", False, avg, QV_WEAK, "critical",
                    f"❌ Queries attend alike (L2={avg:.4f})", 6)
    notes = ["  Positional pattern analysis:"]
    adj = c.at_b0(f"query_adjacent_{mode}")
    dist = c.at_b0(f"query_distant_{mode}")
    k = min(SUB_HEADS, len(qv))
    if adj is None:
        notes.append("    (sequence too short)")
    else:
        a = float(np.mean(adj[:k]))
        notes.append(f"    Adjacent queries (Δpos=1): L2={a:.4f}")
        if dist is None:
            notes.append("    Distant queries (Δpos=10): n/a (N <= 10)")
        else:
            d = float(np.mean(dist[:k]))
            notes.append(f"    Distant queries (Δpos=10): L2={d:.4f}")
            notes.append("    → Positional structure detected (distant > adjacent)"
                         if d > 1.5 * a else "    → Little positional structure")
    return PartReport(6, PART_TITLES[6], True, lines, (r,), tuple(notes))


def _diversity_lines(c: _Ctx, mode: Mode) -> list[str]:
    """Seed 001's [DIVERSITY] lines from whatever inputs were supplied."""
    parts, lines = [], []
    if c.get("mu_dist_mean") is not None:
        parts.append(f"μ_dist: {float(c.at_b0('mu_dist_mean')):.4f}")
    if c.get("phi_std") is not None:
        parts.append(f"φ_std: {float(c.at_b0('phi_std')):.4f}")
    kl = "kl_offdiag" if mode == "legacy" else "kl_valid"
    if c.get(f"{kl}_std") is not None:
        parts.append(f"KL_std: {float(c.at_b0(f'{kl}_std')):.4f}")
        lines.append(f"            KL range: [{float(c.at_b0(f'{kl}_min')):.4f}, "
                     f"{float(c.at_b0(f'{kl}_max')):.4f}] | mean: "
                     f"{float(c.at_b0(f'{kl}_mean')):.4f}")
    if c.get("sigma_mean") is not None:
        lines.append(f"            σ range: [{float(c.at_b0('sigma_min')):.6f}, "
                     f"{float(c.at_b0('sigma_max')):.6f}] | mean: "
                     f"{float(c.at_b0('sigma_mean')):.6f}")
    if not parts and not lines:
        return []
    return ["  [DIVERSITY] " + " | ".join(parts)] + lines


def _part7(c: _Ctx, mode: Mode) -> PartReport:
    div_lines = tuple(_diversity_lines(c, mode))
    if c.get("mu_div") is None:
        return PartReport(7, PART_TITLES[7], False,
                          ("  ℹ Not run: beliefs (μ) not supplied",) + div_lines)
    mu = float(c.at_b0("mu_div"))
    rs = float(np.mean(c.at_b0(f"row_std_{mode}")))
    lines = (f"  Belief diversity (μ_dist): {mu:.4f}",
             f"  Attention diversity (row_std): {rs:.4f}")
    if mu > MU_DIV and rs > ATTN_DIV:
        r = _result("Diversity Correlation", True, mu, MU_DIV, "info",
                    "✓ High belief diversity → sharp attention", 7)
    elif mu > MU_DIV:
        r = _result("Diversity Correlation", False, mu, MU_DIV, "critical",
                    "❌ High belief diversity BUT uniform attention (architectural issue!)", 7)
    else:
        text = f"⚠️  Low belief diversity (μ_dist: {mu:.4f}) → expected uniform attention"
        r = _result("Diversity Correlation", False, mu, MU_DIV, "warning", text, 7)
    return PartReport(7, PART_TITLES[7], True, lines, (r,), div_lines)


def _is_attention_group(name: str) -> bool:
    low = name.lower()
    return "attention" in low or "attn" in low


def _part8(c: _Ctx, mode: Mode) -> PartReport:
    if c.grad_norms is None:
        return PartReport(8, PART_TITLES[8], False,
                          ("  ℹ Not run: no per-group gradient norms supplied",))
    norms = {str(k): float(v) for k, v in c.grad_norms.items()}
    lines = []
    for name, value in norms.items():
        count = "" if c.param_counts is None else f"  ({int(c.param_counts.get(name, 0)):,} params)"
        lines.append(f"  {name:<24s} |∇| = {value:.3e}{count}")
    flowing = sum(1 for v in norms.values() if math.isfinite(v) and v > 0)
    bad = [k for k, v in norms.items() if not math.isfinite(v)]
    zero = [k for k, v in norms.items() if math.isfinite(v) and v == 0]
    attn = [k for k in norms if _is_attention_group(k)]
    if bad:
        r = _result("Gradient Flow", False, flowing, 0.0, "critical",
                    f"❌ Non-finite gradients in: {', '.join(bad)}", 8)
    elif not norms or flowing == 0:
        r = _result("Gradient Flow", False, flowing, 0.0, "critical",
                    "❌ No gradient reaches any parameter group", 8)
    elif zero:
        r = _result("Gradient Flow", False, flowing, 0.0, "warning",
                    f"⚠️  Zero gradient in: {', '.join(zero)}", 8)
    elif not attn:
        text = "⚠️  No attention parameters found (might use KL-only, no learned params)"
        r = _result("Gradient Flow", False, flowing, 0.0, "warning", text, 8)
    else:
        r = _result("Gradient Flow", True, flowing, 0.0, "info",
                    f"✓ Gradients flow to all {len(norms)} parameter groups", 8)
    return PartReport(8, PART_TITLES[8], True, tuple(lines), (r,))


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def _variant_title(name: str) -> str:
    return name.replace("_", " ").strip().capitalize()


def _part9(c: _Ctx, mode: Mode) -> PartReport:
    if c.ablation is None:
        return PartReport(9, PART_TITLES[9], False,
                          ("  ℹ Not run: no ablation losses supplied",))
    losses = {str(k): float(v) for k, v in c.ablation.items()}
    if "learned" not in losses:
        r = _result("Ablation Study", False, None, None, "info",
                    "ℹ Ablation test skipped (no learned-attention loss supplied)", 9)
        return PartReport(9, PART_TITLES[9], True, (), (r,))
    base = losses.pop("learned")
    ppl_l = _ppl(base)
    lines = [f"  Learned attention: loss={base:.4f}, PPL={ppl_l:.2f}"]
    res = []
    for name, loss in losses.items():
        ppl = _ppl(loss)
        title = _variant_title(name)
        lines.append(f"  {title} attention: loss={loss:.4f}, PPL={ppl:.2f}")
        if name == "local":
            delta = ppl - ppl_l
            if ppl < ppl_l:
                res.append(_result("Ablation: Local", False, -delta, 0.0, "warning",
                                   f"⚠️  Local is BETTER by {-delta:.2f} PPL "
                                   "(consider adding positional bias!)", 9))
            else:
                res.append(_result("Ablation: Local", True, delta, 0.0, "info",
                                   f"✓ Learned is better than local by {delta:.2f} PPL", 9))
            continue
        # (ppl - ppl_l) / ppl_l computed from the losses: finite even when both PPLs overflow
        pct = 100.0 * math.expm1(loss - base) if loss - base < 700 else math.inf
        lines.append(f"    → Degradation: {ppl - ppl_l:+.2f} PPL ({pct:+.1f}%)")
        label = f"Ablation: {title}"
        if pct > ABLATION_HELPS:
            text = f"✓ Learned attention helps! ({title.lower()}: {pct:+.1f}% PPL)"
            res.append(_result(label, True, pct, ABLATION_SLIGHT, "info", text, 9))
        elif pct > ABLATION_SLIGHT:
            res.append(_result(label, True, pct, ABLATION_SLIGHT, "warning",
                               f"⚠️  Learned attention helps slightly ({title.lower()}: "
                               f"{pct:+.1f}% PPL)", 9))
        else:
            res.append(_result(label, False, pct, ABLATION_SLIGHT, "critical",
                               f"❌ Learned ≈ {title.lower()} ({pct:+.1f}% PPL): attention not "
                               "helping!", 9))
    return PartReport(9, PART_TITLES[9], True, tuple(lines), tuple(res))


_BUILDERS = (_part1, _part2, _part3, _part4, _part5, _part6, _part7, _part8, _part9)


def _merge(legacy: PartReport, valid: PartReport) -> PartReport:
    """One part for ``both`` modes: legacy verdicts carrying their valid twins."""
    if [r.name for r in legacy.results] != [r.name for r in valid.results]:
        raise AssertionError(f"part {legacy.part}: modes produced different tests")
    results = tuple(dataclasses.replace(a, valid=b) for a, b in zip(legacy.results, valid.results))
    extra = tuple(f"  [valid] {ln.strip()}" for ln in valid.lines if ln not in legacy.lines)
    notes = tuple(f"  [valid] {ln.strip()}" for ln in valid.notes if ln not in legacy.notes)
    return dataclasses.replace(legacy, lines=legacy.lines + extra, results=results,
                               notes=legacy.notes + notes)


# ------------------------------------------------------------------------------------------------
# Summary, conclusion, scenarios
# ------------------------------------------------------------------------------------------------


def summarize(results: Sequence[CheckResult]) -> Summary:
    """The reference's counting: info failures count only in the total."""
    crit = [r for r in results if not r.passed and r.severity == "critical"]
    warn = [r for r in results if not r.passed and r.severity == "warning"]
    return Summary(
        total_tests=len(results),
        passed=sum(r.passed for r in results),
        critical_failures=len(crit),
        warnings=len(warn),
        issues=tuple(f"{r.name}: {r.message}" for r in crit + warn),
    )


def conclude(summary: Summary) -> Conclusion:
    if summary.critical_failures:
        return Conclusion("critical", CRITICAL_HEADLINE)
    if summary.warnings:
        return Conclusion("warning", WARNING_HEADLINE, WARNING_HINTS)
    return Conclusion("ok", "✓ Attention is mathematically correct and learning structure!")


def _merge_summaries(summaries: Sequence[Summary]) -> Summary:
    """Totals over layers; issues are prefixed with their layer, criticals first."""
    crit = [f"layer {k}: {i}" for k, s in enumerate(summaries)
            for i in s.issues[: s.critical_failures]]
    warn = [f"layer {k}: {i}" for k, s in enumerate(summaries)
            for i in s.issues[s.critical_failures:]]
    return Summary(
        total_tests=sum(s.total_tests for s in summaries),
        passed=sum(s.passed for s in summaries),
        critical_failures=len(crit),
        warnings=len(warn),
        issues=tuple(crit + warn),
    )


def match_scenarios(
    row_std: float, query_var: float, mu_div: float | None, labels: Sequence[str],
    ppl: float | None = None,
) -> tuple[Scenario, ...]:
    """Seed 000's interpretation scenarios that match a layer's numbers.

    Args:
        row_std: mean head row_std.
        query_var: average query variation.
        mu_div: belief diversity (None if unknown).
        labels: head labels; "low-ℓ heads dominate" means more than half are ℓ0/ℓ1.
        ppl: learned-attention perplexity if known; the "model works" scenarios require < 1000.
    """
    good = ppl is None or ppl < 1000
    ppl_note = "" if ppl is None else f", PPL={ppl:.1f}"
    ells = [_ell(lab) for lab in labels]
    low = sum(1 for e in ells if e is not None and e < 2)
    low_dominant = low > len(labels) / 2
    out = []
    if good and row_std < 0.05 and query_var > QV_PASS:
        out.append(Scenario(
            1, "Model works, attention looks uniform",
            f"row_std={row_std:.4f} < 0.05, query variation={query_var:.4f} > 0.05{ppl_note}",
            "Attention works subtly: which tokens attend differs (query side) even though each "
            "row spreads its weight nearly evenly over keys.",
            "Nothing to fix; the model uses attention as intended."))
    if good and row_std < 0.03 and query_var < QV_WEAK:
        out.append(Scenario(
            2, "Model works, attention truly uniform",
            f"row_std={row_std:.4f} < 0.03, query variation={query_var:.4f} < 0.02{ppl_note}",
            "Attention is plain uniform mixing; the FFN / belief propagation does the work.",
            "Run the ablation (uniform override) and compare the loss."))
    if mu_div is not None and mu_div > 0.4 and row_std < 0.03 and low_dominant:
        out.append(Scenario(
            3, "Architectural limitation",
            f"μ_dist={mu_div:.4f} > 0.4, row_std={row_std:.4f} < 0.03, {low}/{len(labels)} "
            "heads are ℓ0/ℓ1",
            "Beliefs are diverse but low-dimensional irrep heads cannot turn that into sharp "
            "attention.",
            "Give a larger share of the embedding to tensor heads (ℓ2, ℓ3, ...)."))
    return tuple(out)


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------


def _per_layer(value, n_layers: int, what: str) -> list:
    """A model-wide mapping (same for every layer) or one mapping per layer."""
    if value is None or isinstance(value, Mapping):
        return [value] * n_layers
    value = list(value)
    if len(value) != n_layers:
        raise ValueError(f"{what}: {len(value)} per-layer entries for {n_layers} layers")
    return value


def validate(
    metrics: Mapping[str, np.ndarray],
    *,
    head_labels: Sequence[str] | None = None,
    head_dims: Sequence[int] | None = None,
    mode: MetricsMode = "legacy",
    batch_index: int = 0,
    special_ids: Sequence[int] | None = None,
    grad_norms: Mapping[str, float] | Sequence[Mapping[str, float]] | None = None,
    param_counts: Mapping[str, int] | None = None,
    ablation: Mapping[str, float] | Sequence[Mapping[str, float]] | None = None,
    meta: Mapping[str, object] | None = None,
) -> ValidationReport:
    """Build the 9-part report for every layer from host-side :func:`all_metrics` results.

    Args:
        metrics: ``jax.device_get(all_metrics(...))`` (numpy arrays with a leading ``L`` axis).
        head_labels: one label per head (``head_labels(irreps)[0]``); ``H0, H1, ...`` if None.
        head_dims: head dimensions for the per-irrep table (derived from ℓ when None).
        mode: ``"legacy"``, ``"valid"`` or ``"both"`` (see module docstring).
        batch_index: the analysed batch element (the reference uses 0); it must be below the
            ``query_var_batches`` given to ``all_metrics``.
        special_ids: the special-token ids given to ``all_metrics`` (for the messages only).
        grad_norms: part 8 input: ``{group name: L2 norm of the loss gradient over that
            group's parameters}`` from one ``jax.grad`` of the training loss (e.g. groups
            ``mu_embed``, ``phi_embed``, ``ffn``, ``output``, and ``attention`` if attention has
            parameters). A sequence gives one mapping per layer. Non-finite norms are critical,
            zero norms and a missing attention group are warnings (the latter mirrors the
            reference's "No attention parameters found").
        param_counts: optional ``{group name: parameter count}`` printed next to the norms.
        ablation: part 9 input: ``{variant: mean next-token cross-entropy}`` with ``"learned"``
            (the model as is) plus any of ``"uniform"`` (β = 1/N on all keys, the reference's
            non-causal override), ``"causal_uniform"``, ``"local"`` (window 5: keys i-4..i) or
            other overrides; each non-local variant is judged by its PPL degradation vs
            learned (> 10 % helps, > 2 % helps slightly, else critical). A sequence gives one
            mapping per layer (per-layer overrides).
        meta: free-form run description stored in the report (checkpoint, seq_len, ...).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {tuple(MODES)}, got {mode!r}")
    m = {k: np.asarray(v) for k, v in metrics.items()}
    n_layers, n_batch, n_heads = m["row_std_legacy"].shape
    if not 0 <= batch_index < n_batch:
        raise ValueError(f"batch_index {batch_index} out of range for batch size {n_batch}")
    labels = tuple(head_labels) if head_labels is not None else tuple(f"H{h}" for h in
                                                                      range(n_heads))
    if len(labels) != n_heads:
        raise ValueError(f"{len(labels)} head labels for {n_heads} heads")
    dims = tuple(head_dims) if head_dims is not None else tuple(map(_default_dim, labels))
    grads = _per_layer(grad_norms, n_layers, "grad_norms")
    abls = _per_layer(ablation, n_layers, "ablation")
    modes = MODES[mode]
    specials = None if special_ids is None else tuple(int(s) for s in special_ids)
    layers = []
    for layer in range(n_layers):
        ctx = _Ctx(m, layer, batch_index, labels, specials, grads[layer], param_counts,
                   abls[layer])
        per_mode = {md: [build(ctx, md) for build in _BUILDERS] for md in modes}
        if mode == "both":
            parts = tuple(_merge(a, b) for a, b in zip(per_mode["legacy"], per_mode["valid"]))
        else:
            parts = tuple(per_mode[modes[0]])
        rs_l = ctx.at_b0("row_std_legacy")
        rs_v = ctx.at_b0("row_std_valid")
        heads = tuple(HeadRow(h, labels[h], float(rs_l[h]), float(rs_v[h]))
                      for h in range(n_heads))
        summaries, conclusions, scenarios, irreps = {}, {}, {}, {}
        learned = abls[layer].get("learned") if abls[layer] else None
        ppl = None if learned is None else _ppl(float(learned))
        mu = ctx.at_b0("mu_div")
        for md in modes:
            summaries[md] = summarize(_mode_results(parts, md != modes[0]))
            conclusions[md] = conclude(summaries[md])
            rs = ctx.at_b0(f"row_std_{md}")
            qv = float(np.mean(ctx.get(f"query_var_{md}")[batch_index]))
            scenarios[md] = match_scenarios(float(np.mean(rs)), qv,
                                            None if mu is None else float(mu), labels, ppl)
            irreps[md] = irrep_summary(rs, labels, dims)
        layers.append(LayerReport(layer, parts, heads, summaries, conclusions, scenarios, irreps))
    totals = {md: _merge_summaries([lay.summaries[md] for lay in layers]) for md in modes}
    return ValidationReport(
        metrics_mode=mode,
        layers=tuple(layers),
        summaries=totals,
        conclusions={md: conclude(s) for md, s in totals.items()},
        head_labels=labels,
        head_dims=dims,
        batch_index=batch_index,
        meta=dict(meta or {}),
    )


def run_validation(
    beta,  # [L, B, H, N, N]
    kl=None,  # [L, B, H, N, N]
    mask=None,  # [N, N] bool
    tokens=None,  # [B, N]
    *,
    mu=None,
    phi=None,
    sigma_diag=None,
    special_ids: Sequence[int] = (),
    include_diag: bool = True,
    batch_index: int = 0,
    **kwargs,
) -> ValidationReport:
    """:func:`diagnostics.metrics.all_metrics` + ``device_get`` + :func:`validate`.

    Extra keyword arguments go to :func:`validate`.
    """
    metrics = jax.device_get(
        all_metrics(beta, kl, mask, tokens, mu=mu, phi=phi, sigma_diag=sigma_diag,
                    special_ids=tuple(special_ids), include_diag=include_diag,
                    query_var_batches=batch_index + 1)
    )
    return validate(metrics, batch_index=batch_index, special_ids=tuple(special_ids), **kwargs)


# ------------------------------------------------------------------------------------------------
# κ sweep
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KappaSweep:
    """Per-head row_std vs temperature κ.

    Attributes:
        kappas: the κ values, in order.
        labels: head labels.
        row_std: mode -> ``[n_kappa, L, H]`` row_std of batch element ``batch_index``.
    """

    kappas: tuple[float, ...]
    labels: tuple[str, ...]
    row_std: Mapping[str, np.ndarray]


@functools.partial(jax.jit, static_argnames=("include_diag",))
def _row_std_both(beta, mask, include_diag):  # [..., N, N] -> ([...], [...])
    return (row_std(beta, mask, mode="legacy"),
            row_std(beta, mask, mode="valid", include_diag=include_diag))


def kappa_sweep(
    beta_fn: Callable[[float], object],
    kappas: Sequence[float] = DEFAULT_KAPPAS,
    *,
    mask=None,
    labels: Sequence[str] | None = None,
    batch_index: int = 0,
    include_diag: bool = True,
) -> KappaSweep:
    """Evaluate ``beta_fn(kappa)`` for each κ and record per-head row_std in both modes.

    Args:
        beta_fn: ``kappa -> beta`` with beta ``[B, H, N, N]`` or ``[L, B, H, N, N]`` (e.g. the
            model's forward with its attention temperature overridden). Same shape for every
            κ, so the metric compiles once.
        kappas: temperatures (default: the reference's 0.3, 0.5, 1, 2, 5).
        mask: key-validity mask ``[N, N]`` (causal if None).
        labels: head labels (``H0..`` if None).
        batch_index: batch element to report.
        include_diag: valid-mode diagonal handling (see ``metrics.row_std``).
    """
    out: dict[str, list[np.ndarray]] = {"legacy": [], "valid": []}
    for kappa in kappas:
        beta = np.asarray(beta_fn(float(kappa)))
        beta = beta[None] if beta.ndim == 4 else beta
        n = beta.shape[-1]
        mk = np.tri(n, dtype=bool) if mask is None else np.asarray(mask, bool)
        legacy, valid = jax.device_get(_row_std_both(beta[:, batch_index], mk, include_diag))
        out["legacy"].append(legacy)
        out["valid"].append(valid)
    n_heads = out["legacy"][0].shape[-1]
    labels = tuple(labels) if labels is not None else tuple(f"H{h}" for h in range(n_heads))
    return KappaSweep(tuple(float(k) for k in kappas), labels,
                      {md: np.stack(v) for md, v in out.items()})


def render_kappa_sweep(sweep: KappaSweep, mode: Mode = "legacy", layer: int = -1) -> str:
    """Table: one row per κ, per-head row_std and the mean per irrep label."""
    values = sweep.row_std[mode][:, layer]  # [n_kappa, H]
    groups = list(dict.fromkeys(sweep.labels))
    head = ["κ".rjust(8)] + [f"H{h}({lab})".rjust(10) for h, lab in enumerate(sweep.labels)]
    head += [f"mean {g}".rjust(10) for g in groups]
    lines = [f"κ sweep, row_std ({mode}), layer {layer}", " ".join(head)]
    for k, kappa in enumerate(sweep.kappas):
        row = [f"{kappa:8.4g}"] + [f"{v:10.4f}" for v in values[k]]
        for g in groups:
            idx = [h for h, lab in enumerate(sweep.labels) if lab == g]
            row.append(f"{values[k, idx].mean():10.4f}")
        lines.append(" ".join(row))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Console rendering (seed 000's layout)
# ------------------------------------------------------------------------------------------------


def _render_result(r: CheckResult) -> list[str]:
    lines = [r.message]
    v = r.valid
    if v is not None and (v.message != r.message or v.passed != r.passed):
        lines.append(f"   [valid] {v.message}")
    return lines


def _render_heads(layer: LayerReport, modes: tuple[Mode, ...]) -> list[str]:
    """Seed 000's per-head lines; a ``both`` report adds the valid value after a bar."""
    lines = []
    for h in layer.heads:
        values = {"legacy": h.row_std, "valid": h.row_std_valid}
        shown = [f"row_std={values[modes[0]]:.4f} [{stats.marked(values[modes[0]])}]"]
        if len(modes) == 2:
            shown.append(f"valid={h.row_std_valid:.4f} [{stats.marked(h.row_std_valid)}]")
        lines.append(f"  Head {h.head:2d} ({h.label}): " + " | ".join(shown))
    return lines


def _render_summary(summary: Summary, conclusion: Conclusion, title: str) -> list[str]:
    lines = [RULE, title, RULE, "", f"✓ Passed: {summary.passed}/{summary.total_tests} tests"]
    crit = summary.issues[: summary.critical_failures]  # issues list criticals first
    warn = summary.issues[summary.critical_failures:]
    if crit:
        lines.append(f"❌ Critical issues: {len(crit)}")
        lines += [f"   - {i}" for i in crit]
    if warn:
        lines.append(f"⚠️  Warnings: {len(warn)}")
        lines += [f"   - {i}" for i in warn]
    lines += ["", THIN, "CONCLUSION:", THIN, conclusion.headline]
    if conclusion.hints:
        lines.append("   This could be due to:")
        lines += [f"   - {h}" for h in conclusion.hints]
    return lines


def render_layer(layer: LayerReport, mode: MetricsMode, n_layers: int) -> str:
    """One layer's full report: the nine parts, per-mode summary, conclusion and scenarios."""
    modes = MODES[mode]
    title = f"ATTENTION VALIDATION REPORT — layer {layer.layer} of {n_layers} (metrics: {mode})"
    out = [RULE, title, RULE]
    for part in layer.parts:
        out += ["", f"[{part.part}/9] {part.title}", THIN]
        if part.part == 5:
            out += _render_heads(layer, modes)
            out.append("")
        out += list(part.lines)
        if part.lines and part.results:
            out.append("")
        for r in part.results:
            out += _render_result(r)
        if part.notes:
            out.append("")
            out += list(part.notes)
    for md in modes:
        tag = f"SUMMARY — layer {layer.layer}" + ("" if len(modes) == 1 else f" ({md} metrics)")
        out += [""] + _render_summary(layer.summaries[md], layer.conclusions[md], tag)
        scen = layer.scenarios[md]
        out += ["", "Interpretation:" if scen else "Interpretation: no seed scenario matches."]
        for s in scen:
            out += [f"  Scenario {s.number}: {s.title} ({s.evidence})",
                    f"    {s.interpretation}", f"    Action: {s.action}"]
    irr = layer.irreps
    out += ["", "Per-irrep row_std:",
            render_irrep_table(irr[modes[0]], irr["valid"] if len(modes) == 2 else None)]
    out.append(RULE)
    return "\n".join(out)


def render_console(report: ValidationReport) -> str:
    """The whole report: every layer, then the totals over layers."""
    blocks = [render_layer(lay, report.metrics_mode, len(report.layers)) for lay in report.layers]
    modes = MODES[report.metrics_mode]
    tail = []
    for md in modes:
        title = f"OVERALL ({len(report.layers)} layers" + ("" if len(modes) == 1 else
                                                             f", {md} metrics") + ")"
        tail += _render_summary(report.summaries[md], report.conclusions[md], title) + [""]
    return "\n\n".join(blocks) + "\n\n" + "\n".join(tail + [RULE])


# ------------------------------------------------------------------------------------------------
# CLI on stored attention (e.g. a golden .npz with attn_beta_L{l} / attn_kl_L{l} keys)
# ------------------------------------------------------------------------------------------------


def _layer_stack(data, prefix: str) -> np.ndarray | None:
    keys = sorted((k for k in data.files if re.fullmatch(rf"{prefix}\d+", k)),
                  key=lambda k: int(k[len(prefix):]))
    return np.stack([data[k] for k in keys]) if keys else None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m diagnostics.validate --npz FILE [--metrics both] [--json OUT] [--md OUT]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", required=True,
                        help="arrays: attn_beta_L{l} [B,H,N,N], optional attn_kl_L{l}, tokens, "
                             "mu_final, phi_final, sigma_final")
    parser.add_argument("--metrics", choices=tuple(MODES), default="legacy")
    parser.add_argument("--irreps", default=None, help='e.g. "5x0e+3x1e+1x2e"')
    parser.add_argument("--embed-dim", type=int, default=None)
    parser.add_argument("--special-ids", type=int, nargs="*", default=())
    parser.add_argument("--json", default=None, help="write the JSON report here")
    parser.add_argument("--md", default=None, help="write the markdown report here")
    args = parser.parse_args(argv)

    from diagnostics import report as report_io

    data = np.load(args.npz)
    beta = _layer_stack(data, "attn_beta_L")
    if beta is None:
        parser.error(f"{args.npz} has no attn_beta_L<l> arrays")
    sigma = data["sigma_final"] if "sigma_final" in data.files else None
    sigma_diag = None if sigma is None else np.diagonal(sigma, axis1=-2, axis2=-1)
    labels = dims = None
    if args.irreps:
        labels, dims = head_labels(args.irreps, args.embed_dim)

    def get(key):
        return data[key] if key in data.files else None

    rep = run_validation(
        beta, _layer_stack(data, "attn_kl_L"), None, get("tokens"), mu=get("mu_final"),
        phi=get("phi_final"), sigma_diag=sigma_diag, special_ids=args.special_ids,
        head_labels=labels, head_dims=dims, mode=args.metrics,
        meta={"source": str(args.npz), "irreps": args.irreps},
    )
    print(render_console(rep))
    if args.json:
        report_io.write_json(rep, args.json)
    if args.md:
        report_io.write_markdown(rep, args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
