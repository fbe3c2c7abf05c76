"""Tokenizers: offline GPT-2 BPE (tiktoken) and a 256-symbol byte tokenizer.

The reference encodes text with ``tiktoken.get_encoding("gpt2")`` (spec ref-diagnostics §9.2). That
call downloads the GPT-2 ranks from a host this project cannot reach, so the same encoding is
rebuilt here from ``gaugeformer/assets/gpt2.tiktoken`` (the r50k/GPT-2 ranks shipped in the
openai-whisper sdist, placed by ``tools/fetch_assets.sh`` during ``make setup``), verified by
sha256. The result is the identical tiktoken ``Encoding``: same regex, same 50,256 ranks,
``<|endoftext|>`` = 50256, ``n_vocab`` 50257.

``ByteTokenizer`` maps text to its UTF-8 bytes (id = byte value, V = 256). It has the same
``encode``/``decode`` interface and serves the vocab-256 configs and the reference fixtures.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import tiktoken

GPT2_TIKTOKEN_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_N_VOCAB = 50257
GPT2_EOT = 50256
ENDOFTEXT = "<|endoftext|>"
# Pre-tokenisation regex of tiktoken's "gpt2"/"r50k_base" encodings (tiktoken_ext.openai_public).
R50K_PAT_STR = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
ASSET_ENV_VAR = "GAUGEFORMER_GPT2_TIKTOKEN"
TOKENIZER_NAMES = ("gpt2", "bytes")


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer (tiktoken ``Encoding`` satisfies it)."""

    name: str

    @property
    def n_vocab(self) -> int:
        """Number of token ids (max id + 1)."""
        ...

    def encode(self, text: str) -> list[int]:
        """Text to token ids."""
        ...

    def decode(self, tokens: Sequence[int]) -> str:
        """Token ids to text."""
        ...


def default_gpt2_asset_path() -> Path:
    """Location of the GPT-2 ranks file: ``$GAUGEFORMER_GPT2_TIKTOKEN`` or the package asset."""
    override = os.environ.get(ASSET_ENV_VAR)
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "assets" / "gpt2.tiktoken"


def _missing_asset_message(path: Path) -> str:
    return (
        f"GPT-2 BPE ranks not found at {path}. They are fetched offline from PyPI (openai-whisper "
        "sdist, sha256-verified) by `make setup`, or directly with "
        "`bash tools/fetch_assets.sh .venv/bin/python` from the repository root. "
        f"Set {ASSET_ENV_VAR}=/path/to/gpt2.tiktoken to use another copy."
    )


@functools.lru_cache(maxsize=4)
def _build_gpt2_encoding(path: str) -> tiktoken.Encoding:
    from tiktoken.load import load_tiktoken_bpe

    # load_tiktoken_bpe checks the sha256 of the file contents and raises ValueError on mismatch.
    ranks = load_tiktoken_bpe(path, expected_hash=GPT2_TIKTOKEN_SHA256)
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=R50K_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: GPT2_EOT},
        explicit_n_vocab=GPT2_N_VOCAB,
    )


def get_gpt2_encoding(
    path: str | Path | None = None, *, allow_download: bool = False
) -> tiktoken.Encoding:
    """Return tiktoken's GPT-2 encoding, built offline from the sha256-verified local ranks file.

    ``tiktoken.get_encoding("gpt2")`` is not tried by default: it needs the network unless
    tiktoken's own cache happens to hold the files, and offline it fails (or, behind a dropping
    firewall, hangs).

    Args:
        path: Ranks file; defaults to :func:`default_gpt2_asset_path`.
        allow_download: If the file is missing, fall back to ``tiktoken.get_encoding("gpt2")``.

    Returns:
        The ``Encoding`` (name "gpt2", n_vocab 50257, eot 50256). Cached per path.

    Raises:
        FileNotFoundError: The ranks file is missing (and ``allow_download`` is False). The message
            names ``make setup`` / ``tools/fetch_assets.sh``.
        ValueError: The file exists but its sha256 does not match.
    """
    asset = Path(path) if path is not None else default_gpt2_asset_path()
    if asset.is_file():
        return _build_gpt2_encoding(str(asset.resolve()))
    if allow_download:
        return tiktoken.get_encoding("gpt2")
    raise FileNotFoundError(_missing_asset_message(asset))


