"""Command lines of the library: ``gaugeformer-train``, ``-convert``, ``-generate``, ``-sweep``,
``-bench`` (the attention tools are in :mod:`diagnostics.cli`).  ``scripts/*.py`` wrap these.

Each is an argparse parser and one call.  ``sweep`` runs :mod:`diagnostics.sweep` (the sweep measures
runs with the diagnostics' attribution, and the library never imports its consumer at import time);
it is imported by name when the command runs, and a missing module is reported as such.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from gaugeformer.bench import main as bench_main
from gaugeformer.convert.convert import run as convert_run
from gaugeformer.convert.recover import ConversionError, require_yaml_or_json
from gaugeformer.data.tokenizer import TOKENIZER_NAMES, get_tokenizer
from gaugeformer.loading import load
from gaugeformer.sampling import generate as sample
from gaugeformer.train.config import ConfigError, build_run_config, load_run_config
from gaugeformer.train.loop import load_data, train_and_evaluate
from gaugeformer.train.runtime import enable_compilation_cache

TRAIN_DOC = """Train a gauge transformer from a YAML run file; rerunning on the same workdir resumes.

    gaugeformer-train --config configs/tiny.yaml --workdir runs/tiny
    gaugeformer-train --config configs/publication_D.yaml --workdir runs/D \\
        --set train.steps=2000 --set model.kappa_beta=0.5

Multi-host (every host runs the same command; see README): add ``--set train.distributed=true``.
Exit status: 0 done, 130 interrupted by Ctrl-C and 143 by SIGTERM or a preemption (a checkpoint
saved either way), 3 stopped on a NaN/inf, 2 bad input.
"""

CONVERT_DOC = """Convert a PyTorch reference checkpoint into a gaugeformer orbax checkpoint (and validate it).

    gaugeformer-convert tests/fixtures/T_A_v256/best_model.pt --out /tmp/T_A \\
        --validate tests/fixtures/T_A_v256/golden.npz

Exit status: 0 converted (and validated), 1 a validation failed, 2 an error (one line on stderr).
See gaugeformer/convert/convert.py for the config recovery order and the orbax layout.
"""


def _figures():
    """The training figures of the ``diagnostics`` package, when it is installed.

    The command line is the composition root: it plugs the consumer's figures into the library's
    ``figures`` hook; the library modules themselves never import ``diagnostics``.
    """
    try:
        return importlib.import_module("diagnostics.training").FIGURES
    except ImportError as err:
        print(f"[train] no figures ({err}); metrics and checkpoints are unaffected",
              file=sys.stderr)
        return None


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gaugeformer-train", description=TRAIN_DOC.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=TRAIN_DOC.split("\n\n", 1)[1])
    p.add_argument("--config", required=True, help="YAML run file (configs/*.yaml)")
    p.add_argument("--workdir", required=True, help="run directory (resumed if it exists)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not use the persistent XLA cache (~/.cache/gaugeformer/jax)")
    return p


def train(argv: Sequence[str] | None = None) -> int:
    parser = train_parser()
    args = parser.parse_args(argv)
    try:
        require_yaml_or_json(args.config)
        run_cfg = load_run_config(args.config, args.overrides)
    except (ConfigError, ConversionError) as err:
        parser.error(str(err))
    if not args.no_compile_cache:
        enable_compilation_cache()
    try:
        summary = train_and_evaluate(run_cfg, args.workdir, figures=_figures())
    except FloatingPointError as err:
        print(f"\n[train] stopped: {err}", file=sys.stderr)
        return 3
    print(json.dumps(summary, indent=2, default=str))
    if summary["status"] != "interrupted":
        return 0
    return 143 if summary["stop_signal"] in ("SIGTERM", "preemption") else 130


def convert_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gaugeformer-convert", description=CONVERT_DOC.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=CONVERT_DOC.split("\n\n", 1)[1])
    p.add_argument("checkpoint", help=".pt/.pth/.ckpt (torch.save) or .safetensors file")
    p.add_argument("--out", required=True, help="output directory (orbax checkpoint)")
    p.add_argument("--config", help="model config (gaugeformer or reference JSON/YAML); default: "
                   "model_config.json / experiment_config.json beside the checkpoint, else "
                   "inferred from the weights")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")
    p.add_argument("--no-optimizer", action="store_true", help="do not convert the AdamW state")
    p.add_argument("--validate", metavar="GOLDEN_NPZ",
                   help="compare the converted model with a reference golden.npz")
    p.add_argument("--validate-live", metavar="REPO_DIR",
                   help="compare with the live PyTorch reference (needs torch and a checkout)")
    p.add_argument("--x64", action="store_true",
                   help="also evaluate the converted model in float64 for every validation (always "
                   "done when golden64.npz lies beside the golden file or a strict check fails)")
    p.add_argument("--json", metavar="OUT", help="write a JSON report")
    return p


def convert(argv: Sequence[str] | None = None) -> int:
    a = convert_parser().parse_args(argv)
    return convert_run(a.checkpoint, a.out, config=a.config, force=a.force, validate=a.validate,
                       validate_live_repo=a.validate_live, json_out=a.json,
                       include_optimizer=not a.no_optimizer, x64=a.x64)


def _delegate(module: str, what: str, argv: Sequence[str] | None) -> int:
    """Run ``module.main(argv)``; a module that is not there yet is said so in one line."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        print(f"gaugeformer: {what} is not available in this installation ({module} is missing); "
              "update gaugeformer", file=sys.stderr)
        return 2
    if not callable(getattr(mod, "main", None)):
        print(f"gaugeformer: {what} is not available in this installation ({module} has no "
              "main(argv) yet); update gaugeformer", file=sys.stderr)
        return 2
    return int(mod.main(argv) or 0)


