"""Corpora → token datasets: WikiText-2/103 and the embedded Botchan novel, cleaned, tokenised
and cached.

* **Sources.** WikiText-2 / WikiText-103 raw (``Salesforce/wikitext``, configs ``wikitext-2-raw-v1``
  / ``wikitext-103-raw-v1``) through ``datasets.load_dataset``; or local WikiText-format files
  (``wiki.train.raw`` …) through the ``text`` builder with ``keep_linebreaks=True``, which yields
  the same rows; or the embedded Botchan novel (``gaugeformer/assets/botchan.txt``, no network).
* **Text → ids.** The reference's cleaning and one GPT-2 BPE encode per split
  (:mod:`gaugeformer.data.text`); unlike the reference, token arrays are cached as ``.npy``
  (:mod:`gaugeformer.data.cache`).
* **Vocabulary (§9.3).** Full vocabulary unless ``vocab_size`` is smaller than the tokenizer's; then
  the reference's frequency-ranked restriction (:mod:`gaugeformer.data.vocab`).
  :func:`resolve_tokenizer` rebuilds that restriction for a model whose checkpoint does not record
  its kept ids.

Batches of a :class:`TokenDataset`: :mod:`gaugeformer.data.batches`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gaugeformer.data import cache
from gaugeformer.data.text import clean_wikitext_rows, encode_text
from gaugeformer.data.tokenizer import (
    BYTE_VOCAB,
    GPT2_N_VOCAB,
    Tokenizer,
    encoding,
)
from gaugeformer.data.vocab import VocabMap, restrict_vocab

WIKITEXT_HUB_ID = "Salesforce/wikitext"
WIKITEXT_CONFIGS: dict[str, str] = {
    "wikitext-2": "wikitext-2-raw-v1",
    "wikitext-103": "wikitext-103-raw-v1",
}
SPLITS = ("train", "validation")
EMBEDDED_CORPUS_PATH = Path(__file__).resolve().parent.parent / "assets" / "botchan.txt"


class DatasetUnavailableError(RuntimeError):
    """A dataset could not be loaded (offline, not cached, missing files)."""



# ------------------------------------------------------------------------------------------------
# Datasets
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TokenDataset:
    """Token ids of the training and validation splits.

    Attributes:
        train: Training ids, int32, 1-D.
        validation: Validation ids, int32, 1-D.
        vocab_size: Model vocabulary size (every id is below it).
        tokenizer: Tokenizer name (``"gpt2"`` or ``"bytes"``).
        source: Human-readable description of where the text came from.
        vocab_map: The restriction applied, if any (``None`` = raw tokenizer ids).
    """

    train: np.ndarray
    validation: np.ndarray
    vocab_size: int
    tokenizer: str
    source: str
    vocab_map: VocabMap | None = None

    def summary(self) -> str:
        """One line: source, tokenizer, vocabulary and split sizes."""
        return (
            f"{self.source}: tokenizer={self.tokenizer} V={self.vocab_size} "
            f"train={len(self.train):,} validation={len(self.validation):,} tokens"
        )


# ------------------------------------------------------------------------------------------------
# WikiText
# ------------------------------------------------------------------------------------------------


def _normalise_files(files: str | Path | Sequence[str | Path]) -> list[Path]:
    items = [files] if isinstance(files, (str, Path)) else list(files)
    return [Path(p) for p in items]


def _offline_hint(dataset: str) -> str:
    return (
        f"{dataset} could not be loaded from the Hugging Face hub ({WIKITEXT_HUB_ID}, "
        f"{WIKITEXT_CONFIGS.get(dataset, '?')}) or its local cache. Either run once with "
        "network access (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE unset) so that `datasets` caches "
        "it under HF_HOME, or get the raw WikiText files (wiki.train.raw, wiki.valid.raw) and "
        "pass them with --data-files (data_files={'train': ..., 'validation': ...}); "
        "or use the embedded corpus."
    )


def load_wikitext_rows(
    dataset: str,
    split: str,
    *,
    data_files: Mapping[str, str | Path | Sequence[str | Path]] | None = None,
    hf_cache_dir: str | Path | None = None,
) -> list[str]:
    """Load the raw rows of one split through ``datasets.load_dataset``.

    Args:
        dataset: ``"wikitext-2"`` or ``"wikitext-103"``.
        split: ``"train"`` or ``"validation"`` (``"test"`` also works).
        data_files: Local WikiText-format files per split; read with the ``text`` builder and
            ``keep_linebreaks=True`` (one row per line, trailing ``\\n`` kept, like the hub rows).
        hf_cache_dir: ``cache_dir`` for ``datasets`` (default: under ``HF_HOME``).

    Returns:
        The ``text`` column as a list of strings.

    Raises:
        DatasetUnavailableError: Offline without a cached copy, or missing local files.
    """
    import datasets

    cache = str(hf_cache_dir) if hf_cache_dir is not None else None
    if data_files is not None:
        if split not in data_files:
            raise DatasetUnavailableError(
                f"data_files has no {split!r} entry: {sorted(data_files)}"
            )
        paths = _normalise_files(data_files[split])
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise DatasetUnavailableError(f"{dataset} {split}: data files not found: {missing}")
        ds = datasets.load_dataset(
            "text",
            data_files={split: [str(p) for p in paths]},
            split=split,
            keep_linebreaks=True,
            cache_dir=cache,
        )
    else:
        if dataset not in WIKITEXT_CONFIGS:
            raise ValueError(
                f"unknown dataset {dataset!r}; expected one of {sorted(WIKITEXT_CONFIGS)}"
            )
        try:
            ds = datasets.load_dataset(
                WIKITEXT_HUB_ID, WIKITEXT_CONFIGS[dataset], split=split, cache_dir=cache
            )
        except Exception as err:  # offline, not cached, hub errors: all mean "not available here"
            raise DatasetUnavailableError(
                f"{_offline_hint(dataset)} [{type(err).__name__}: {err}]"
            ) from err
    return list(ds["text"])


def _source_tag(dataset: str, split: str, data_files: Mapping[str, Any] | None) -> tuple[str, str]:
    if data_files is None:
        config = WIKITEXT_CONFIGS.get(dataset, dataset)
        return config, f"{WIKITEXT_HUB_ID} {config}"
    paths = _normalise_files(data_files[split]) if split in data_files else []
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        raise DatasetUnavailableError(
            f"{dataset} {split}: data files not found: {missing or paths}"
        )
    digest = cache.sha256_files(paths)[:16]
    return f"{dataset}-files-{digest}", f"{dataset} files {[str(p) for p in paths]}"


def load_wikitext_split(
    dataset: str,
    split: str,
    *,
    tokenizer: str = "gpt2",
    data_files: Mapping[str, str | Path | Sequence[str | Path]] | None = None,
    cache_dir: str | Path | None = None,
    hf_cache_dir: str | Path | None = None,
    progress: bool | None = None,
) -> np.ndarray:
    """Token ids (int32, raw tokenizer ids) of one cleaned split, cached as ``.npy``.

    A cache hit needs neither ``datasets`` nor the network. The key covers the dataset (hub config,
    or sha256 of the local files), split, tokenizer and :data:`CLEANING_VERSION`.

    Args:
        dataset: ``"wikitext-2"`` or ``"wikitext-103"``.
        split: Split name.
        tokenizer: ``"gpt2"`` or ``"bytes"``.
        data_files: Optional local WikiText-format files per split.
        cache_dir: Token cache directory (default
            :func:`~gaugeformer.data.cache.default_cache_dir`).
        hf_cache_dir: ``datasets`` cache directory.
        progress: Tokenisation progress bar (``None`` = automatic).

    Returns:
        1-D ``np.int32`` array.
    """
    tag, _ = _source_tag(dataset, split, data_files)
    path = cache.token_cache_path(cache_dir or cache.default_cache_dir(), tag, split, tokenizer)
    cached = cache.read_tokens(path)
    if cached is not None:
        return cached
    rows = load_wikitext_rows(dataset, split, data_files=data_files, hf_cache_dir=hf_cache_dir)
    text = clean_wikitext_rows(rows)
    tokens = encode_text(text, tokenizer, progress=progress, desc=f"{dataset}/{split}")
    cache.write_tokens(path, tokens)
    return tokens



def load_wikitext(
    dataset: str = "wikitext-2",
    *,
    tokenizer: str = "gpt2",
    data_files: Mapping[str, str | Path | Sequence[str | Path]] | None = None,
    cache_dir: str | Path | None = None,
    hf_cache_dir: str | Path | None = None,
    vocab_size: int | None = None,
    progress: bool | None = None,
) -> TokenDataset:
    """Load, clean, tokenise (cached) and optionally vocabulary-restrict WikiText train/validation.

    Args:
        dataset: ``"wikitext-2"`` or ``"wikitext-103"``.
        tokenizer: ``"gpt2"`` or ``"bytes"``.
        data_files: Local WikiText-format files, e.g. ``{"train": "wiki.train.raw",
            "validation": "wiki.valid.raw"}``; ``None`` = the hub dataset.
        cache_dir: Token cache directory.
        hf_cache_dir: ``datasets`` cache directory.
        vocab_size: Requested model vocabulary; restricted only if below the tokenizer's.
        progress: Tokenisation progress bar (``None`` = automatic).

    Returns:
        A :class:`TokenDataset`.

    Raises:
        DatasetUnavailableError: The data cannot be had offline (message says how to get it).
    """
    splits = {
        split: load_wikitext_split(
            dataset,
            split,
            tokenizer=tokenizer,
            data_files=data_files,
            cache_dir=cache_dir,
            hf_cache_dir=hf_cache_dir,
            progress=progress,
        )
        for split in SPLITS
    }
    n_vocab = encoding(tokenizer).n_vocab
    train, val, vocab, vmap = restrict_vocab(
        splits["train"], splits["validation"], vocab_size, n_vocab
    )
    _, desc = _source_tag(dataset, "train", data_files)
    return TokenDataset(train, val, vocab, tokenizer, desc, vmap)


# ------------------------------------------------------------------------------------------------
# Embedded corpus (no network)
# ------------------------------------------------------------------------------------------------


def load_embedded_corpus() -> str:
    """The embedded Botchan novel (public domain; see ``gaugeformer/assets/README.md``).

    Returns:
        The text with Project Gutenberg header and footer removed: 3,959 lines wrapped at ~72
        columns, ``\\n`` line ends, no blank lines.
    """
    return EMBEDDED_CORPUS_PATH.read_text(encoding="utf-8")


def split_embedded_corpus(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """Deterministic split: the last ``val_fraction`` of the characters, cut at a line start.

    Returns:
        ``(train_text, validation_text)``; their concatenation is ``text``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be in (0, 1)")
    target = (1.0 - val_fraction) * len(text)
    offset = 0
    for line in text.splitlines(keepends=True):
        if offset >= target:
            break
        offset += len(line)
    return text[:offset], text[offset:]


