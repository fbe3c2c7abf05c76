"""The validation report's records: one :class:`ValidationReport` of :class:`LayerReport` s, each
with nine :class:`PartReport` s of :class:`CheckResult` s (JSON form: :mod:`diagnostics.report`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from gaugeformer import stats

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
    uniformity: Mapping[str, Any] | None = None  # diagnostics.attribution's record (None: not run)


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


def _mode_results(parts: Sequence[PartReport], second: bool) -> list[CheckResult]:
    """Results in order: the deciding mode's, or (``second``) the valid twins of a ``both`` run."""
    out = [r for p in parts for r in p.results]
    return [r.valid if second and r.valid is not None else r for r in out]


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