def load_for_generation(path: str, tokenizer: str | None = None):
    """``(model, tokenizer)`` of a checkpoint (run dir, ``checkpoints/``, ``best/``, step dir).

    The tokenizer is the run's (``data.tokenizer``); a restricted vocabulary's kept ids are
    rebuilt from the run's training corpus when the checkpoint does not record them (checkpoints
    written before the tokenizer record); otherwise ``gf.load``'s tokenizer.
    """
    loaded = load(path)  # the checkpoint's own tokenizer record (kept ids included) when it has one
    model, meta = loaded.model, loaded.meta
    if tokenizer is None and loaded.tokenizer is not None:
        return model, loaded.tokenizer
    run = meta.get("run_config")
    kind = tokenizer or (run or {}).get("data", {}).get("tokenizer")
    if kind is None:
        raise SystemExit(f"{path}: the checkpoint names no tokenizer; pass --tokenizer "
                         f"{'|'.join(TOKENIZER_NAMES)}")
    tok = get_tokenizer(kind)
    if tok.n_vocab == model.cfg.vocab_size:
        return model, tok
    if run is None:
        raise SystemExit(f"{path}: the model has {model.cfg.vocab_size} ids, the {kind} tokenizer "
                         f"{tok.n_vocab}, and the checkpoint has no run config to rebuild the "
                         "restricted vocabulary from; use --ids")
    data = load_data(build_run_config(run).data)
    return model, get_tokenizer(kind, kept_ids=data.vocab_map.kept_ids,
                                vocab_size=model.cfg.vocab_size)


def generate(argv: Sequence[str] | None = None) -> int:
    """``gaugeformer-generate``: sample text from a checkpoint (:mod:`gaugeformer.sampling`)."""
    parser = argparse.ArgumentParser(prog="gaugeformer-generate", description="Sample text from a trained gauge transformer (a training run's checkpoint).")
    parser.add_argument("checkpoint", help="training run directory or checkpoint step directory")
    parser.add_argument("prompt", nargs="?", help="text prompt")
    parser.add_argument("--ids", type=int, nargs="+", help="prompt as token ids (prints ids)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", choices=TOKENIZER_NAMES, help="override the run's")
    args = parser.parse_args(argv)
    if (args.prompt is None) == (args.ids is None):
        parser.error("give either a text prompt or --ids")
    model, tok = load_for_generation(args.checkpoint, args.tokenizer)
    try:
        out = sample(model, args.prompt if args.ids is None else args.ids, tokenizer=tok,
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    except ValueError as err:
        parser.error(str(err))
    print(out if isinstance(out, str) else " ".join(map(str, out)))
    return 0


def sweep(argv: Sequence[str] | None = None) -> int:
    """``gaugeformer-sweep``: a sweep of training runs (:mod:`diagnostics.sweep`)."""
    return _delegate("diagnostics.sweep", "the training sweep", argv)


def bench(argv: Sequence[str] | None = None) -> int:
    """``gaugeformer-bench``: the performance benchmark (:mod:`gaugeformer.bench`)."""
    return int(bench_main(argv) or 0)
