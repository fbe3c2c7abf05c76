"""Attention diagnostics for gaugeformer: jitted metrics, the 9-part validation report, figures.

Public entry points (imported lazily, so ``import diagnostics`` stays cheap)::

    from diagnostics import run_report, all_metrics, validate_metrics
    res = run_report("tests/fixtures/T_A_v256/best_model.pt", text="def f(x): return x",
                     json_path="report.json")

The package, one idea per module:

* the report: :mod:`~diagnostics.run` (``run_report``, end to end) built from
  :mod:`~diagnostics.inputs` (the batch), :mod:`~diagnostics.metrics` (jitted metrics, kernels in
  :mod:`~diagnostics.metric_kernels`), :mod:`~diagnostics.validate` (the report per layer) from
  :mod:`~diagnostics.checks` (the nine checks), :mod:`~diagnostics.gradflow` (part 8),
  :mod:`~diagnostics.ablation` (part 9), :mod:`~diagnostics.kappa` (the κ sweep),
  :mod:`~diagnostics.irreps` (per-irrep table), :mod:`~diagnostics.summary` (counting,
  conclusions, scenarios), :mod:`~diagnostics.schema` (the records), rendered by
  :mod:`~diagnostics.render` (console) and :mod:`~diagnostics.report` (JSON schema, markdown);
* figures: :mod:`~diagnostics.figures`, :mod:`~diagnostics.html`, :mod:`~diagnostics.export`,
  :mod:`~diagnostics.recency`; the training loop's figures: :mod:`~diagnostics.training`;
* the command lines: :mod:`~diagnostics.cli` (sequences and captions: :mod:`~diagnostics.capture`).

Models load with :func:`gaugeformer.load`; attention statistics and masks are
:mod:`gaugeformer.stats`.
"""

import importlib

_EXPORTS = {
    "run_report": "run", "gradient_flow": "gradflow", "ablation_study": "ablation",
    "attention_kappa_sweep": "kappa", "build_inputs": "inputs",
    "all_metrics": "metrics", "METRIC_KEYS": "metrics",
    "run_validation": "validate", "render_console": "render",
    "kappa_sweep": "kappa", "irrep_summary": "irreps", "render_irrep_table": "irreps",
    "head_labels": "irreps", "ValidationReport": "schema",
    "write_json": "report", "read_json": "report", "check_schema": "report",
    "write_markdown": "report", "SCHEMA_VERSION": "report",
    "capture_attention": "capture",
}
__all__ = [
    "METRIC_KEYS", "SCHEMA_VERSION", "ValidationReport", "ablation_study", "all_metrics",
    "attention_kappa_sweep", "build_inputs", "capture_attention", "check_schema", "gradient_flow",
    "head_labels", "irrep_summary", "kappa_sweep", "read_json",
    "render_console", "render_irrep_table", "run_report", "run_validation",
    "validate_metrics", "write_json", "write_markdown",
]


def __getattr__(name: str):
    if name == "validate_metrics":
        return importlib.import_module("diagnostics.validate").validate
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"diagnostics.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'diagnostics' has no attribute {name!r}")
