"""Counting a layer's verdicts, the conclusion, and seed 000's interpretation scenarios."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gaugeformer.stats import MEDIUM_THRESHOLD

from diagnostics.attribution import scenarios
from diagnostics.irreps import _ell
from diagnostics.schema import CheckResult, Conclusion, Scenario, Summary

QV_PASS, QV_WEAK = 0.05, 0.02  # query variation: pass / pass with a warning (ref §3.8)
TRULY_UNIFORM = 0.03  # seed 000's scenarios 2-3: row_std below this is uniform mixing
CRITICAL_HEADLINE = "❌ Critical issues detected! Attention may not be working correctly."


WARNING_HEADLINE = "⚠️  Attention is correct but may not be learning meaningful patterns."


WARNING_HINTS = (
    "Architectural limitations (low-dimensional heads)",
    "Insufficient training",
    "Hyperparameter issues (temperature, learning rate)",
)


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


def _merge_summaries(summaries: Sequence[tuple[int, Summary]]) -> Summary:
    """Totals over ``(layer number, summary)`` pairs; issues are prefixed with their layer,
    criticals first."""
    crit = [f"layer {k}: {i}" for k, s in summaries for i in s.issues[: s.critical_failures]]
    warn = [f"layer {k}: {i}" for k, s in summaries for i in s.issues[s.critical_failures:]]
    return Summary(
        total_tests=sum(s.total_tests for _, s in summaries),
        passed=sum(s.passed for _, s in summaries),
        critical_failures=len(crit),
        warnings=len(warn),
        issues=tuple(crit + warn),
    )


def match_scenarios(
    row_std: float, query_var: float, mu_div: float | None, labels: Sequence[str],
    ppl: float | None = None, attribution: Mapping[str, Any] | None = None,
) -> tuple[Scenario, ...]:
    """Seed 000's interpretation scenarios that match a layer's numbers.

    Args:
        row_std: mean head row_std.
        query_var: average query variation.
        mu_div: belief diversity (None if unknown).
        labels: head labels; "low-ℓ heads dominate" means more than half are ℓ0/ℓ1.
        ppl: learned-attention perplexity if known; the "model works" scenarios require < 1000.
        attribution: this layer's entry of :func:`diagnostics.attribution.attribute`.  When given,
            scenario 3 (diverse beliefs, low-ℓ heads "cannot" sharpen: a guess from μ_dist and head
            dimensions) is replaced by scenarios 4-6, one per measured cause among the uniform heads.
    """
    good = ppl is None or ppl < 1000
    ppl_note = "" if ppl is None else f", PPL={ppl:.1f}"
    ells = [_ell(lab) for lab in labels]
    low = sum(1 for e in ells if e is not None and e < 2)
    low_dominant = low > len(labels) / 2
    out = []
    if good and row_std < MEDIUM_THRESHOLD and query_var > QV_PASS:
        out.append(Scenario(
            1, "Model works, attention looks uniform",
            f"row_std={row_std:.4f} < {MEDIUM_THRESHOLD:.2f}, query variation={query_var:.4f} > "
            f"{QV_PASS:.2f}{ppl_note}",
            "Attention works subtly: which tokens attend differs (query side) even though each "
            "row spreads its weight nearly evenly over keys.",
            "Nothing to fix; the model uses attention as intended."))
    if good and row_std < TRULY_UNIFORM and query_var < QV_WEAK:
        out.append(Scenario(
            2, "Model works, attention truly uniform",
            f"row_std={row_std:.4f} < {TRULY_UNIFORM:.2f}, query variation={query_var:.4f} < "
            f"{QV_WEAK:.2f}{ppl_note}",
            "Attention is plain uniform mixing; the FFN / belief propagation does the work.",
            "Run the ablation (uniform override) and compare the loss."))
    if attribution is not None:
        return tuple(out) + _measured_scenarios(attribution)
    if mu_div is not None and mu_div > 0.4 and row_std < TRULY_UNIFORM and low_dominant:
        out.append(Scenario(
            3, "Architectural limitation",
            f"μ_dist={mu_div:.4f} > 0.4, row_std={row_std:.4f} < {TRULY_UNIFORM:.2f}, "
            f"{low}/{len(labels)} "
            "heads are ℓ0/ℓ1",
            "Beliefs are diverse but low-dimensional irrep heads cannot turn that into sharp "
            "attention.",
            "Give a larger share of the embedding to tensor heads (ℓ2, ℓ3, ...)."))
    return tuple(out)


_CAUSE_NUMBER = {"token_independent": 4, "kl_below_temperature": 5, "other": 6}


def _measured_scenarios(layer_entry: Mapping[str, Any]) -> tuple[Scenario, ...]:
    """Scenarios 4-6 from the attribution's causes (:func:`diagnostics.attribution.scenarios`)."""
    out = []
    for sc in scenarios(layer_entry):
        heads = [hd for hd in layer_entry["heads"] if hd["head"] in sc["heads"]]
        shift = max(hd["uniformity"]["evidence"]["token_logit_shift"] for hd in heads)
        logit_std = max(hd["uniformity"]["evidence"]["logit_std"] for hd in heads)
        names = ", ".join(f"h{h} {lab}" for h, lab in zip(sc["heads"], sc["labels"]))
        evidence = (f"{names}: token shift ≤ {shift:.2g} nats, within-row logit std ≤ "
                    f"{logit_std:.2g}")
        out.append(Scenario(_CAUSE_NUMBER[sc["cause"]], sc["title"], evidence, sc["explanation"],
                            sc["suggestion"]))
    return tuple(out)
