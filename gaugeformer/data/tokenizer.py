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


def get_tokenizer(name: str = "gpt2") -> Tokenizer:
    """Return a tokenizer by name.

    Args:
        name: ``"gpt2"`` (tiktoken GPT-2 BPE, V = 50257) or ``"bytes"`` (UTF-8 bytes, V = 256).

    Returns:
        An object with ``name``, ``n_vocab``, ``encode`` and ``decode``.

    Raises:
        ValueError: Unknown name.
    """
    if name == "gpt2":
        return get_gpt2_encoding()
    if name == "bytes":
        return ByteTokenizer()
    raise ValueError(f"unknown tokenizer {name!r}; expected one of {TOKENIZER_NAMES}")
