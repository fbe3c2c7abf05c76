"""The nine checks of the attention validation report (seed 000), one builder per part.

The decision logic of the reference validator (ref-diagnostics §3), reimplemented on host-side
:func:`diagnostics.metrics.all_metrics` results (numpy arrays, a leading ``L`` axis); each builder
turns one layer's metrics (:class:`Ctx`) into a :class:`~diagnostics.schema.PartReport` for one
metric mode, and :func:`diagnostics.validate.validate` assembles them.

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
   parameter names; see :func:`diagnostics.validate.validate` for what the model side supplies).
9. ``Ablation: <variant>`` from precomputed losses per attention override.

A metric mode decides with the reference's bug-compatible numbers (``legacy``) or the
causally-valid ones (``valid``), with the same thresholds.  Batch handling follows the reference:
batch element ``b0`` (0) for every test except normalisation, entropy and KL properties, which use
the whole batch.  Status labels and the SHARP/MEDIUM boundaries are :mod:`gaugeformer.stats`'.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from gaugeformer import stats
from gaugeformer.stats import MEDIUM_THRESHOLD, SHARP_THRESHOLD

from diagnostics.schema import PART_TITLES, CheckResult, Mode, PartReport, Severity
from diagnostics.summary import QV_PASS, QV_WEAK

# Thresholds of the reference validator (ref-diagnostics §3.3-§3.11).
NORM_ATOL, NORM_RTOL = 1e-4, 1e-5
CAUSAL_TOL = 1e-6
FUTURE_MASS_TOL = 1e-4  # valid mode only: more future mass than this per row is a leak
KL_NEG_TOL, KL_DIAG_TOL = -1e-5, 0.1
POS_RATIO = 1.1
REP_RATIO = 1.2
UNIFORM_DEV = 0.05
ENTROPY_SHARP, ENTROPY_UNIFORM = 0.5, 0.8
MU_DIV = 0.3  # part 7: belief diversity; attention counts as diverse above MEDIUM_THRESHOLD
ABLATION_HELPS, ABLATION_SLIGHT = 10.0, 2.0  # percent PPL degradation
RATIO_EPS = 1e-10
SUB_HEADS = 3  # heads in the query sub-analysis


@dataclasses.dataclass(frozen=True)
class Ctx:
    """One layer's metrics and the model-side inputs of parts 8 and 9."""

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


def _part1(c: Ctx, mode: Mode) -> PartReport:
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


def _part2(c: Ctx, mode: Mode) -> PartReport:
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


def _part3(c: Ctx, mode: Mode) -> PartReport:
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


def _part4(c: Ctx, mode: Mode) -> PartReport:
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
    sharp, medium, uniform = (labels.count(label) for label in stats.LABELS)
    return sharp, medium, uniform


def _part5(c: Ctx, mode: Mode) -> PartReport:
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


def _part6(c: Ctx, mode: Mode) -> PartReport:
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


def _diversity_lines(c: Ctx, mode: Mode) -> list[str]:
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


def _part7(c: Ctx, mode: Mode) -> PartReport:
    div_lines = tuple(_diversity_lines(c, mode))
    if c.get("mu_div") is None:
        return PartReport(7, PART_TITLES[7], False,
                          ("  ℹ Not run: beliefs (μ) not supplied",) + div_lines)
    mu = float(c.at_b0("mu_div"))
    rs = float(np.mean(c.at_b0(f"row_std_{mode}")))
    lines = (f"  Belief diversity (μ_dist): {mu:.4f}",
             f"  Attention diversity (row_std): {rs:.4f}")
    if mu > MU_DIV and rs > MEDIUM_THRESHOLD:
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


def _part8(c: Ctx, mode: Mode) -> PartReport:
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


def perplexity(loss: float) -> float:
    """Perplexity of a mean cross-entropy (inf past exp(700))."""
    return math.exp(loss) if loss < 700 else math.inf


def _variant_title(name: str) -> str:
    return name.replace("_", " ").strip().capitalize()


def _part9(c: Ctx, mode: Mode) -> PartReport:
    if c.ablation is None:
        return PartReport(9, PART_TITLES[9], False,
                          ("  ℹ Not run: no ablation losses supplied",))
    losses = {str(k): float(v) for k, v in c.ablation.items()}
    if "learned" not in losses:
        r = _result("Ablation Study", False, None, None, "info",
                    "ℹ Ablation test skipped (no learned-attention loss supplied)", 9)
        return PartReport(9, PART_TITLES[9], True, (), (r,))
    base = losses.pop("learned")
    ppl_l = perplexity(base)
    lines = [f"  Learned attention: loss={base:.4f}, PPL={ppl_l:.2f}"]
    res = []
    for name, loss in losses.items():
        ppl = perplexity(loss)
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


PARTS = (_part1, _part2, _part3, _part4, _part5, _part6, _part7, _part8, _part9)
