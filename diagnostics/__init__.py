"""Attention diagnostics for gaugeformer: jitted metrics, the 9-part validation report, figures.

Public entry points (imported lazily, so ``import diagnostics`` stays cheap)::

    from diagnostics import run_report, all_metrics, validate_metrics
    res = run_report("tests/fixtures/T_A_v256/best_model.pt", text="def f(x): return x",
                     json_path="report.json")

``run_report`` (:mod:`diagnostics.run`) is the whole report; ``all_metrics`` / ``row_std``
(:mod:`diagnostics.metrics`) the jitted metrics; ``validate`` / ``run_validation`` /
``render_console`` / ``kappa_sweep`` / ``irrep_summary`` (:mod:`diagnostics.validate`) the report
logic on precomputed metrics (``validate_metrics`` is ``diagnostics.validate.validate``: the name
``diagnostics.validate`` stays the module); ``write_json`` / ``read_json`` / ``check_schema`` /
``write_markdown`` (:mod:`diagnostics.report`) the files; ``capture_attention``
(:mod:`diagnostics.capture`) the model side (models load with :func:`gaugeformer.load`).
"""

import importlib

_EXPORTS = {
    "run_report": "run", "gradient_flow": "run", "ablation_study": "run",
    "attention_kappa_sweep": "run", "build_inputs": "run",
    "all_metrics": "metrics", "row_std": "metrics", "METRIC_KEYS": "metrics",
    "run_validation": "validate", "render_console": "validate",
    "kappa_sweep": "validate", "irrep_summary": "validate", "render_irrep_table": "validate",
    "head_labels": "validate", "ValidationReport": "validate",
    "write_json": "report", "read_json": "report", "check_schema": "report",
    "write_markdown": "report", "SCHEMA_VERSION": "report",
    "capture_attention": "capture",
}
__all__ = [
    "METRIC_KEYS", "SCHEMA_VERSION", "ValidationReport", "ablation_study", "all_metrics",
    "attention_kappa_sweep", "build_inputs", "capture_attention", "check_schema", "gradient_flow",
    "head_labels", "irrep_summary", "kappa_sweep", "read_json",
    "render_console", "render_irrep_table", "row_std", "run_report", "run_validation",
    "validate_metrics", "write_json", "write_markdown",
]


def __getattr__(name: str):
    if name == "validate_metrics":
        return importlib.import_module("diagnostics.validate").validate
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"diagnostics.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'diagnostics' has no attribute {name!r}")
