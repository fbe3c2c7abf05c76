"""Shared logic of the attention scripts: input sequences, attention capture, captions, summaries.

The three scripts (``scripts/visualize_attention.py``, ``scripts/attention_recency.py``,
``scripts/analyze_attention.py``) are argument parsing plus calls into this module,
:func:`gaugeformer.load` and the figure modules.

* Tokenisation: the checkpoint's own tokenizer (``Loaded.tokenizer``), else
  :func:`gaugeformer.data.corpus.resolve_tokenizer` (V = 256 bytes, V ≥ 50257 GPT-2 BPE, a V in
  between a restricted GPT-2 vocabulary rebuilt from the training split of a corpus).
* Sequences (:class:`TokenSequence`): user text, windows of a validation split (the real
  loader, :func:`gaugeformer.data.corpus.load_wikitext_split`, so local WikiText-format files go
  through the same code as the hub dataset), or random ids. Each knows its source, for captions.
* Capture (:func:`capture_attention`, :func:`capture_sequences`): host copies of
  :func:`gaugeformer.capture.capture` (``Intermediates``, β and KL ``(L, B, H, N, N)``).
* Captions and console summaries as seed 002 asks for (source, first characters, checkpoint,
  self-attention masking, κ).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from gaugeformer import stats as attn_stats
from gaugeformer.capture import Intermediates, capture_jit
from gaugeformer.data.corpus import (
    WIKITEXT_CONFIGS,
    load_embedded_dataset,
    load_wikitext,
    load_wikitext_split,
    resolve_tokenizer,
)
from gaugeformer.data.tokenizer import BYTE_VOCAB, GPT2_N_VOCAB, Tokenizer
from gaugeformer.loading import Loaded, load, random_model
from gaugeformer.stats import KL_UNIFORM_THRESHOLD

from diagnostics.figures import format_tokens

__all__ = [
    "TokenSequence",
    "caption_for",
    "capture_attention",
    "capture_sequences",
    "context_summary",
    "dataset_label",
    "legacy_kl_row_std",
    "parse_data_files",
    "random_sequences",
    "samples_header",
    "sequence_from_ids",
    "text_sequence",
    "text_windows",
    "validation_sequences",
]

DATASETS = ("wikitext-2", "wikitext-103", "embedded")
PREVIEW_CHARS = 60


# ------------------------------------------------------------------------------------------------
# Tokenizers
# ------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------
# Sequences
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TokenSequence:
    """One input sequence and what it is.

    Attributes:
        ids: model token ids ``(N,)`` int32.
        tokens: N raw token pieces (bytes) for labels.
        text: decoded text.
        source: where it came from, for captions.
    """

    ids: np.ndarray
    tokens: list[bytes]
    text: str
    source: str

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def preview(self, n: int = PREVIEW_CHARS) -> str:
        """The first ``n`` characters, whitespace runs collapsed."""
        return " ".join(self.text.split())[:n]


def sequence_from_ids(ids: Sequence[int] | np.ndarray, tok: Tokenizer | None, source: str
                      ) -> TokenSequence:
    """A :class:`TokenSequence` from model ids (``tok`` None: labels are ``#id``)."""
    arr = np.asarray(ids, np.int32).reshape(-1)
    if tok is None:
        pieces = [f"#{int(t)}".encode() for t in arr]
        return TokenSequence(arr, pieces, " ".join(p.decode() for p in pieces), source)
    return TokenSequence(arr, tok.pieces(arr), tok.decode(arr), source)


def text_sequence(text: str, tok: Tokenizer, *, max_len: int,
                  source: str = "user-provided text") -> TokenSequence:
    """Encodes ``text``; longer than ``max_len`` tokens is cut (and the source says so)."""
    ids = tok.encode(text)
    if ids.size == 0:
        raise ValueError("the text encodes to no tokens")
    if ids.size > max_len:
        source = f"{source}, first {max_len} of {ids.size} tokens"
        ids = ids[:max_len]
    return sequence_from_ids(ids, tok, f"{source}, {tok.describe()}")


def text_windows(text: str, tok: Tokenizer, *, seq_len: int, count: int,
                 source: str = "user text") -> list[TokenSequence]:
    """Up to ``count`` consecutive non-overlapping windows of ``seq_len`` tokens of ``text``."""
    ids = tok.encode(text)
    n_win = min(count, ids.size // seq_len)
    if n_win == 0:
        raise ValueError(f"the text has {ids.size} tokens, fewer than --seq-len {seq_len}")
    return [sequence_from_ids(ids[w * seq_len:(w + 1) * seq_len], tok,
                              f"{source}, tokens {w * seq_len}\u2013{(w + 1) * seq_len - 1}, "
                              f"{tok.describe()}") for w in range(n_win)]


def dataset_label(dataset: str) -> str:
    """Display name of a dataset key."""
    return {"wikitext-2": "WikiText-2", "wikitext-103": "WikiText-103",
            "embedded": "embedded Botchan corpus"}.get(dataset, dataset)


def parse_data_files(items: Sequence[str] | None) -> dict[str, list[str]] | None:
    """``["validation=wiki.valid.raw", "train=wiki.train.raw"]`` → ``{split: [paths]}``.

    A bare path is a validation file. ``None``/empty → ``None`` (the hub dataset).
    """
    if not items:
        return None
    out: dict[str, list[str]] = {}
    for item in items:
        split, sep, path = item.partition("=")
        if not sep:
            split, path = "validation", item
        if split not in ("train", "validation", "test"):
            raise ValueError(f"--data-files {item!r}: split must be train, validation or test")
        out.setdefault(split, []).append(str(Path(path).expanduser()))
    return out


def _validation_ids(dataset: str, tok: Tokenizer,
                    data_files: Mapping[str, Any] | None) -> tuple[np.ndarray, str]:
    """Model ids of the whole validation split and a description of it."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    if dataset == "embedded":
        ds = load_embedded_dataset(tok.name, vocab_size=tok.vocab_size if tok.restricted else None)
        return ds.validation, f"{dataset_label(dataset)} validation split"
    if data_files is not None:
        names = ", ".join(Path(p).name for p in data_files.get("validation", []))
        where = f"{dataset_label(dataset)}-format file {names}"
    else:
        hub = f"Salesforce/wikitext {WIKITEXT_CONFIGS[dataset]}"
        where = f"{dataset_label(dataset)} validation ({hub})"
    if tok.restricted:  # the restriction needs the training split too
        return load_wikitext(dataset, tokenizer=tok.name, data_files=data_files,
                             vocab_size=tok.vocab_size).validation, where
    return load_wikitext_split(dataset, "validation", tokenizer=tok.name,
                               data_files=data_files), where


def validation_sequences(dataset: str, tok: Tokenizer, *, seq_len: int, start: int = 0,
                         count: int = 1, data_files: Mapping[str, Any] | None = None
                         ) -> list[TokenSequence]:
    """Windows ``start … start+count−1`` of the validation split (non-overlapping, ``seq_len``).

    Window ``w`` holds validation tokens ``w·seq_len … (w+1)·seq_len − 1``; window 0 is the
    sequence the reference's trainer always draws.
    """
    ids, where = _validation_ids(dataset, tok, data_files)
    n_win = ids.size // seq_len
    if start < 0 or start >= n_win:
        raise ValueError(f"--index {start}: the validation split has {ids.size} tokens, i.e. "
                         f"{n_win} windows of {seq_len}")
    stop = min(n_win, start + count)
    return [sequence_from_ids(ids[w * seq_len:(w + 1) * seq_len], tok,
                              f"{where}, window {w}: tokens {w * seq_len}\u2013"
                              f"{(w + 1) * seq_len - 1}, {tok.describe()}")
            for w in range(start, stop)]


def random_sequences(vocab_size: int, *, seq_len: int, count: int = 1, seed: int = 0,
                     tok: Tokenizer | None = None, high: int = 100) -> list[TokenSequence]:
    """Random ids in ``[0, min(high, V))`` (debugging only; the source says so)."""
    top = min(high, int(vocab_size))
    rng = np.random.default_rng(seed)
    return [sequence_from_ids(rng.integers(0, top, seq_len), tok,
                              f"random token ids in [0, {top}) (seed {seed}, sample {s}; "
                              "debugging only)") for s in range(count)]


# ------------------------------------------------------------------------------------------------
# Capture
# ------------------------------------------------------------------------------------------------


def capture_attention(model: Any, ids: np.ndarray) -> Intermediates:
    """One inference forward (``train=False``) recording attention: host arrays ``[L, B, H, N, N]``.

    Args:
        model: a ``GaugeTransformerLM``.
        ids: ``(N,)`` or ``(B, N)`` token ids.
    """
    arr = np.asarray(ids, np.int32)
    if arr.ndim == 1:
        arr = arr[None]
    n = arr.shape[-1]
    if n > model.cfg.max_seq_len:
        raise ValueError(f"sequence length {n} exceeds the model's max_seq_len "
                         f"{model.cfg.max_seq_len}")
    if arr.size and (arr.min() < 0 or arr.max() >= model.cfg.vocab_size):
        raise ValueError(f"token ids outside the model vocabulary [0, {model.cfg.vocab_size})")
    return jax.device_get(capture_jit(model, jnp.asarray(arr)))


def capture_sequences(model: Any, seqs: Sequence[TokenSequence], *, progress: bool = True
                      ) -> Intermediates:
    """Captures each sequence separately (one compile for any count; tqdm progress bar).

    All sequences must have the same length; the result has ``B = len(seqs)``.
    """
    if len({len(s) for s in seqs}) > 1:
        raise ValueError("all sequences must have the same length")
    parts = [capture_attention(model, s.ids)
             for s in tqdm(seqs, desc="capturing attention", unit="seq",
                           disable=not progress or len(seqs) < 2)]
    return Intermediates(np.concatenate([p.logits for p in parts]),
                         *(np.concatenate([getattr(p, f) for p in parts], axis=1)
                           for f in ("beta", "kl", "scores")))


# ------------------------------------------------------------------------------------------------
# Captions and summaries
# ------------------------------------------------------------------------------------------------


def caption_for(seq: TokenSequence, checkpoint: str, cfg: Any) -> dict[str, Any]:
    """Caption dict of :mod:`diagnostics.figures` / :mod:`diagnostics.html` (with κ)."""
    source = seq.source
    if cfg.attention_pattern != "full":
        source += f"; {cfg.attention_pattern} attention (window {cfg.attention_window})"
    return {"source": source, "text_preview": seq.preview(),
            "checkpoint": f"{checkpoint}, \u03ba = {cfg.kappa_beta:.3g}",
            "self_attention_masked": bool(cfg.mask_self_attention)}


def legacy_kl_row_std(kl_heads: np.ndarray) -> float:
    """Per-row std of the head-mean KL over all off-diagonal keys, averaged over rows."""
    return float(attn_stats.row_std_legacy(np.asarray(kl_heads, np.float64).mean(0)))


def _num(v: float) -> str:
    """3 decimals, or 2 significant digits for small non-zero values (so 2e-05 is not 0.000)."""
    return f"{v:.1e}" if 0 < abs(v) < 5e-4 else f"{v:.3f}"


def _token_line(tokens: Sequence[bytes | str], limit: int = 25) -> str:
    """``tok | tok | …`` of the first ``limit`` tokens (spaces shown as ␣)."""
    shown = " | ".join(format_tokens(tokens[:limit], max_len=14))
    return shown + (f" | \u2026 +{len(tokens) - limit} more" if len(tokens) > limit else "")


def context_summary(seq: TokenSequence, head_labels: Sequence[str], beta: np.ndarray,
                    kl: np.ndarray, stats: Sequence[Mapping[str, Any]], *,
                    checkpoint: str, kappa: float, batch: int = 0,
                    layers: Sequence[int] | None = None) -> str:
    """Seed 002's console summary, per layer: per-head, averaged and KL row_std.

    Values are the figures' (valid keys: a query's own and earlier tokens); the reference's
    formula (all off-diagonal keys, future ≈1e-8 entries included) follows in parentheses.

    Args:
        seq: the sequence.
        head_labels: H irrep labels.
        beta: ``(L, B, H, N, N)``.
        kl: ``(L, B, H, N, N)``.
        stats: per drawn layer the ``FigureRecord.stats`` of ``plot_attention_with_context``.
        checkpoint: checkpoint description.
        kappa: κ.
        batch: batch element.
        layers: the layers ``stats`` belong to (default: all, in order).

    Returns:
        The text.
    """
    layers = list(range(beta.shape[0])) if layers is None else list(layers)
    if len(layers) != len(stats):
        raise ValueError(f"{len(stats)} stats for layers {layers}")
    rule = "=" * 88
    lines = [rule, "ATTENTION DIAGNOSTIC SUMMARY", rule,
             f"Sequence:   {seq.source}",
             f"Text:       \u201c{seq.preview()}\u2026\u201d",
             f"Tokens:     {_token_line(seq.tokens)}",
             f"Length:     {len(seq)} tokens    heads: {len(head_labels)}    "
             f"layers: {beta.shape[0]}",
             f"Checkpoint: {checkpoint}    \u03ba = {kappa:.4g}",
             "row_std = mean over queries of the std of \u03b2 over valid keys (j \u2264 i); "
             f"{attn_stats.STATUS_RULE}",
             "          (in parentheses: the reference's formula over all j \u2260 i, "
             "future keys included)"]
    for li, st in zip(layers, stats, strict=True):
        legacy = attn_stats.row_std_legacy(beta[li, batch])
        avg_legacy = float(attn_stats.row_std_legacy(beta[li, batch].mean(0)))
        lines += ["-" * 88, f"Layer {li}:"]
        for h, (lab, v) in enumerate(zip(head_labels, st["row_std"], strict=True)):
            lines.append(f"  Head {h:>2} ({lab:<6}): row_std = {_num(v):>7}  [{attn_stats.status(v):<7}]  "
                         f"(ref. {_num(legacy[h])})")
        avg = float(st["row_std_avg"])
        lines.append(f"  AVERAGED       : row_std = {_num(avg):>7}  [{attn_stats.status(avg):<7}]  "
                     f"(ref. {_num(avg_legacy)})  <- head mean; hides per-head patterns")
        spread = st.get("kl_spread")
        if spread is not None and math.isfinite(spread):
            ref_kl = legacy_kl_row_std(kl[li, batch])
            lines.append(f"  KL matrix      : row_std of KL/\u03ba = {_num(spread)}  (ref. KL "
                         f"row_std {_num(ref_kl)}; threshold {KL_UNIFORM_THRESHOLD})")
            if spread < KL_UNIFORM_THRESHOLD:
                lines.append(f"  -> KL too uniform (spread {_num(spread)} < "
                             f"{KL_UNIFORM_THRESHOLD}): the beliefs barely differ, so "
                             "\u03b2 = softmax(\u2212KL/\u03ba) is near uniform")
    lines.append(rule)
    return "\n".join(lines)


def samples_header(seqs: Sequence[TokenSequence], checkpoint: str, cfg: Any, *,
                   requested: int | None = None) -> str:
    """Checkpoint line and one source + preview entry per sample (multi-sample reports)."""
    masked = "yes" if cfg.mask_self_attention else "no"
    short = f" of {requested} requested" if requested and len(seqs) < requested else ""
    lines = [f"Checkpoint: {checkpoint}; \u03ba = {cfg.kappa_beta:.4g}; self-attention masked: "
             f"{masked}", f"Samples ({len(seqs)}{short}, {len(seqs[0])} tokens each):"]
    lines += [f"  s{i}: {s.source}\n      \u201c{s.preview()}\u2026\u201d"
              for i, s in enumerate(seqs)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Script plumbing (shared argparse options and their interpretation)
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ScriptResult:
    """What a script's ``main`` returns (for in-process callers and tests).

    Attributes:
        figures: every :class:`~diagnostics.figures.FigureRecord` written.
        files: other files written (HTML, exports, reports).
        report: the console text.
        sequences: the input sequences.
        captured: the captured attention.
        cfg: the model config.
        checkpoint: the checkpoint description.
    """

    figures: list = dataclasses.field(default_factory=list)
    files: list[Path] = dataclasses.field(default_factory=list)
    report: str = ""
    sequences: list[TokenSequence] = dataclasses.field(default_factory=list)
    captured: Intermediates | None = None
    cfg: Any = None
    checkpoint: str = ""


def add_model_arguments(p: Any) -> None:
    """``--checkpoint``, ``--config``, ``--seed``, ``--tokenizer``, ``--dpi`` and seed 004's
    random-model size flags."""
    p.add_argument("--checkpoint", help="reference .pt, converted or native checkpoint directory; "
                   "omitted: random weights (stated in every caption)")
    p.add_argument("--config", help="model config (YAML/JSON: gaugeformer, run config or "
                   "reference dict); defines the random model, or overrides the files beside a .pt")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights / random ids")
    p.add_argument("--tokenizer", default="auto", choices=("auto", "gpt2", "bytes"),
                   help="auto: bytes for V=256, GPT-2 BPE otherwise")
    p.add_argument("--dpi", type=int, default=150, help="PNG resolution")
    size = p.add_argument_group("random model size (seed 004; without --checkpoint)")
    size.add_argument("--embedding-dimension", type=int, metavar="K",
                      help="embedding dimension K of the random model")
    size.add_argument("--number-of-heads", type=int, metavar="H",
                      help="heads: K is split into H SO(3) irreps of odd dimension (printed)")
    size.add_argument("--number-of-layers", type=int, metavar="L", help="layers")


def add_source_arguments(p: Any, *, default_mode: str, default_text: str | None = None) -> None:
    """``--mode``, ``--text``, ``--dataset``, ``--data-files``, ``--seq-len``, ``--index``."""
    p.add_argument("--mode", choices=("text", "validation", "random"), default=default_mode)
    p.add_argument("--text", default=default_text, help="input text (--mode text)")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="validation data (default wikitext-2; GPT-2 BPE via tiktoken, bytes for "
                   "V=256 models); also the corpus a restricted GPT-2 vocabulary is rebuilt from")
    p.add_argument("--data-files", nargs="+", metavar="[SPLIT=]PATH",
                   help="local WikiText-format files instead of the hub (offline), e.g. "
                   "validation=wiki.valid.raw train=wiki.train.raw; a bare path is validation")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per window (validation/random)")
    p.add_argument("--index", type=int, default=0,
                   help="validation window (non-overlapping windows of --seq-len; 0 = the first)")


def load_model_from_args(args: Any) -> Loaded:
    """:func:`gaugeformer.load` of ``--checkpoint`` (``--config`` overrides a reference file's
    config), or :func:`gaugeformer.loading.random_model` without one (``--config`` or the small
    default, resized by seed 004's ``--embedding-dimension/--number-of-heads/--number-of-layers``)."""
    if args.checkpoint:
        return load(args.checkpoint, config=args.config)
    hint = BYTE_VOCAB if args.tokenizer == "bytes" else GPT2_N_VOCAB
    loaded = random_model(args.config, vocab_size=hint, seed=args.seed,
                          embed_dim=getattr(args, "embedding_dimension", None),
                          n_heads=getattr(args, "number_of_heads", None),
                          n_layers=getattr(args, "number_of_layers", None))
    if getattr(args, "embedding_dimension", None) or getattr(args, "number_of_heads", None):
        cfg = loaded.config
        print(f"random model: K={cfg.embed_dim} as irreps {cfg.irreps} (heads "
              f"{', '.join(cfg.head_labels)}), {cfg.n_layers} layers")
    return loaded


def pick_tokenizer(vocab_size: int, name: str, saved: Tokenizer | None, **kwargs
                   ) -> Tokenizer:
    """The checkpoint's own tokenizer (``Loaded.tokenizer``) unless ``name`` asks for another;
    else :func:`~gaugeformer.data.corpus.resolve_tokenizer` (``kwargs``: its corpus arguments)."""
    if saved is not None and name in ("auto", saved.name):
        return saved
    return resolve_tokenizer(vocab_size, name, **kwargs)


def sequences_from_args(args: Any, cfg: Any, *, count: int = 1,
                        tokenizer: Tokenizer | None = None) -> list[TokenSequence]:
    """Input sequences for ``args.mode`` (``count`` windows; text mode: one, or windows);
    ``tokenizer`` is the loaded checkpoint's (``Loaded.tokenizer``)."""
    mode = getattr(args, "mode", "text")
    files = parse_data_files(getattr(args, "data_files", None))
    seq_len = min(getattr(args, "seq_len", cfg.max_seq_len), cfg.max_seq_len)
    if mode == "random":
        try:
            tok = pick_tokenizer(cfg.vocab_size, args.tokenizer, tokenizer)
        except ValueError:  # no tokenizer fits (or a restricted vocabulary): ids as labels
            tok = None
        return random_sequences(cfg.vocab_size, seq_len=seq_len, count=count, seed=args.seed,
                                tok=tok)
    dataset = getattr(args, "dataset", None) or ("wikitext-2" if mode == "validation" else None)
    tok = pick_tokenizer(cfg.vocab_size, args.tokenizer, tokenizer, vocab_dataset=dataset,
                         data_files=files)
    if mode == "validation":
        return validation_sequences(dataset, tok, seq_len=seq_len, start=getattr(args, "index", 0),
                                    count=count, data_files=files)
    if not args.text:
        raise ValueError("--mode text needs --text")
    if count == 1:
        return [text_sequence(args.text, tok, max_len=cfg.max_seq_len)]
    return text_windows(args.text, tok, seq_len=seq_len, count=count)


def check_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    """Validated ``--layers`` (default: every layer)."""
    if not layers:
        return list(range(n_layers))
    bad = [li for li in layers if not 0 <= li < n_layers]
    if bad:
        raise ValueError(f"--layers {bad}: the model has {n_layers} layers (0\u2026{n_layers - 1})")
    return list(dict.fromkeys(layers))


def show_pngs(paths: Sequence[Any]) -> None:
    """Opens written PNGs in interactive matplotlib windows (``--show-plots``)."""
    # pyplot (and its GUI backend) only when windows are asked for
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    for path in paths:
        img = mpimg.imread(str(path))
        fig = plt.figure(figsize=(img.shape[1] / 100, img.shape[0] / 100))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.imshow(img)
        ax.set_axis_off()
        if fig.canvas.manager is not None:
            fig.canvas.manager.set_window_title(Path(str(path)).name)
    plt.show()
    plt.close("all")
