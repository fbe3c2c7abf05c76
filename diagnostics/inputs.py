"""The report's input batch ``[B, N]``: text, validation windows, random or explicit ids."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gaugeformer.data.tokenizer import GPT2_EOT, Tokenizer

from diagnostics import capture as C

DEFAULT_TEXT = (
    "The river rose after three days of rain, and the village moved its boats to higher ground. "
    "Old maps of the valley show the same river in a different bed, and the villagers say that "
    "the river still remembers where it used to run."
)



@dataclasses.dataclass(frozen=True)
class ReportInputs:
    """The analysed batch.

    Attributes:
        tokens: ``[B, N]`` int32 model ids; targets are ``tokens[:, 1:]``.
        sources: one description per row.
        preview: the first characters of row 0 (decoded) or its ids.
        tokenizer: tokenizer description (or ``"none"``).
        special_ids: ids counted as special tokens in part 3.
    """

    tokens: np.ndarray
    sources: tuple[str, ...]
    preview: str
    tokenizer: str
    special_ids: tuple[int, ...]


def _special_ids(tok: Tokenizer | None) -> tuple[int, ...]:
    """GPT-2's end-of-text id (mapped into a restricted vocabulary when kept); none for bytes."""
    if tok is None or tok.name != "gpt2":
        return ()
    if tok.kept_ids is None:
        return (GPT2_EOT,) if tok.vocab_size > GPT2_EOT else ()
    kept = tok.kept_ids
    pos = int(np.searchsorted(kept, GPT2_EOT))
    return (pos,) if pos < kept.size and kept[pos] == GPT2_EOT else ()


def _read_ids(spec: str) -> np.ndarray:
    """``--ids``: a ``.npy`` / ``.npz`` (key ``tokens``) file, a text file of ints, or ``1,2,3``."""
    path = Path(spec)
    if path.suffix == ".npy" and path.is_file():
        return np.load(path)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path) as data:
            if "tokens" not in data.files:
                raise ValueError(f"{path}: no 'tokens' array (has {data.files})")
            return data["tokens"]
    text = path.read_text() if path.is_file() else spec
    rows = [r for r in text.replace(";", "\n").splitlines() if r.strip()]
    return np.asarray([[int(x) for x in r.replace(",", " ").split()] for r in rows])


def build_inputs(
    cfg: Any,
    *,
    tokens: np.ndarray | str | None = None,
    text: str | None = None,
    dataset: str | None = None,
    data_files: Mapping[str, Any] | Sequence[str] | None = None,
    random: bool = False,
    seq_len: int | None = None,
    batch: int | None = None,
    seed: int = 0,
    tokenizer: str = "auto",
    special_ids: Sequence[int] | None = None,
    saved_tokenizer: Tokenizer | None = None,
) -> ReportInputs:
    """The input batch for the report, first match wins: ``tokens``, ``random``, ``dataset``,
    ``text``, else a built-in text (random ids when no tokenizer fits the vocabulary).

    Args:
        cfg: the model config (vocabulary, ``max_seq_len``).
        tokens: explicit ids ``[N]`` / ``[B, N]`` or an ``--ids`` spec (file or ``1,2,3``).
        text: input text; longer than ``seq_len`` tokens gives up to ``batch`` windows.
        dataset: ``wikitext-2`` / ``wikitext-103`` / ``embedded`` validation windows.
        data_files: local WikiText-format files (``{split: [paths]}`` or ``["split=path"]``).
        random: random ids in ``[0, V)``.
        seq_len: tokens per sequence (default and cap: ``cfg.max_seq_len``).
        batch: sequences ``B`` (default 1; explicit 2-D ids keep all rows).
        seed: seed of random ids.
        tokenizer: ``auto`` / ``gpt2`` / ``bytes``.
        special_ids: override the special-token ids (default: GPT-2's end-of-text when GPT-2).
        saved_tokenizer: the checkpoint's tokenizer (used unless ``tokenizer`` names another).
    """
    seq_len = min(int(seq_len or cfg.max_seq_len), cfg.max_seq_len)
    count = max(1, int(batch or 1))
    if isinstance(data_files, (list, tuple)):
        data_files = C.parse_data_files(data_files)
    tok: Tokenizer | None = None
    if tokens is not None:
        arr = _read_ids(tokens) if isinstance(tokens, str) else np.asarray(tokens)
        arr = np.atleast_2d(arr).astype(np.int64)
        if arr.ndim != 2:
            raise ValueError(f"token ids must be [N] or [B, N], got shape {arr.shape}")
        arr = arr[: int(batch)] if batch else arr
        arr = arr[:, :seq_len]
        try:
            tok = C.pick_tokenizer(cfg.vocab_size, tokenizer, saved_tokenizer)
        except ValueError:
            tok = None
        seqs = [C.sequence_from_ids(r, tok, f"given ids, row {k}") for k, r in enumerate(arr)]
    elif random:
        seqs = C.random_sequences(cfg.vocab_size, seq_len=seq_len, count=count, seed=seed,
                                  high=cfg.vocab_size)
    elif dataset is not None:
        tok = C.pick_tokenizer(cfg.vocab_size, tokenizer, saved_tokenizer, vocab_dataset=dataset,
                               data_files=data_files)
        seqs = C.validation_sequences(dataset, tok, seq_len=seq_len, count=count,
                                      data_files=data_files)
    else:
        source = "user-provided text" if text else "built-in example text"
        try:
            tok = C.pick_tokenizer(cfg.vocab_size, tokenizer, saved_tokenizer)
        except ValueError:
            if text:
                raise
            tok = None
        if tok is None:
            seqs = C.random_sequences(cfg.vocab_size, seq_len=seq_len, count=count, seed=seed,
                                      high=cfg.vocab_size)
        else:
            body = text or DEFAULT_TEXT
            n_tok = tok.encode(body).size
            if count > 1 and n_tok >= 2 * seq_len:
                seqs = C.text_windows(body, tok, seq_len=seq_len, count=count, source=source)
            else:
                seqs = [C.text_sequence(body, tok, max_len=seq_len, source=source)]
    if not seqs:
        raise ValueError("no input sequences")
    ids = np.stack([s.ids for s in seqs]).astype(np.int32)
    if ids.shape[1] < 2:
        raise ValueError("the report needs at least 2 tokens per sequence (next-token targets)")
    if ids.min() < 0 or ids.max() >= cfg.vocab_size:
        raise ValueError(f"token ids outside the model vocabulary [0, {cfg.vocab_size})")
    specials = _special_ids(tok) if special_ids is None else tuple(int(s) for s in special_ids)
    return ReportInputs(ids, tuple(s.source for s in seqs), seqs[0].preview(),
                        "none (ids only)" if tok is None else tok.describe(), specials)