def load_embedded_dataset(
    tokenizer: str = "gpt2", *, val_fraction: float = 0.1, vocab_size: int | None = None
) -> TokenDataset:
    """Tokenised embedded corpus: train = first ~90 % of the text, validation = the rest."""
    train_text, val_text = split_embedded_corpus(load_embedded_corpus(), val_fraction)
    tok = encoding(tokenizer)
    train, val = encode_text(train_text, tok), encode_text(val_text, tok)
    train, val, vocab, vmap = restrict_vocab(train, val, vocab_size, tok.n_vocab)
    source = f"embedded Botchan ({EMBEDDED_CORPUS_PATH.name}; validation = last {val_fraction:.0%})"
    return TokenDataset(train, val, vocab, tokenizer, source, vmap)


def make_wikitext_format_file(
    path: str | Path, *, n_articles: int = 2, paragraphs: int = 2, seed: int = 0, unk: bool = False
) -> Path:
    """Write a small deterministic file in raw WikiText format (for tests and examples).

    Lines look like the raw dumps: ``" = Title = "``, ``" = = Section = = "``, blank lines holding a
    single space, numbers written as ``1 @,@ 000`` / ``3 @.@ 5``, hyphens as ``well @-@ known``;
    every line ends with ``\\n``. With ``unk=True`` some words are ``<unk>``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    rng = np.random.default_rng(seed)
    words = "the a game of war history river song team city new first year was is in".split()
    lines: list[str] = [" \n"]

    def sentence() -> str:
        body = " ".join(rng.choice(words, size=int(rng.integers(5, 12))))
        extra = f"{int(rng.integers(1, 10))} @,@ {int(rng.integers(100, 1000))} people"
        tail = f"well @-@ known , {int(rng.integers(1, 10))} @.@ {int(rng.integers(0, 10))} km"
        filler = " <unk>" if unk and rng.random() < 0.5 else ""
        return f"{body.capitalize()} {extra}{filler} , {tail} ."

    for art in range(n_articles):
        lines += [f" = Article {art} = \n", " \n"]
        for sec in range(2):
            if sec:
                lines += [f" = = Section {sec} = = \n", " \n"]
            for _ in range(paragraphs):
                lines += [" " + " ".join(sentence() for _ in range(3)) + " \n", " \n"]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(lines), encoding="utf-8", newline="\n")
    return out


# ------------------------------------------------------------------------------------------------
# A restricted vocabulary rebuilt from its corpus
# ------------------------------------------------------------------------------------------------


def restricted_vocab_map(dataset: str, vocab_size: int, *,
                         data_files: Mapping[str, Any] | None = None) -> VocabMap:
    """The reference's frequency-ranked GPT-2 vocabulary restriction, rebuilt from ``dataset``.

    Args:
        dataset: ``"wikitext-2"``, ``"wikitext-103"`` or ``"embedded"`` (the corpus the model
            was trained on; the restriction depends on its training split).
        vocab_size: the model's V.
        data_files: local WikiText-format files (need a ``train`` entry).
    """
    if dataset == "embedded":
        ds = load_embedded_dataset("gpt2", vocab_size=vocab_size)
    else:
        ds = load_wikitext(dataset, tokenizer="gpt2", data_files=data_files,
                           vocab_size=vocab_size)
    return ds.vocab_map


def resolve_tokenizer(vocab_size: int, name: str = "auto", *, vocab_dataset: str | None = None,
                      data_files: Mapping[str, Any] | None = None) -> Tokenizer:
    """The tokenizer for a model vocabulary that has no tokenizer record.

    ``auto``: V = 256 → bytes; V ≥ 50257 → GPT-2; 256 < V < 50257 → GPT-2 restricted to V
    ids (the reference's rule), which needs ``vocab_dataset`` (the training corpus) to rebuild.

    Raises:
        ValueError: no tokenizer fits (the message says what to pass).
    """
    v = int(vocab_size)
    if name == "auto":
        name = "bytes" if v == BYTE_VOCAB else "gpt2"
        if v < BYTE_VOCAB:
            raise ValueError(
                f"model vocabulary V={v} fits neither the byte tokenizer (256) nor GPT-2 "
                "(50257); use --mode random, or a model config with vocab_size 256 or 50257")
    if name == "bytes":
        if v < BYTE_VOCAB:
            raise ValueError(f"the byte tokenizer needs V >= 256; the model has V={v}")
        return Tokenizer("bytes", v)
    if name != "gpt2":
        raise ValueError(f"unknown tokenizer {name!r}; expected auto, gpt2 or bytes")
    if v >= GPT2_N_VOCAB:
        return Tokenizer("gpt2", v)
    if vocab_dataset is None:
        raise ValueError(
            f"model vocabulary V={v} is a restricted GPT-2 vocabulary (the reference keeps the "
            f"{v - 1} most frequent training ids + UNK); rebuilding it needs the training corpus: "
            "pass --dataset wikitext-2|wikitext-103|embedded (and --data-files train=... offline)")
    vmap = restricted_vocab_map(vocab_dataset, v, data_files=data_files)
    return Tokenizer("gpt2", v, vmap.kept_ids)
