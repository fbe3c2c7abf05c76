"""The console report in seed 000's layout: every layer's nine parts, summaries, conclusions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gaugeformer import stats

from diagnostics.inputs import ReportInputs
from diagnostics.irreps import render_irrep_table
from diagnostics.schema import MODES, CheckResult, Conclusion, LayerReport, MetricsMode, Mode, \
    Summary, ValidationReport

RULE = "=" * 70


THIN = "-" * 70


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
        if h.uniformity is not None:
            u = h.uniformity
            shown.append(f"{u['cause']} (KL std {u['kl_std']:.2g}, token shift "
                         f"{u['evidence']['token_logit_shift']:.2g})")
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


def render_report(report: ValidationReport, n_layers: int) -> str:
    """Seed 000's console format for every analysed layer, then the totals."""
    modes = MODES[report.metrics_mode]
    blocks = [render_layer(lay, report.metrics_mode, n_layers) for lay in report.layers]
    tail: list[str] = []
    for md in modes:
        title = (f"OVERALL ({len(report.layers)} of {n_layers} layers"
                 + ("" if len(modes) == 1 else f", {md} metrics") + ")")
        tail += _render_summary(report.summaries[md], report.conclusions[md], title) + [""]
    return "\n\n".join(blocks) + "\n\n" + "\n".join(tail + [RULE])


def header(desc: str, cfg: Any, inputs: ReportInputs, layers: Sequence[int], mode: str) -> str:
    """The report's heading: checkpoint, model, input, analysed layers."""
    b, n = inputs.tokens.shape
    src = inputs.sources[0] + (f" (+{b - 1} more)" if b > 1 else "")
    return "\n".join([
        RULE,
        "ATTENTION VALIDATION",
        RULE,
        f"Checkpoint: {desc}",
        f"Model:      {cfg.n_layers} layer(s), {cfg.n_heads} heads "
        f"({', '.join(dict.fromkeys(cfg.head_labels))}), K={cfg.embed_dim}, "
        f"κ={cfg.kappa_beta:.4g}, FFN={cfg.ffn}, self-attention masked: "
        f"{'yes' if cfg.mask_self_attention else 'no'}",
        f"Input:      {src}",
        f"            “{inputs.preview}…”  [{b}×{n} tokens; tokenizer: {inputs.tokenizer}]",
        f"Layers:     {', '.join(map(str, layers))} of {cfg.n_layers}; metrics: {mode}; beliefs "
        "for part 7: those entering each layer's attention",
    ])
