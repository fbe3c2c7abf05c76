"""Text corpora → token arrays → (x, y) batches.

Follows the reference data pipeline (spec ref-diagnostics §9) where it matters for results, and
departs from it where the reference was incomplete:

* **Sources.** WikiText-2 / WikiText-103 raw (``Salesforce/wikitext``, configs ``wikitext-2-raw-v1``
  / ``wikitext-103-raw-v1``) through ``datasets.load_dataset``; or local WikiText-format files
  (``wiki.train.raw`` …) through the ``text`` builder with ``keep_linebreaks=True``, which yields
  the same rows; or the embedded Botchan novel (``gaugeformer/assets/botchan.txt``, no network).
* **Cleaning (§9.2, exactly as the reference).** Drop rows whose ``strip()`` is empty, join the
  remaining rows *unstripped* with ``"\\n\\n"``; if the text contains ``<unk>``, delete it and
  collapse runs of spaces/tabs to one space; then ``" @-@ "→"-"``, ``" @,@ "→","``, ``" @.@ "→"."``.
* **Tokenisation.** One GPT-2 BPE encode of the whole split (no BOS/EOS). Large texts are encoded in
  chunks cut only between a non-space and a space character, where tiktoken's r50k regex always has
  a pre-token boundary, so the ids equal those of a single ``encode`` call. Unlike the reference,
  token arrays are cached as ``.npy``.
* **Vocabulary (§9.3).** Full vocabulary unless ``vocab_size`` is smaller than the tokenizer's; then
  the reference's frequency-ranked restriction (:class:`VocabMap`).
* **Batches (§9.4).** Training: stride-1 windows of length N+1, shuffled per epoch, ``drop_last``;
  here the order is a pure function of an integer step (:class:`TrainBatches`), so training
  resumes exactly. Evaluation: the reference scored only the first 5 validation batches (tokens
  0…213); :class:`EvalBatches` scores **every** validation token once (non-overlapping windows and
  a mask).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from gaugeformer.data.tokenizer import (
    ByteTokenizer,
    Tokenizer,
    get_tokenizer,
    original_ids,
    restrict_ids,
)

# Bump when the cleaning or tokenisation rules change: it is part of every cache key.
CLEANING_VERSION = "wikitext-clean-ref826c807-v1"
WIKITEXT_HUB_ID = "Salesforce/wikitext"
WIKITEXT_CONFIGS: dict[str, str] = {
    "wikitext-2": "wikitext-2-raw-v1",
    "wikitext-103": "wikitext-103-raw-v1",
}
SPLITS = ("train", "validation")
PAD_ID = 0  # the reference's pad_token_id (a real GPT-2 token, "!")
DEFAULT_CHUNK_CHARS = 1 << 20
PROGRESS_MIN_CHARS = 4 << 20
EMBEDDED_CORPUS_PATH = Path(__file__).resolve().parent.parent / "assets" / "botchan.txt"
CACHE_ENV_VAR = "GAUGEFORMER_DATA_CACHE"

_SPACE_RUN = re.compile(r"[ \t]+")
_SAFE_CUT = re.compile(r"\S(?=\s)")


class DatasetUnavailableError(RuntimeError):
    """A dataset could not be loaded (offline, not cached, missing files)."""


# ------------------------------------------------------------------------------------------------
# Cleaning (spec §9.2)
# ------------------------------------------------------------------------------------------------


def join_wikitext_rows(rows: Iterable[str]) -> str:
    """Drop rows empty after ``strip()``; join the others, unstripped, with ``"\\n\\n"``."""
    return "\n\n".join(row for row in rows if row.strip())


def clean_wikitext_text(text: str) -> str:
    """Apply the reference's text fixes to an already joined split.

    If ``<unk>`` occurs, every ``<unk>`` is deleted and runs of spaces/tabs become one space
    (newlines stay). Then, always, ``" @-@ "→"-"``, ``" @,@ "→","`` and ``" @.@ "→"."``, in that
    order.
    """
    if "<unk>" in text:
        text = _SPACE_RUN.sub(" ", text.replace("<unk>", ""))
    return text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")


def clean_wikitext_rows(rows: Iterable[str]) -> str:
    """Rows of one split → the single cleaned string that is tokenised (join, then clean)."""
    return clean_wikitext_text(join_wikitext_rows(rows))


# ------------------------------------------------------------------------------------------------
# Tokenisation
# ------------------------------------------------------------------------------------------------


def safe_cut_points(text: str, chunk_chars: int) -> list[int]:
    """Offsets ``0 = c0 < c1 < … < ck = len(text)`` for chunked BPE encoding.

    Every inner cut lies between a non-whitespace and a whitespace character. No alternative of the
    r50k pre-tokenisation regex can match across such a position, and the regex has no look-behind,
    so encoding the chunks separately and concatenating gives exactly the ids of one
    ``encode(text)``. Chunks are about ``chunk_chars`` long (longer where no such position exists).
    """
    if chunk_chars < 1:
        raise ValueError("chunk_chars must be >= 1")
    cuts = [0]
    pos = chunk_chars
    while pos < len(text):
        match = _SAFE_CUT.search(text, pos - 1)
        if match is None:
            break
        cuts.append(match.end())
        pos = match.end() + chunk_chars
    if cuts[-1] != len(text):
        cuts.append(len(text))
    return cuts


def encode_text(
    text: str,
    tokenizer: Tokenizer | str,
    *,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    progress: bool | None = None,
    desc: str = "tokenising",
) -> np.ndarray:
    """Encode a whole split into a flat int32 id array, equal to one ``tokenizer.encode(text)``.

    As in the reference, ``<|endoftext|>`` inside the text is rejected (tiktoken's default), and no
    BOS/EOS ids are added.

    Args:
        text: The cleaned split.
        tokenizer: A tokenizer or its name (``"gpt2"``, ``"bytes"``).
        chunk_chars: Approximate chunk size for the threaded, chunked encode.
        progress: Show a tqdm bar; ``None`` = only for texts over 4 MiB.
        desc: Progress-bar label.

    Returns:
        ``np.int32`` array of token ids.
    """
    tok = get_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    if isinstance(tok, ByteTokenizer):
        return tok.encode_to_numpy(text).astype(np.int32)
    cuts = safe_cut_points(text, chunk_chars)
    chunks = [text[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    show = len(text) >= PROGRESS_MIN_CHARS if progress is None else progress
    batch = hasattr(tok, "encode_batch")
    group = max(1, os.cpu_count() or 1) if batch else 1
    pieces: list[np.ndarray] = []
    from tqdm import tqdm

    with tqdm(total=len(text), desc=desc, unit="char", unit_scale=True, disable=not show) as bar:
        for start in range(0, len(chunks), group):
            part = chunks[start : start + group]
            ids = tok.encode_batch(part, num_threads=group) if batch else [tok.encode(part[0])]
            pieces.extend(np.asarray(x, dtype=np.int32) for x in ids)
            bar.update(sum(len(c) for c in part))
    return np.concatenate(pieces) if pieces else np.zeros((0,), np.int32)


# ------------------------------------------------------------------------------------------------
# Vocabulary restriction (spec §9.3)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class VocabMap:
    """The reference's restricted vocabulary.

    The ``vocab_size − 1`` most frequent training ids (ties: first-seen first), sorted by original
    id, map to ``0 … len(kept_ids) − 1``. Other ids map to UNK: ``vocab_size − 1`` in the training
    split and ``len(kept_ids)`` in validation (the reference's values; they differ only when
    training has fewer than ``vocab_size − 1`` distinct ids).

    Attributes:
        kept_ids: Original ids kept, ascending (int32).
        vocab_size: V, the model's vocabulary size.
    """

    kept_ids: np.ndarray
    vocab_size: int

    @property
    def train_unk(self) -> int:
        """UNK id in the training split (V − 1)."""
        return self.vocab_size - 1

    @property
    def validation_unk(self) -> int:
        """UNK id in the validation split (number of kept ids)."""
        return int(len(self.kept_ids))

    def apply(self, tokens: np.ndarray, unk: int) -> np.ndarray:
        """Map original ids to restricted ids, unknown ones to ``unk``."""
        return restrict_ids(tokens, self.kept_ids, unk)

    def to_original(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Restricted ids → original ids, dropping UNKs (as the reference's ``decode`` does)."""
        return original_ids(ids, self.kept_ids)


def build_vocab_map(train_tokens: np.ndarray, vocab_size: int) -> VocabMap:
    """Rank training ids by frequency (stable: ties in first-seen order) and keep the top V − 1."""
    if vocab_size < 2:
        raise ValueError("vocab_size must be >= 2 (one id is UNK)")
    ids, first, counts = np.unique(train_tokens, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    kept = np.sort(ids[order[: vocab_size - 1]]).astype(np.int32)
    return VocabMap(kept_ids=kept, vocab_size=vocab_size)


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


def default_cache_dir() -> Path:
    """``$GAUGEFORMER_DATA_CACHE`` or ``~/.cache/gaugeformer/tokens``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env) if env else Path.home() / ".cache" / "gaugeformer" / "tokens"


@functools.lru_cache(maxsize=64)
def _sha256_file(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _sha256_files(paths: Sequence[Path]) -> str:
    """Content hash of several files (memoised per path, size and mtime)."""
    digest = hashlib.sha256()
    for path in paths:
        st = path.stat()
        digest.update(_sha256_file(str(path.resolve()), st.st_size, st.st_mtime_ns).encode())
    return digest.hexdigest()


def token_cache_path(cache_dir: str | Path, source_tag: str, split: str, tokenizer: str) -> Path:
    """Cache file for one split: keyed by source, split, tokenizer and the cleaning version."""
    clean = hashlib.sha256(CLEANING_VERSION.encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{source_tag}.{split}.{tokenizer}.clean-{clean}.npy"


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
    digest = _sha256_files(paths)[:16]
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
        cache_dir: Token cache directory (default :func:`default_cache_dir`).
        hf_cache_dir: ``datasets`` cache directory.
        progress: Tokenisation progress bar (``None`` = automatic).

    Returns:
        1-D ``np.int32`` array.
    """
    tag, _ = _source_tag(dataset, split, data_files)
    path = token_cache_path(cache_dir or default_cache_dir(), tag, split, tokenizer)
    if path.is_file():
        return np.load(path).astype(np.int32, copy=False)
    rows = load_wikitext_rows(dataset, split, data_files=data_files, hf_cache_dir=hf_cache_dir)
    text = clean_wikitext_rows(rows)
    tokens = encode_text(text, tokenizer, progress=progress, desc=f"{dataset}/{split}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, tokens)
    os.replace(tmp, path)
    return tokens


def restrict_vocab(
    train: np.ndarray, validation: np.ndarray, vocab_size: int | None, tokenizer_vocab: int
) -> tuple[np.ndarray, np.ndarray, int, VocabMap | None]:
    """Apply the reference's vocabulary rule: restrict only if ``vocab_size < tokenizer_vocab``.

    Returns:
        ``(train, validation, vocab_size, vocab_map)``; unchanged ids and ``tokenizer_vocab`` when
        no restriction applies.
    """
    if vocab_size is None or vocab_size >= tokenizer_vocab:
        return train, validation, tokenizer_vocab, None
    vmap = build_vocab_map(train, vocab_size)
    return (
        vmap.apply(train, vmap.train_unk),
        vmap.apply(validation, vmap.validation_unk),
        vocab_size,
        vmap,
    )


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
    n_vocab = get_tokenizer(tokenizer).n_vocab
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
    tok = get_tokenizer(tokenizer)
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
# Windows and batches (spec §9.4)
# ------------------------------------------------------------------------------------------------


def num_train_windows(n_tokens: int, seq_len: int) -> int:
    """Number of stride-1 windows of ``seq_len + 1`` tokens (the reference's ``len − T``)."""
    if n_tokens <= seq_len:
        raise ValueError(f"need more than seq_len={seq_len} tokens, got {n_tokens}")
    return n_tokens - seq_len


def gather_windows(
    tokens: np.ndarray, starts: np.ndarray, seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """``x[b] = tokens[s : s+T]``, ``y[b] = tokens[s+1 : s+T+1]`` for each start ``s`` (int32)."""
    idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(seq_len + 1, dtype=np.int64)
    seq = np.asarray(tokens)[idx].astype(np.int32, copy=False)
    return seq[:, :-1], seq[:, 1:]


@dataclass(frozen=True, eq=False)
class TrainBatches:
    """Shuffled training batches, addressed by a global integer step (exactly resumable).

    Epoch ``e`` visits all stride-1 windows in the order of
    ``np.random.default_rng([seed, e]).permutation(num_windows)``; batch ``i`` of that epoch is
    the slice ``[i*B, (i+1)*B)`` of it, and the last incomplete batch is dropped (reference:
    ``shuffle=True, drop_last=True``). Step ``s`` is epoch ``s // batches_per_epoch`` and index
    ``s % batches_per_epoch``. Nothing but ``step`` is needed to resume; the memo of the current
    epoch's permutation only saves time (about 1 GB and ~1 s per epoch for WikiText-103).

    Attributes:
        tokens: 1-D token ids.
        batch_size: B.
        seq_len: T (each window holds T + 1 tokens).
        seed: Shuffle seed.
    """

    tokens: np.ndarray
    batch_size: int
    seq_len: int
    seed: int = 0
    _memo: dict[int, np.ndarray] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def num_windows(self) -> int:
        """Stride-1 windows per epoch."""
        return num_train_windows(len(self.tokens), self.seq_len)

    @property
    def batches_per_epoch(self) -> int:
        """Full batches per epoch (``num_windows // batch_size``)."""
        n = self.num_windows // self.batch_size
        if n == 0:
            raise ValueError(
                f"{self.num_windows} windows cannot fill one batch of {self.batch_size}"
            )
        return n

    def position(self, step: int) -> tuple[int, int]:
        """Global step → ``(epoch, index within epoch)``."""
        if step < 0:
            raise ValueError("step must be >= 0")
        return divmod(step, self.batches_per_epoch)

    def permutation(self, epoch: int) -> np.ndarray:
        """Window order of ``epoch`` (a pure function of ``seed`` and ``epoch``)."""
        if epoch not in self._memo:
            self._memo.clear()
            rng = np.random.default_rng([self.seed, epoch])
            self._memo[epoch] = rng.permutation(self.num_windows)
        return self._memo[epoch]

    def starts(self, step: int) -> np.ndarray:
        """Window start offsets of batch ``step``."""
        epoch, index = self.position(step)
        return self.permutation(epoch)[index * self.batch_size : (index + 1) * self.batch_size]

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of batch ``step``, each ``(B, T)`` int32."""
        return gather_windows(self.tokens, self.starts(step), self.seq_len)

    def iterate(self, start_step: int = 0) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(step, x, y)`` from ``start_step`` on (resume after a batch at ``step + 1``)."""
        step = start_step
        while True:
            x, y = self.batch(step)
            yield step, x, y
            step += 1


class EvalBatch(NamedTuple):
    """One evaluation batch: ids ``(B, T)`` int32 and ``mask`` ``(B, T)`` bool (True = scored)."""

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True, eq=False)
class EvalBatches:
    """Every validation target scored exactly once, in fixed-shape masked batches.

    Windows start at ``0, T, 2T, …``; window ``w`` predicts targets ``tokens[wT+1 … wT+T]``, so the
    targets ``tokens[1:]`` are each covered once (the first token is never a target). The last
    window may be short and the last batch may hold fewer windows; padded positions have
    ``x = y = 0`` and ``mask = False``, so every batch has shape ``(B, T)`` (one compiled eval
    step). Average the loss as ``sum(ce * mask) / sum(mask)`` over all batches;
    ``num_targets == len(tokens) − 1``.

    Attributes:
        tokens: 1-D token ids.
        batch_size: B.
        seq_len: T.
    """

    tokens: np.ndarray
    batch_size: int
    seq_len: int

    @property
    def num_targets(self) -> int:
        """Number of scored positions (``len(tokens) − 1``)."""
        return max(0, len(self.tokens) - 1)

    @property
    def num_windows(self) -> int:
        """Non-overlapping windows (``ceil(num_targets / T)``)."""
        return -(-self.num_targets // self.seq_len)

    def __len__(self) -> int:
        return -(-self.num_windows // self.batch_size)

    def batch(self, index: int) -> EvalBatch:
        """Batch ``index`` (0 ≤ index < len(self))."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        bsz, seqlen, n = self.batch_size, self.seq_len, self.num_targets
        x = np.full((bsz, seqlen), PAD_ID, np.int32)
        y = np.full((bsz, seqlen), PAD_ID, np.int32)
        mask = np.zeros((bsz, seqlen), bool)
        tokens = np.asarray(self.tokens)
        for row in range(bsz):
            start = (index * bsz + row) * seqlen
            valid = min(seqlen, n - start)
            if valid <= 0:
                break
            x[row, :valid] = tokens[start : start + valid]
            y[row, :valid] = tokens[start + 1 : start + 1 + valid]
            mask[row, :valid] = True
        return EvalBatch(x, y, mask)

    def __iter__(self) -> Iterator[EvalBatch]:
        return (self.batch(i) for i in range(len(self)))


def reference_eval_batches(
    tokens: np.ndarray, batch_size: int, seq_len: int, max_batches: int = 5
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The reference's validation: the first ``max_batches`` unshuffled stride-1 batches.

    Only for comparisons with reference numbers (at B=24, T=94 it sees validation tokens 0…213).
    """
    n = num_train_windows(len(tokens), seq_len)
    for b in range(min(max_batches, -(-n // batch_size))):
        starts = np.arange(b * batch_size, min((b + 1) * batch_size, n))
        yield gather_windows(tokens, starts, seq_len)
