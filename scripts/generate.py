"""Sample text from a trained gauge transformer (a training run's checkpoint).

    python scripts/generate.py runs/tiny "The cat" --max-new-tokens 40 --temperature 0.8 --top-k 40
    python scripts/generate.py runs/tiny "The cat" --temperature 0          # greedy
    python scripts/generate.py runs/tiny --ids 464 3797 --max-new-tokens 8  # token ids in, ids out

Semantics (context window, padding per profile): see ``gaugeformer/generate.py``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gaugeformer.data.tokenizer import TOKENIZER_NAMES, get_tokenizer  # noqa: E402
from gaugeformer.generate import generate  # noqa: E402
from gaugeformer.loading import load  # noqa: E402
from gaugeformer.train.config import build_run_config  # noqa: E402
from gaugeformer.train.loop import load_data  # noqa: E402


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
        out = generate(model, args.prompt if args.ids is None else args.ids, tokenizer=tok,
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    except ValueError as err:
        parser.error(str(err))
    print(out if isinstance(out, str) else " ".join(map(str, out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
