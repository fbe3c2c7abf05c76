"""The attention validation report end to end: checkpoint -> inputs -> every layer -> report files.

:func:`run_report` is what ``scripts/validate_attention.py`` calls. It

1. loads a model (:func:`gaugeformer.load`: reference ``.pt``, converted or training checkpoint
   directory; or :func:`gaugeformer.loading.random_model` from ``--config``);
2. builds the input batch ``[B, N]`` (text, validation windows of a dataset, random ids, or
   explicit ids) and its next-token targets ``tokens[:, 1:]``;
3. runs one jitted inference forward that records β, KL and the beliefs entering every layer's
   attention (μ, φ, diag Σ) and the logits;
4. computes every metric on every analysed layer in one compiled call
   (:func:`diagnostics.metrics.all_metrics`);
5. measures **gradient flow** (:func:`gradient_flow`): one ``jax.grad`` of the free-energy
   training loss gives the L2 norm per parameter group; a second one with every layer's attention
   β passed back in as a constant (``beta_override`` = the same values, no gradient) shows which
   groups receive gradient *through* attention. The attention itself has no parameters
   (β = softmax(−KL/κ) of the beliefs); the report says so;
6. runs the **ablation** (:func:`ablation_study`): next-token cross-entropy of the learned model
   against the same model with every layer's β replaced by uniform-causal, the reference's
   non-causal uniform (1/N on all keys) and local (keys i−4…i) attention, through
   ``beta_override``; ``override_ffn_beta`` also replaces the VFE FFN's own β;
7. sweeps κ (:func:`attention_kappa_sweep`: the captured KL re-softmaxed at each temperature,
   traced κ, one compile; or ``kappa_mode="model"``: the whole model re-run per κ);
8. assembles the 9-part report per layer (:func:`diagnostics.validate.validate`), renders it in
   seed 000's console format, and writes JSON (schema v1 of :mod:`diagnostics.report`, with the
   gradient-flow, ablation and κ-sweep details under ``meta``), markdown and figures.

Every jitted function lives at module level, so a second model with the same config and input
shape reuses the compiled code.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gaugeformer import checkpoint as ckpt
from gaugeformer.capture import capture_jit
from gaugeformer.data.tokenizer import BYTE_VOCAB, GPT2_N_VOCAB
from gaugeformer.loading import load, random_model
from gaugeformer.stats import model_valid_keys
from gaugeformer.train.runtime import enable_compilation_cache

from diagnostics import attribution as attr_lib
from diagnostics import report as report_io
from diagnostics.ablation import LOCAL_WINDOW, Ablation, ablation_study
from diagnostics.ablation import markdown as ablation_markdown
from diagnostics.gradflow import GradientFlow, gradient_flow
from diagnostics.gradflow import markdown as gradflow_markdown
from diagnostics.gradflow import notes as gradflow_notes
from diagnostics.ablation import notes as ablation_notes
from diagnostics.inputs import ReportInputs, build_inputs
from diagnostics.kappa import DEFAULT_KAPPAS, KappaSweep, attention_kappa_sweep, model_kappa_sweep
from diagnostics.kappa import markdown as kappa_markdown
from diagnostics.kappa import render_kappa_sweep
from diagnostics.metrics import METRIC_KEYS, all_metrics
from diagnostics.figures import plot_irrep_summary, plot_kappa_sweep
from diagnostics.render import RULE, header, render_report
from diagnostics.schema import MODES, ValidationReport
from diagnostics.validate import validate

@dataclasses.dataclass(frozen=True)
class Beliefs:
    """One inference forward: attention of every layer and the beliefs entering it (host arrays).

    Attributes:
        beta, kl: ``[L, B, H, N, N]``.
        mu: ``[L, B, N, K]`` means entering each layer's attention (after its input norm).
        phi: ``[L, B, N, 3]`` frames entering each layer.
        sigma_diag: ``[L, B, N, K]`` covariance diagonals entering each layer (None when the
            model keeps diagonal covariances, which are not recorded).
        logits: ``[B, N, V]``.
    """

    beta: np.ndarray
    kl: np.ndarray
    mu: np.ndarray
    phi: np.ndarray
    sigma_diag: np.ndarray | None
    logits: np.ndarray


def capture_beliefs(model: Any, tokens: np.ndarray) -> Beliefs:
    """Inference forward (``train=False``) recording attention and beliefs of every layer."""
    ids = jnp.asarray(np.atleast_2d(tokens), jnp.int32)
    got = jax.device_get(capture_jit(model, ids, beliefs=True))
    sigma = None if got.sigma_in is None else np.diagonal(got.sigma_in, axis1=-2, axis2=-1)
    return Beliefs(*(np.asarray(x, np.float32) for x in (got.beta, got.kl, got.mu_in, got.phi_in)),
                   None if sigma is None else np.asarray(sigma, np.float32),
                   np.asarray(got.logits, np.float32))


def _strong_types(model: Any) -> None:
    """Drop weak types from the model's arrays (a freshly initialised scalar parameter such as the
    FFN step size is weakly typed, a loaded one is not), so trained, converted and random models
    of one config share every compiled function."""
    nnx.update(model, ckpt.strong_types(nnx.state(model)))


@dataclasses.dataclass
class RunResult:
    """What :func:`run_report` returns.

    Attributes:
        report: the :class:`~diagnostics.schema.ValidationReport` (JSON meta included).
        console: the printed text.
        inputs: the batch.
        beliefs: the captured forward.
        metrics: host metrics of the analysed layers (``all_metrics`` keys).
        layers: the analysed layer indices.
        gradflow / ablation / sweep: the optional analyses (None when skipped).
        kappa_check: max |β(κ_model) − β| of the attention-mode sweep (None otherwise).
        files: written files (JSON, markdown, figures).
        cfg / description: model config and checkpoint description.
    """

    report: ValidationReport
    console: str
    inputs: ReportInputs
    beliefs: Beliefs
    metrics: dict[str, np.ndarray]
    layers: tuple[int, ...]
    gradflow: GradientFlow | None
    ablation: Ablation | None
    sweep: KappaSweep | None
    kappa_check: float | None
    files: list[Path]
    cfg: Any
    description: str


def _parse_layers(spec: str | Sequence[int] | None, n_layers: int) -> tuple[int, ...]:
    if spec is None or spec == "all":
        return tuple(range(n_layers))
    if spec == "last":
        return (n_layers - 1,)
    items = [int(x) for x in spec.split(",")] if isinstance(spec, str) else [int(x) for x in spec]
    bad = [x for x in items if not -n_layers <= x < n_layers]
    if bad or not items:
        raise ValueError(f"--layers {spec!r}: the model has {n_layers} layers (all, last, or "
                         f"indices 0..{n_layers - 1})")
    return tuple(dict.fromkeys(x % n_layers for x in items))


def _per_layer_key(key: str, value: Any, n_layers: int) -> bool:
    """Whether an ``all_metrics`` entry has a leading layer axis (per :data:`METRIC_KEYS`)."""
    if key in METRIC_KEYS:
        return METRIC_KEYS[key][0].startswith("L ")
    return np.ndim(value) >= 1 and np.shape(value)[0] == n_layers


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _json_meta(base: dict, gf: GradientFlow | None, ab: Ablation | None,
               sweep: KappaSweep | None, kappa_mode: str, kappa_check: float | None,
               layers: Sequence[int]) -> dict:
    meta = dict(base)
    if gf is not None:
        meta["gradient_flow"] = {
            "loss": _finite(gf.loss), "loss_detached": _finite(gf.loss_detached),
            "attention_params": gf.attention_params,
            "dL_dbeta": [_finite(x) for x in gf.dbeta],
            "groups": [{"name": g.name, "params": g.params, "norm": _finite(g.norm),
                        "norm_detached": _finite(g.norm_detached),
                        "via_attention": _finite(g.via_attention),
                        "through_attention": g.through_attention} for g in gf.groups],
        }
    if ab is not None:
        meta["ablation"] = {
            "targets": "next-token", "predictions": ab.predictions,
            "losses": {k: _finite(v) for k, v in ab.losses.items()},
            "ppl": {k: _finite(v) for k, v in ab.ppl.items()},
            "override_layers": "all", "override_ffn_beta": ab.override_ffn_beta,
            "ffn": ab.ffn, "local_window": LOCAL_WINDOW,
            "passthrough_error": _finite(ab.passthrough_error),
        }
    if sweep is not None:
        meta["kappa_sweep"] = {
            "mode": kappa_mode, "kappas": list(sweep.kappas), "layers": list(layers),
            "check_max_abs_error": _finite(kappa_check),
            "row_std": {md: [[[_finite(float(x)) for x in v[li]] for li in layers]
                             for v in arr] for md, arr in sweep.row_std.items()},
        }
    return meta


def run_report(
    checkpoint: str | Path | None = None,
    *,
    config: str | Path | None = None,
    model: Any = None,
    seq_len: int | None = 128,
    text: str | None = None,
    dataset: str | None = None,
    data_files: Mapping[str, Any] | Sequence[str] | None = None,
    random: bool = False,
    tokens: np.ndarray | str | None = None,
    batch: int | None = None,
    seed: int = 0,
    tokenizer: str = "auto",
    special_ids: Sequence[int] | None = None,
    layers: str | Sequence[int] = "all",
    metrics: str = "both",
    gradflow: bool = True,
    ablation: bool = True,
    ablate_ffn_beta: bool = False,
    attribution: bool = True,
    kappas: Sequence[float] | None = None,
    kappa_mode: str = "attention",
    json_path: str | Path | None = None,
    markdown_path: str | Path | None = None,
    plot_dir: str | Path | None = None,
    dpi: int = 120,
    echo: Callable[[str], Any] | None = print,
) -> RunResult:
    """Run the whole validation report (see the module docstring).

    Args:
        checkpoint: reference ``.pt``, converted/native checkpoint directory, or None for random
            weights (``config`` then defines the model).
        config: model config file (YAML/JSON; :func:`gaugeformer.convert.recover.config_from_dict`).
        model: an already-built model (overrides ``checkpoint``/``config``).
        seq_len, text, dataset, data_files, random, tokens, batch, seed, tokenizer, special_ids:
            the input batch (:func:`build_inputs`).
        layers: ``"all"``, ``"last"`` or layer indices.
        metrics: ``"legacy"``, ``"valid"`` or ``"both"`` (legacy decides, valid shown beside).
        gradflow: run the gradient-flow part (two gradients in one compile).
        ablation: run the ablation part.
        ablate_ffn_beta: the ablation also replaces the VFE FFN's own β.
        attribution: attribute each head's uniformity (:mod:`diagnostics.attribution`; full
            covariances only): per-head ``uniformity`` records and measured-cause scenarios.
        kappas: κ values of the sweep (default: 0.3, 0.5, 1, 2, 5 and the model's κ; empty: no
            sweep).
        kappa_mode: ``"attention"`` (captured KL re-softmaxed, beliefs fixed) or ``"model"``
            (the whole model re-run per κ; one compile per κ).
        json_path, markdown_path: report files.
        plot_dir: κ-sweep and per-irrep figures (None: no figures).
        dpi: figure resolution.
        echo: prints the console report (None: silent).
    """
    if metrics not in MODES:
        raise ValueError(f"metrics must be one of {tuple(MODES)}, got {metrics!r}")
    if kappa_mode not in ("attention", "model"):
        raise ValueError(f"kappa_mode must be 'attention' or 'model', got {kappa_mode!r}")
    saved_tokenizer = None
    if model is not None:
        cfg, desc = model.cfg, "given model"
    else:
        hint = BYTE_VOCAB if tokenizer == "bytes" else GPT2_N_VOCAB
        loaded = (load(checkpoint, config=config) if checkpoint is not None
                  else random_model(config, vocab_size=hint, seed=seed))
        model, cfg, desc = loaded.model, loaded.config, loaded.description
        saved_tokenizer = loaded.tokenizer
        _strong_types(model)
    inputs = build_inputs(cfg, tokens=tokens, text=text, dataset=dataset, data_files=data_files,
                          random=random, seq_len=seq_len, batch=batch, seed=seed,
                          tokenizer=tokenizer, special_ids=special_ids,
                          saved_tokenizer=saved_tokenizer)
    idx = _parse_layers(layers, cfg.n_layers)
    sel = list(idx)
    n = inputs.tokens.shape[1]
    mask = model_valid_keys(cfg, n)

    bel = capture_beliefs(model, inputs.tokens)
    # every layer in one compiled call (one compile per model shape, whatever --layers says),
    # then the analysed layers are selected on the host
    met = jax.device_get(all_metrics(
        bel.beta, bel.kl, mask, inputs.tokens, mu=bel.mu, phi=bel.phi, sigma_diag=bel.sigma_diag,
        special_ids=inputs.special_ids, query_var_batches=1))
    met = {k: np.asarray(v)[sel] if _per_layer_key(k, v, cfg.n_layers) else np.asarray(v)
           for k, v in met.items()}

    gf = gradient_flow(model, inputs.tokens) if gradflow else None
    ab = (ablation_study(model, inputs.tokens, learned_logits=bel.logits, learned_beta=bel.beta,
                         override_ffn_beta=ablate_ffn_beta) if ablation else None)

    attr = (attr_lib.attribute(model, inputs.tokens)
            if attribution and not cfg.diagonal_covariance else None)
    sweep, kappa_check = None, None
    kap = (sorted(set(DEFAULT_KAPPAS) | {round(float(cfg.kappa_beta), 6)}) if kappas is None
           else [float(k) for k in kappas])
    if kap:
        if kappa_mode == "attention":
            sweep, kappa_check = attention_kappa_sweep(cfg, bel.kl, kap, beta=bel.beta)
        else:
            sweep = model_kappa_sweep(model, inputs.tokens, kap)

    base_meta = {
        "checkpoint": desc, "seq_len": int(n), "batch": int(inputs.tokens.shape[0]),
        "input": inputs.sources[0], "tokenizer": inputs.tokenizer,
        "layers_analysed": list(idx), "n_layers": int(cfg.n_layers),
        "kappa_beta": float(cfg.kappa_beta), "beliefs": "entering each layer's attention",
    }
    part_notes = {}
    if gf is not None:
        part_notes[8] = [gradflow_notes(gf, li) for li in idx]
    if ab is not None:
        part_notes[9] = [ablation_notes(ab, cfg.n_layers)] * len(idx)
    # the report is built once, complete (real layer numbers, every note, the JSON meta) ...
    report = validate(
        met, head_labels=cfg.head_labels, head_dims=cfg.layout.dims, mode=metrics,
        special_ids=inputs.special_ids, grad_norms=None if gf is None else gf.norms(),
        param_counts=None if gf is None else gf.counts(),
        ablation=None if ab is None else ab.losses,
        meta=_json_meta(base_meta, gf, ab, sweep, kappa_mode, kappa_check, idx),
        layer_numbers=idx, part_notes=part_notes, attribution=attr)

    # ... and rendered once per format
    text_out = [header(desc, cfg, inputs, idx, metrics), "", render_report(report, cfg.n_layers)]
    if sweep is not None:
        mode_txt = ("captured KL re-softmaxed at each κ, beliefs held fixed" if kappa_mode ==
                    "attention" else "whole model re-run at each κ")
        text_out += ["", RULE, f"κ SWEEP ({mode_txt}; model κ = {cfg.kappa_beta:.4g})", RULE]
        for li in idx:
            for md in MODES[metrics]:
                text_out += [render_kappa_sweep(sweep, md, li), ""]
        if kappa_check is not None:
            text_out.append(f"Check: β re-softmaxed at the model's κ matches the captured β "
                            f"(max |Δ| = {kappa_check:.1e}).")

    files: list[Path] = []
    if json_path is not None:
        files.append(report_io.write_json(report, json_path))
    if markdown_path is not None:
        sections = [attribution_markdown(attr) if attr is not None else "",
                    gradflow_markdown(gf) if gf is not None else "",
                    ablation_markdown(ab, cfg.n_layers) if ab is not None else "",
                    kappa_markdown(sweep, kappa_mode, idx) if sweep is not None else ""]
        files.append(report_io.write_markdown(report, markdown_path,
                                              sections=[x for x in sections if x]))
    if plot_dir is not None:
        files += _plots(Path(plot_dir), report, sweep, cfg.head_labels, idx, dpi)
    if files:
        text_out += ["", *[f"saved: {p}" for p in files]]
    console = "\n".join(text_out)
    if echo is not None:
        echo(console)
    return RunResult(report, console, inputs, bel, met, idx, gf, ab, sweep, kappa_check, files,
                     cfg, desc)


def attribution_markdown(attr: Mapping[str, Any]) -> str:
    """The per-head attribution as a markdown section (table and scenarios)."""
    return "\n".join(["## Why is a head uniform? (per-head attribution)", "",
                      attr_lib.render_table(attr), "", "```", attr_lib.format_scenarios(attr), "```"])


def _plots(out: Path, report: ValidationReport, sweep: KappaSweep | None,
           labels: Sequence[str], layers: Sequence[int], dpi: int) -> list[Path]:
    files = []
    valid = np.asarray([[h.row_std_valid for h in lay.heads] for lay in report.layers])
    legacy = np.asarray([[h.row_std for h in lay.heads] for lay in report.layers])
    files.append(plot_irrep_summary(valid, labels, out / "irrep_summary_valid.png",
                                    metric="row_std (valid keys)", dpi=dpi).path)
    files.append(plot_irrep_summary(legacy, labels, out / "irrep_summary_legacy.png",
                                    metric="row_std (legacy: all j≠i)", dpi=dpi).path)
    if sweep is not None:
        for li in layers:
            files.append(plot_kappa_sweep(sweep.kappas, sweep.row_std["valid"][:, li], labels,
                                          out / f"kappa_sweep_L{li}.png", dpi=dpi).path)
    return files


EPILOG = """examples:
  python scripts/validate_attention.py --checkpoint tests/fixtures/T_A_v256/best_model.pt \\
      --text "def f(x): return x" --json report.json --markdown report.md
  python scripts/validate_attention.py --checkpoint runs/tiny/checkpoints --dataset wikitext-2 \\
      --data-files validation=wiki.valid.raw --seq_len 128 --batch 4
  python scripts/validate_attention.py --config configs/tiny.yaml --random --seq_len 64 \\
      --layers last --metrics valid --kappas 0.1 0.5 1 2
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="validate_attention.py",
        description="The 9-part attention validation report for every layer, with real "
                    "gradient flow, ablation, κ sweep and per-irrep table.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("--checkpoint", help="gaugeformer checkpoint directory or reference .pt "
                   "(converted on the fly); omitted: random weights")
    p.add_argument("--config", help="model config (YAML/JSON): defines the random model, or "
                   "overrides the config files beside a .pt")
    p.add_argument("--seq_len", "--seq-len", dest="seq_len", type=int, default=128,
                   help="tokens per sequence (capped at the model's max_seq_len)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", help="input text")
    src.add_argument("--dataset", choices=("wikitext-2", "wikitext-103", "embedded"),
                     help="validation windows of a dataset (real data)")
    src.add_argument("--random", action="store_true", help="random token ids")
    src.add_argument("--ids", help="explicit ids: .npy, .npz (key 'tokens'), a text file of ints "
                     "(one sequence per line) or '1,2,3'")
    p.add_argument("--data-files", nargs="+", metavar="[SPLIT=]PATH",
                   help="local WikiText-format files for --dataset (offline)")
    p.add_argument("--batch", type=int, default=None, help="sequences analysed (default 1)")
    p.add_argument("--layers", default="all", help="all, last, or comma-separated indices")
    p.add_argument("--metrics", choices=tuple(MODES), default="both",
                   help="legacy (the reference's numbers), valid (causally valid keys), or both "
                   "(legacy decides, valid shown beside)")
    p.add_argument("--kappas", type=float, nargs="*", default=None,
                   help="κ values of the sweep (default 0.3 0.5 1 2 5 + the model's; none given: "
                   "no sweep)")
    p.add_argument("--kappa-mode", choices=("attention", "model"), default="attention",
                   help="attention: re-softmax the captured KL (beliefs fixed, one compile); "
                   "model: re-run the whole model per κ")
    p.add_argument("--no-ablation", action="store_true", help="skip part 9")
    p.add_argument("--no-gradflow", action="store_true", help="skip part 8")
    p.add_argument("--no-attribution", action="store_true",
                   help="skip the per-head uniformity attribution (why is a head uniform?)")
    p.add_argument("--ablate-ffn-beta", action="store_true",
                   help="the ablation also replaces the VFE FFN's own β (head-mean of the "
                   "override)")
    p.add_argument("--special-ids", type=int, nargs="*", default=None,
                   help="special-token ids for part 3 (default: GPT-2 end-of-text when GPT-2)")
    p.add_argument("--json", help="write the JSON report (schema v1) here")
    p.add_argument("--markdown", help="write the markdown report here")
    p.add_argument("--plot-dir", default="attention_validation",
                   help="κ-sweep and per-irrep figures (default: ./attention_validation)")
    p.add_argument("--no-plots", action="store_true", help="write no figures")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights / random ids")
    p.add_argument("--tokenizer", default="auto", choices=("auto", "gpt2", "bytes"))
    return p


def main(argv: Sequence[str] | None = None) -> RunResult:
    """CLI entry point (``scripts/validate_attention.py``)."""
    args = build_parser().parse_args(argv)
    enable_compilation_cache()
    try:
        return run_report(
            args.checkpoint, config=args.config, seq_len=args.seq_len, text=args.text,
            dataset=args.dataset, data_files=args.data_files, random=args.random, tokens=args.ids,
            batch=args.batch, seed=args.seed, tokenizer=args.tokenizer,
            special_ids=args.special_ids, layers=args.layers, metrics=args.metrics,
            gradflow=not args.no_gradflow, ablation=not args.no_ablation,
            attribution=not args.no_attribution,
            ablate_ffn_beta=args.ablate_ffn_beta, kappas=args.kappas, kappa_mode=args.kappa_mode,
            json_path=args.json, markdown_path=args.markdown,
            plot_dir=None if args.no_plots else args.plot_dir)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
