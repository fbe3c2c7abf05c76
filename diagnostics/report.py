"""JSON / markdown writers and a JSON reader for :class:`diagnostics.schema.ValidationReport`.

JSON schema, version 1
======================

Top level object::

    {
      "schema_version": 1,
      "kind": "gaugeformer.attention_validation",
      "metrics_mode": "legacy" | "valid" | "both",
      "modes": [MODE, ...],           # ["legacy"], ["valid"] or ["legacy", "valid"];
                                      # the first mode decides passed/severity of every test
      "batch_index": int,             # the analysed batch element
      "head_labels": [str, ...],      # one per head, e.g. "ℓ0", "ℓ2", "ℓ0_pad", "H3"
      "head_dims": [int, ...],        # one per head
      "meta": {str: JSON},            # free-form run description (checkpoint, seq_len, ...)
      "layers": [LAYER, ...],         # one per attention layer, in order
      "summary": {MODE: SUMMARY},     # totals over all layers
      "conclusion": {MODE: CONCLUSION}
    }

``LAYER``::

    {
      "layer": int,
      "parts": [{"part": 1..9, "title": str, "ran": bool,
                 "lines": [str], "notes": [str]}],     # all nine, in order; "ran": false
                                                       # means "not run" (inputs missing)
      "tests": [TEST, ...],                            # every test of the layer, in order
      "heads": [{"head": int, "label": str, "row_std": float, "row_std_valid": float,
                 "uniformity": UNIFORMITY}],                # "uniformity" when attribution ran
      "summary": {MODE: SUMMARY},
      "conclusion": {MODE: CONCLUSION},
      "scenarios": {MODE: [SCENARIO]},                 # matching seed-000 scenarios (may be [])
      "irreps": {MODE: [IRREP]}                        # per-irrep row_std table (seed 001)
    }

``TEST``: ``{"part": int, "name": str, "passed": bool, "score": float | null,
"threshold": float | null, "severity": "info" | "warning" | "critical", "message": str,
"valid": VERDICT | null}``; ``VERDICT`` has the same keys minus ``part`` and ``valid`` and holds
the second mode's verdict of a ``both`` report (``null`` otherwise).

``SUMMARY``: ``{"total_tests": int, "passed": int, "critical_failures": int, "warnings": int,
"issues": [str]}`` (issues: "name: message" of critical then warning failures).

``CONCLUSION``: ``{"status": "ok" | "warning" | "critical", "headline": str, "hints": [str]}``.

``SCENARIO``: ``{"number": 1 | 2 | 3 | 4 | 5 | 6, "title": str, "evidence": str, "interpretation": str,
"action": str}``. 1-3 are seed 000's scenarios; when the per-head attribution ran, scenario 3 (a guess
from μ diversity and head dimensions) is replaced by what the attribution measured: 4 token-independent
heads, 5 KL spread below the temperature, 6 uniform for another reason.

``UNIFORMITY`` (:mod:`diagnostics.attribution`): ``{"cause": "token_independent" |
"kl_below_temperature" | "not_uniform" | "other", "belief_spread": {...}, "kl_mean": float,
"kl_std": float, "terms": {"trace" | "mahalanobis" | "logdet": {"mean", "row_std"}}, "sources":
{"all", "token_frames", "positional_frames", "positional_mu", "without_earlier_ffn"}, "evidence":
{...}}``.

``IRREP``: ``{"label": str, "kind": str, "dim": int, "heads": int, "row_std_min": float,
"row_std_max": float, "row_std_mean": float, "status": "SHARP" | "MEDIUM" | "UNIFORM"}``.

Non-finite numbers are written as ``null``; the file is strict JSON (UTF-8, no NaN/Infinity).
A change that removes or renames a key, or changes a value's meaning, bumps
``schema_version``; adding keys does not.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from gaugeformer import stats

from diagnostics.irreps import render_irrep_table
from diagnostics.schema import (
    CheckResult,
    Conclusion,
    HeadRow,
    IrrepRow,
    LayerReport,
    PartReport,
    Scenario,
    Summary,
    ValidationReport,
)

SCHEMA_VERSION = 1
KIND = "gaugeformer.attention_validation"
SEVERITIES = ("info", "warning", "critical")
STATUSES = ("ok", "warning", "critical")


class SchemaError(ValueError):
    """A document does not follow the report schema."""


# ------------------------------------------------------------------------------------------------
# dataclasses <-> JSON-ready dicts
# ------------------------------------------------------------------------------------------------


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _verdict(r: CheckResult) -> dict:
    return {
        "name": r.name,
        "passed": r.passed,
        "score": _num(r.score),
        "threshold": _num(r.threshold),
        "severity": r.severity,
        "message": r.message,
    }


def _test(r: CheckResult) -> dict:
    return {"part": r.part, **_verdict(r), "valid": None if r.valid is None else _verdict(r.valid)}


def _summary(s: Summary) -> dict:
    return {
        "total_tests": s.total_tests,
        "passed": s.passed,
        "critical_failures": s.critical_failures,
        "warnings": s.warnings,
        "issues": list(s.issues),
    }


def _conclusion(c: Conclusion) -> dict:
    return {"status": c.status, "headline": c.headline, "hints": list(c.hints)}


def _irrep(r: IrrepRow) -> dict:
    return {
        "label": r.label, "kind": r.kind, "dim": r.dim, "heads": r.heads,
        "row_std_min": r.row_std_min, "row_std_max": r.row_std_max,
        "row_std_mean": r.row_std_mean, "status": r.status,
    }


def _layer(lay: LayerReport) -> dict:
    return {
        "layer": lay.layer,
        "parts": [
            {"part": p.part, "title": p.title, "ran": p.ran, "lines": list(p.lines),
             "notes": list(p.notes)}
            for p in lay.parts
        ],
        "tests": [_test(r) for p in lay.parts for r in p.results],
        "heads": [
            {"head": h.head, "label": h.label, "row_std": h.row_std,
             "row_std_valid": h.row_std_valid,
             **({} if h.uniformity is None else {"uniformity": h.uniformity})}
            for h in lay.heads
        ],
        "summary": {m: _summary(s) for m, s in lay.summaries.items()},
        "conclusion": {m: _conclusion(c) for m, c in lay.conclusions.items()},
        "scenarios": {m: [dataclasses.asdict(s) for s in sc] for m, sc in lay.scenarios.items()},
        "irreps": {m: [_irrep(r) for r in rows] for m, rows in lay.irreps.items()},
    }


def report_to_dict(report: ValidationReport) -> dict:
    """The report as a schema-v1 JSON-ready dict."""
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "metrics_mode": report.metrics_mode,
        "modes": list(report.summaries),
        "batch_index": report.batch_index,
        "head_labels": list(report.head_labels),
        "head_dims": list(report.head_dims),
        "meta": dict(report.meta),
        "layers": [_layer(lay) for lay in report.layers],
        "summary": {m: _summary(s) for m, s in report.summaries.items()},
        "conclusion": {m: _conclusion(c) for m, c in report.conclusions.items()},
    }


def _check_result(d: Mapping, part: int, valid: CheckResult | None) -> CheckResult:
    return CheckResult(d["name"], d["passed"], d["score"], d["threshold"], d["severity"],
                       d["message"], part, valid)


def report_from_dict(doc: Mapping) -> ValidationReport:
    """Inverse of :func:`report_to_dict` (validates the schema first)."""
    check_schema(doc)
    layers = []
    for lay in doc["layers"]:
        tests = [
            _check_result(t, t["part"], None if t["valid"] is None
                          else _check_result(t["valid"], t["part"], None))
            for t in lay["tests"]
        ]
        parts = tuple(
            PartReport(p["part"], p["title"], p["ran"], tuple(p["lines"]),
                       tuple(t for t in tests if t.part == p["part"]), tuple(p["notes"]))
            for p in lay["parts"]
        )
        layers.append(LayerReport(
            layer=lay["layer"],
            parts=parts,
            heads=tuple(HeadRow(h["head"], h["label"], h["row_std"], h["row_std_valid"],
                                h.get("uniformity")) for h in lay["heads"]),
            summaries={m: _summary_from(s) for m, s in lay["summary"].items()},
            conclusions={m: _conclusion_from(c) for m, c in lay["conclusion"].items()},
            scenarios={m: tuple(Scenario(**s) for s in sc) for m, sc in lay["scenarios"].items()},
            irreps={m: tuple(IrrepRow(**{k: v for k, v in r.items() if k != "status"})
                             for r in rows) for m, rows in lay["irreps"].items()},
        ))
    return ValidationReport(
        metrics_mode=doc["metrics_mode"],
        layers=tuple(layers),
        summaries={m: _summary_from(s) for m, s in doc["summary"].items()},
        conclusions={m: _conclusion_from(c) for m, c in doc["conclusion"].items()},
        head_labels=tuple(doc["head_labels"]),
        head_dims=tuple(doc["head_dims"]),
        batch_index=doc["batch_index"],
        meta=dict(doc["meta"]),
    )


def _summary_from(d: Mapping) -> Summary:
    return Summary(d["total_tests"], d["passed"], d["critical_failures"], d["warnings"],
                   tuple(d["issues"]))


def _conclusion_from(d: Mapping) -> Conclusion:
    return Conclusion(d["status"], d["headline"], tuple(d["hints"]))


# ------------------------------------------------------------------------------------------------
# Schema check
# ------------------------------------------------------------------------------------------------


def _need(obj, key: str, types, where: str):
    if not isinstance(obj, Mapping) or key not in obj:
        raise SchemaError(f"{where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
        raise SchemaError(f"{where}.{key}: expected {types}, got {type(value).__name__}")
    return value


def _tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _check_verdict(t, where: str, with_part: bool) -> None:
    if with_part:
        part = _need(t, "part", int, where)
        if not 1 <= part <= 9:
            raise SchemaError(f"{where}.part: {part} not in 1..9")
    _need(t, "name", str, where)
    _need(t, "passed", bool, where)
    _need(t, "score", (int, float, type(None)), where)
    _need(t, "threshold", (int, float, type(None)), where)
    if _need(t, "severity", str, where) not in SEVERITIES:
        raise SchemaError(f"{where}.severity: {t['severity']!r} not in {SEVERITIES}")
    _need(t, "message", str, where)


def _check_by_mode(obj, key: str, modes: list, where: str, check) -> None:
    by_mode = _need(obj, key, Mapping, where)
    if list(by_mode) != modes:
        raise SchemaError(f"{where}.{key}: modes {list(by_mode)} != {modes}")
    for m, value in by_mode.items():
        check(value, f"{where}.{key}.{m}")


def _check_list(value, where: str) -> None:
    if not isinstance(value, list):
        raise SchemaError(f"{where}: expected a list, got {type(value).__name__}")


def _check_summary(s, where: str) -> None:
    for k in ("total_tests", "passed", "critical_failures", "warnings"):
        _need(s, k, int, where)
    _need(s, "issues", list, where)


def _check_conclusion(c, where: str) -> None:
    if _need(c, "status", str, where) not in STATUSES:
        raise SchemaError(f"{where}.status: {c['status']!r} not in {STATUSES}")
    _need(c, "headline", str, where)
    _need(c, "hints", list, where)


def check_schema(doc: Mapping) -> None:
    """Raise :class:`SchemaError` unless ``doc`` is a schema-v1 report."""
    version = _need(doc, "schema_version", int, "report")
    if version != SCHEMA_VERSION:
        raise SchemaError(f"report: schema_version {version}, this reader knows {SCHEMA_VERSION}")
    if _need(doc, "kind", str, "report") != KIND:
        raise SchemaError(f"report.kind: {doc['kind']!r} != {KIND!r}")
    mode = _need(doc, "metrics_mode", str, "report")
    expect = {"legacy": ["legacy"], "valid": ["valid"], "both": ["legacy", "valid"]}
    if mode not in expect:
        raise SchemaError(f"report.metrics_mode: {mode!r}")
    modes = _need(doc, "modes", list, "report")
    if modes != expect[mode]:
        raise SchemaError(f"report.modes: {modes} for metrics_mode {mode!r}")
    _need(doc, "batch_index", int, "report")
    labels = _need(doc, "head_labels", list, "report")
    if len(_need(doc, "head_dims", list, "report")) != len(labels):
        raise SchemaError("report: head_dims and head_labels differ in length")
    _need(doc, "meta", Mapping, "report")
    for i, lay in enumerate(_need(doc, "layers", list, "report")):
        where = f"layers[{i}]"
        _need(lay, "layer", int, where)
        parts = _need(lay, "parts", list, where)
        if [p.get("part") for p in parts] != list(range(1, 10)):
            raise SchemaError(f"{where}.parts: expected parts 1..9 in order")
        for p in parts:
            _need(p, "title", str, f"{where}.parts")
            _need(p, "ran", bool, f"{where}.parts")
            _need(p, "lines", list, f"{where}.parts")
            _need(p, "notes", list, f"{where}.parts")
        for j, t in enumerate(_need(lay, "tests", list, where)):
            _check_verdict(t, f"{where}.tests[{j}]", True)
            valid = _need(t, "valid", (Mapping, type(None)), f"{where}.tests[{j}]")
            if valid is not None:
                _check_verdict(valid, f"{where}.tests[{j}].valid", False)
        heads = _need(lay, "heads", list, where)
        if len(heads) != len(labels):
            raise SchemaError(f"{where}.heads: {len(heads)} heads for {len(labels)} labels")
        _check_by_mode(lay, "summary", modes, where, _check_summary)
        _check_by_mode(lay, "conclusion", modes, where, _check_conclusion)
        _check_by_mode(lay, "scenarios", modes, where, _check_list)
        _check_by_mode(lay, "irreps", modes, where, _check_list)
    _check_by_mode(doc, "summary", modes, "report", _check_summary)
    _check_by_mode(doc, "conclusion", modes, "report", _check_conclusion)


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


def write_json(report: ValidationReport, path: str | Path) -> Path:
    """Write ``report`` as schema-v1 JSON (strict: no NaN/Infinity). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report_to_dict(report), ensure_ascii=False, indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def read_json(path: str | Path) -> ValidationReport:
    """Read and schema-check a JSON report written by :func:`write_json`."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    return report_from_dict(doc)


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.4g}"


def _status(r: CheckResult) -> str:
    if r.passed:
        return "pass (warning)" if r.severity == "warning" else "pass"
    return f"FAIL ({r.severity})"


def to_markdown(report: ValidationReport) -> str:
    """A markdown rendering: overall table, then per layer tests, heads, irreps, summary."""
    modes = list(report.summaries)
    both = len(modes) == 2
    out = ["# Attention validation report", ""]
    # mapping-valued meta (gradient flow, ablation, κ sweep details) is rendered as sections
    meta = ", ".join(f"{k}: {v}" for k, v in report.meta.items() if not isinstance(v, Mapping))
    out.append(f"metrics: **{report.metrics_mode}** · layers: {len(report.layers)} · "
               f"batch element: {report.batch_index}" + (f" · {meta}" if meta else ""))
    out += ["", "## Overall", "", "| Mode | Passed | Critical | Warnings | Conclusion |",
            "|---|---|---|---|---|"]
    for m in modes:
        s, c = report.summaries[m], report.conclusions[m]
        out.append(f"| {m} | {s.passed}/{s.total_tests} | {s.critical_failures} | {s.warnings} "
                   f"| {_cell(c.headline)} |")
    for lay in report.layers:
        out += ["", f"## Layer {lay.layer}", ""]
        head = "| Part | Test | Result | Score | Threshold | Message |"
        rule = "|---|---|---|---|---|---|"
        if both:
            head += " Valid result | Valid score | Valid message |"
            rule += "---|---|---|"
        out += [head, rule]
        for p in lay.parts:
            if not p.ran:
                out.append(f"| {p.part} | {_cell(p.title)} | not run | | | "
                           f"{_cell(' '.join(x.strip() for x in p.lines))} |" +
                           (" | | |" if both else ""))
            for r in p.results:
                row = (f"| {p.part} | {_cell(r.name)} | {_status(r)} | {_fmt(r.score)} | "
                       f"{_fmt(r.threshold)} | {_cell(r.message)} |")
                if both:
                    v = r.valid or r
                    row += f" {_status(v)} | {_fmt(v.score)} | {_cell(v.message)} |"
                out.append(row)
        out += ["", "### Per-head row_std", "",
                "| Head | Label | row_std | status | row_std (valid) | status (valid) |",
                "|---|---|---|---|---|---|"]
        out += [f"| {h.head} | {h.label} | {h.row_std:.4f} | {stats.status(h.row_std)} | "
                f"{h.row_std_valid:.4f} | {stats.status(h.row_std_valid)} |" for h in lay.heads]
        out += ["", "### Per-irrep row_std", "",
                render_irrep_table(lay.irreps[modes[0]], lay.irreps["valid"] if both else None)]
        for m in modes:
            s, c = lay.summaries[m], lay.conclusions[m]
            counts = (f"Passed {s.passed}/{s.total_tests}; critical failures: "
                      f"{s.critical_failures}; warnings: {s.warnings}.")
            out += ["", f"### Summary ({m})", "", counts, ""]
            out += [f"- {_cell(i)}" for i in s.issues]
            out += ["", f"**{c.headline}**"] + [f"- {h}" for h in c.hints]
            for sc in lay.scenarios[m]:
                out += ["", (f"*Scenario {sc.number}: {sc.title}* ({sc.evidence}). "
                             f"{sc.interpretation} Action: {sc.action}")]
    return "\n".join(out) + "\n"


def write_markdown(report: ValidationReport, path: str | Path, sections: Sequence[str] = ()
                   ) -> Path:
    """Write :func:`to_markdown` and the given extra ``sections`` (markdown text, e.g. the
    gradient-flow and ablation tables) to ``path`` in one write. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_markdown(report) + "".join(sections), encoding="utf-8")
    return path


__all__ = [
    "SCHEMA_VERSION",
    "SchemaError",
    "check_schema",
    "read_json",
    "report_from_dict",
    "report_to_dict",
    "to_markdown",
    "write_json",
    "write_markdown",
]