class ByteTokenizer:
    """UTF-8 byte tokenizer: token id = byte value, vocabulary size 256, no special tokens.

    ``decode`` replaces invalid UTF-8 sequences with U+FFFD, as tiktoken's ``decode`` does.
    """

    name = "bytes"

    @property
    def n_vocab(self) -> int:
        """Always 256."""
        return 256

    def encode(self, text: str) -> list[int]:
        """Encode ``text`` as its UTF-8 bytes."""
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str], **_: object) -> list[list[int]]:
        """Encode several texts (interface parity with tiktoken)."""
        return [self.encode(t) for t in texts]

    def encode_to_numpy(self, text: str) -> np.ndarray:
        """Encode ``text`` straight to a uint8 array (fast path for large corpora)."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()

    def decode(self, tokens: Sequence[int]) -> str:
        """Decode byte ids (each in 0..255) back to text."""
        return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(n_vocab=256)"


class RestrictedTokenizer:
    """A tokenizer over the reference's restricted vocabulary (:class:`gaugeformer.data.text.VocabMap`).

    Model id ``i < len(kept_ids)`` is the base tokenizer's id ``kept_ids[i]``; every other base id
    encodes to the UNK id ``vocab_size − 1`` (the training split's UNK, the one the model learned),
    and ``decode`` drops UNKs, as the reference's ``decode`` does.

    Args:
        base: the full tokenizer (``gpt2`` or ``bytes``).
        kept_ids: original ids kept, ascending (saved with the model's checkpoint).
        vocab_size: V of the model (default ``len(kept_ids) + 1``).
    """

    def __init__(self, base: Tokenizer, kept_ids: Sequence[int] | np.ndarray,
                 vocab_size: int | None = None):
        self.base = base
        self.name = base.name
        self.kept_ids = np.asarray(kept_ids, np.int64)
        if self.kept_ids.ndim != 1 or np.any(np.diff(self.kept_ids) <= 0):
            raise ValueError("kept_ids must be a 1-D ascending list of distinct token ids")
        if len(self.kept_ids) and not 0 <= self.kept_ids[0] <= self.kept_ids[-1] < base.n_vocab:
            raise ValueError(f"kept_ids must lie in [0, {base.n_vocab}) ({base.name} ids)")
        self.vocab_size = len(self.kept_ids) + 1 if vocab_size is None else int(vocab_size)
        if self.vocab_size <= len(self.kept_ids):
            raise ValueError(f"vocab_size={self.vocab_size} leaves no UNK id after "
                             f"{len(self.kept_ids)} kept ids")

    @property
    def n_vocab(self) -> int:
        """The model's vocabulary size V."""
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        """Restricted ids of ``text`` (UNK = V − 1 for ids outside the kept set)."""
        return restrict_ids(self.base.encode(text), self.kept_ids, self.vocab_size - 1).tolist()

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of restricted ids; UNKs (ids ≥ ``len(kept_ids)``) are dropped."""
        return self.base.decode(original_ids(tokens, self.kept_ids).tolist())

    def __repr__(self) -> str:
        return f"RestrictedTokenizer({self.name!r}, V={self.vocab_size})"


def restrict_ids(ids: Sequence[int] | np.ndarray, kept_ids: np.ndarray, unk: int) -> np.ndarray:
    """Original ids → restricted ids (position in ``kept_ids``), others → ``unk`` (int32)."""
    ids = np.asarray(ids, np.int64)
    size = max(int(ids.max(initial=-1)), int(kept_ids.max(initial=-1))) + 1
    lut = np.full((size,), unk, dtype=np.int32)
    lut[kept_ids] = np.arange(len(kept_ids), dtype=np.int32)
    return lut[ids]


def original_ids(ids: Sequence[int] | np.ndarray, kept_ids: np.ndarray) -> np.ndarray:
    """Restricted ids → original ids, dropping UNKs (ids outside ``[0, len(kept_ids))``)."""
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    return np.asarray(kept_ids)[arr[(arr >= 0) & (arr < len(kept_ids))]]


def get_tokenizer(name: str = "gpt2", *, kept_ids: Sequence[int] | np.ndarray | None = None,
                  vocab_size: int | None = None) -> Tokenizer:
    """Return a tokenizer by name, optionally restricted to a checkpoint's kept ids.

    Args:
        name: ``"gpt2"`` (tiktoken GPT-2 BPE, V = 50257) or ``"bytes"`` (UTF-8 bytes, V = 256).
        kept_ids: a restricted vocabulary's original ids (:class:`RestrictedTokenizer`).
        vocab_size: the restricted model's V (default ``len(kept_ids) + 1``).

    Returns:
        An object with ``name``, ``n_vocab``, ``encode`` and ``decode``.

    Raises:
        ValueError: Unknown name, or kept ids that do not fit the tokenizer.
    """
    if name == "gpt2":
        base = get_gpt2_encoding()
    elif name == "bytes":
        base = ByteTokenizer()
    else:
        raise ValueError(f"unknown tokenizer {name!r}; expected one of {TOKENIZER_NAMES}")
    if kept_ids is None:
        if vocab_size is not None and vocab_size != base.n_vocab:
            raise ValueError(f"vocab_size={vocab_size} differs from {name}'s {base.n_vocab}: "
                             "a restricted vocabulary needs its kept_ids")
        return base
    return RestrictedTokenizer(base, kept_ids, vocab_size)
