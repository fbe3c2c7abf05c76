"""The 9-part attention validation report (seed 000), for every layer, from host-side metrics.

:func:`validate` builds a :class:`~diagnostics.schema.ValidationReport` from
:func:`diagnostics.metrics.all_metrics` results fetched to the host (``jax.device_get``): for every
layer the nine checks of :mod:`diagnostics.checks` in each metric mode, the per-head rows, the
per-irrep table, the summaries, conclusions and scenarios.  :func:`run_validation` calls the
jitted metrics first.

Metric modes (``--metrics``): ``legacy`` decides with the reference's bug-compatible numbers,
``valid`` with the causally-valid ones (same thresholds), ``both`` decides with legacy and
carries the valid verdict next to every test (``CheckResult.valid``), with a summary and
conclusion for each mode.

Records: :mod:`diagnostics.schema`; counting and conclusions: :mod:`diagnostics.summary`;
per-irrep table: :mod:`diagnostics.irreps`; console text: :mod:`diagnostics.render`; files:
:mod:`diagnostics.report`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from diagnostics.checks import PARTS, Ctx, perplexity
from diagnostics.irreps import _default_dim, irrep_summary
from diagnostics.metrics import all_metrics
from diagnostics.schema import (
    MODES,
    HeadRow,
    LayerReport,
    MetricsMode,
    PartReport,
    ValidationReport,
    _mode_results,
)
from diagnostics.summary import _merge_summaries, conclude, match_scenarios, summarize

def _merge(legacy: PartReport, valid: PartReport) -> PartReport:
    """One part for ``both`` modes: legacy verdicts carrying their valid twins."""
    if [r.name for r in legacy.results] != [r.name for r in valid.results]:
        raise AssertionError(f"part {legacy.part}: modes produced different tests")
    results = tuple(dataclasses.replace(a, valid=b) for a, b in zip(legacy.results, valid.results))
    extra = tuple(f"  [valid] {ln.strip()}" for ln in valid.lines if ln not in legacy.lines)
    notes = tuple(f"  [valid] {ln.strip()}" for ln in valid.notes if ln not in legacy.notes)
    return dataclasses.replace(legacy, lines=legacy.lines + extra, results=results,
                               notes=legacy.notes + notes)


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
    layer_numbers: Sequence[int] | None = None,
    part_notes: Mapping[int, Sequence[Sequence[str]]] | None = None,
    attribution: Mapping[str, Any] | None = None,
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
        layer_numbers: the model's layer index of each metrics layer (default ``0..L-1``), when
            the metrics hold a subset of the layers.
        part_notes: ``{part: [notes of layer k, ...]}``: lines the model side adds under a part
            (gradient-flow and ablation details), so the report is complete when built.
        attribution: :func:`diagnostics.attribution.attribute` of the same input: each head's
            ``uniformity`` record, and scenarios from the measured causes instead of seed 000's
            scenario 3 guess.
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
    numbers = list(range(n_layers)) if layer_numbers is None else [int(x) for x in layer_numbers]
    if len(numbers) != n_layers:
        raise ValueError(f"{len(numbers)} layer numbers for {n_layers} layers")
    extra = {part: _per_layer(list(notes), n_layers, f"part_notes[{part}]")
             for part, notes in (part_notes or {}).items()}
    layers = []
    for layer in range(n_layers):
        ctx = Ctx(m, layer, batch_index, labels, specials, grads[layer], param_counts,
                   abls[layer])
        per_mode = {md: [build(ctx, md) for build in PARTS] for md in modes}
        if mode == "both":
            parts = tuple(_merge(a, b) for a, b in zip(per_mode["legacy"], per_mode["valid"]))
        else:
            parts = tuple(per_mode[modes[0]])
        parts = tuple(dataclasses.replace(p, notes=p.notes + tuple(extra[p.part][layer]))
                      if p.part in extra else p for p in parts)
        rs_l = ctx.at_b0("row_std_legacy")
        rs_v = ctx.at_b0("row_std_valid")
        attr = _attribution_layer(attribution, numbers[layer])
        heads = tuple(HeadRow(h, labels[h], float(rs_l[h]), float(rs_v[h]),
                              None if attr is None else attr["heads"][h]["uniformity"])
                      for h in range(n_heads))
        summaries, conclusions, scenarios, irreps = {}, {}, {}, {}
        learned = abls[layer].get("learned") if abls[layer] else None
        ppl = None if learned is None else perplexity(float(learned))
        mu = ctx.at_b0("mu_div")
        for md in modes:
            summaries[md] = summarize(_mode_results(parts, md != modes[0]))
            conclusions[md] = conclude(summaries[md])
            rs = ctx.at_b0(f"row_std_{md}")
            qv = float(np.mean(ctx.get(f"query_var_{md}")[batch_index]))
            scenarios[md] = match_scenarios(float(np.mean(rs)), qv,
                                            None if mu is None else float(mu), labels, ppl,
                                            attribution=attr)
            irreps[md] = irrep_summary(rs, labels, dims)
        layers.append(LayerReport(numbers[layer], parts, heads, summaries, conclusions, scenarios,
                                  irreps))
    totals = {md: _merge_summaries([(lay.layer, lay.summaries[md]) for lay in layers])
              for md in modes}
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


def _attribution_layer(attribution: Mapping[str, Any] | None, number: int) -> Mapping | None:
    """The :func:`diagnostics.attribution.attribute` entry of layer ``number`` (None: not run)."""
    if attribution is None:
        return None
    for entry in attribution["layers"]:
        if entry["layer"] == number:
            return entry
    raise ValueError(f"the attribution has no layer {number}")


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
