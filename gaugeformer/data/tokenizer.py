"""The one tokenizer type: :class:`Tokenizer`, a model's text ↔ ids map, and the codecs under it.

A :class:`Tokenizer` is a kind (``"gpt2"`` or ``"bytes"``), the model's vocabulary size V and, for
a restricted vocabulary, the kept original ids (:mod:`gaugeformer.data.vocab`):

* ``Tokenizer("bytes", 256)``: UTF-8 bytes, id = byte value;
* ``Tokenizer("gpt2", 50257)``: GPT-2 BPE (a V above 50257 leaves the extra ids unused);
* ``Tokenizer("gpt2", V, kept_ids)``: GPT-2 restricted to the reference's frequency-ranked
  vocabulary; model id ``i < len(kept_ids)`` is GPT-2 id ``kept_ids[i]``, every other GPT-2 id
  encodes to UNK ``V − 1``.

:func:`get_tokenizer` builds one (``gf.get_tokenizer``), :func:`default_tokenizer` is the one V
alone implies, ``gf.load(...).tokenizer`` is the one a checkpoint records
(:meth:`Tokenizer.to_meta` under ``meta["tokenizer"]``: kind and kept ids, so a loaded model
decodes without its corpus), and :func:`gaugeformer.data.corpus.resolve_tokenizer` rebuilds a
restricted vocabulary from its corpus.
``encode`` gives model ids, ``pieces`` the raw bytes of each id (UNK shown as ``<unk>``) and
``decode`` their text.

The codecs under a tokenizer (:func:`encoding`) are what the data pipeline encodes whole corpora
with. The reference encodes text with ``tiktoken.get_encoding("gpt2")`` (spec ref-diagnostics
§9.2). That call downloads the GPT-2 ranks from a host this project cannot reach, so the same
encoding is rebuilt here from ``gaugeformer/assets/gpt2.tiktoken`` (the r50k/GPT-2 ranks shipped in
the openai-whisper sdist, placed by ``tools/fetch_assets.sh`` during ``make setup``), verified by
sha256: the identical tiktoken ``Encoding`` (same regex, same 50,256 ranks, ``<|endoftext|>`` =
50256, ``n_vocab`` 50257). :class:`ByteEncoding` is its byte counterpart (V = 256).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tiktoken

from gaugeformer.data.vocab import restrict_ids

GPT2_TIKTOKEN_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_N_VOCAB = 50257
GPT2_EOT = 50256
BYTE_VOCAB = 256
ENDOFTEXT = "<|endoftext|>"
UNK_PIECE = b"<unk>"
# Pre-tokenisation regex of tiktoken's "gpt2"/"r50k_base" encodings (tiktoken_ext.openai_public).
R50K_PAT_STR = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
ASSET_ENV_VAR = "GAUGEFORMER_GPT2_TIKTOKEN"
TOKENIZER_NAMES = ("gpt2", "bytes")


# ------------------------------------------------------------------------------------------------
# Codecs: GPT-2 BPE (offline tiktoken) and UTF-8 bytes
# ------------------------------------------------------------------------------------------------


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


class ByteEncoding:
    """UTF-8 byte codec: token id = byte value, vocabulary size 256, no special tokens.

    The byte counterpart of tiktoken's ``Encoding`` (same ``encode``/``encode_batch``/``decode``);
    ``decode`` replaces invalid UTF-8 sequences with U+FFFD, as tiktoken's does.
    """

    name = "bytes"

    @property
    def n_vocab(self) -> int:
        """Always 256."""
        return BYTE_VOCAB

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

    def decode_single_token_bytes(self, token: int) -> bytes:
        """The byte of one id (tiktoken's per-token accessor)."""
        return bytes([int(token)])

    def __repr__(self) -> str:
        return "ByteEncoding(n_vocab=256)"


Codec = tiktoken.Encoding | ByteEncoding


def encoding(name: str) -> Codec:
    """The codec of a tokenizer kind: GPT-2's tiktoken ``Encoding`` (cached) or
    :class:`ByteEncoding`.

    Raises:
        ValueError: an unknown kind.
    """
    if name == "gpt2":
        return get_gpt2_encoding()
    if name == "bytes":
        return ByteEncoding()
    raise ValueError(f"unknown tokenizer {name!r}; expected one of {TOKENIZER_NAMES}")


# ------------------------------------------------------------------------------------------------
# The model's tokenizer
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Tokenizer:
    """Text ↔ a model's token ids (see the module docstring).

    Attributes:
        name: ``"gpt2"`` or ``"bytes"``: the codec.
        vocab_size: the model's V (at least the codec's, unless the vocabulary is restricted).
        kept_ids: a restricted vocabulary's original ids, ascending (int64), or None.

    Raises:
        ValueError: an unknown kind, kept ids that are not ascending, distinct and within the
            codec, no room for UNK, or a V below the codec's without kept ids.
    """

    name: str
    vocab_size: int
    kept_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        base = encoding(self.name).n_vocab
        object.__setattr__(self, "vocab_size", int(self.vocab_size))
        if self.kept_ids is None:
            if self.vocab_size < base:
                raise ValueError(f"vocab_size={self.vocab_size} is below {self.name}'s {base}: a "
                                 "restricted vocabulary needs its kept_ids (from the checkpoint, "
                                 "or rebuilt from the training corpus)")
            return
        kept = np.asarray(self.kept_ids, np.int64)
        if kept.ndim != 1 or np.any(np.diff(kept) <= 0):
            raise ValueError("kept_ids must be a 1-D ascending list of distinct token ids")
        if len(kept) and not 0 <= kept[0] <= kept[-1] < base:
            raise ValueError(f"kept_ids must lie in [0, {base}) ({self.name} ids)")
        if self.vocab_size <= len(kept):
            raise ValueError(f"vocab_size={self.vocab_size} leaves no UNK id after "
                             f"{len(kept)} kept ids")
        object.__setattr__(self, "kept_ids", kept)

    @property
    def encoding(self) -> Codec:
        """The codec (tiktoken ``Encoding`` or :class:`ByteEncoding`)."""
        return encoding(self.name)

    @property
    def n_vocab(self) -> int:
        """The model's vocabulary size V."""
        return self.vocab_size

    @property
    def restricted(self) -> bool:
        """Whether model ids are restricted-vocabulary ids."""
        return self.kept_ids is not None

    def describe(self) -> str:
        """``"GPT-2 BPE"``, ``"UTF-8 bytes"`` or ``"GPT-2 BPE restricted to V ids"``."""
        base = {"gpt2": "GPT-2 BPE", "bytes": "UTF-8 bytes"}[self.name]
        return f"{base} restricted to {self.vocab_size} ids" if self.restricted else base

    def encode(self, text: str) -> np.ndarray:
        """Model ids of ``text``, int32 (UNK = V − 1 for ids outside a restricted vocabulary)."""
        ids = np.asarray(self.encoding.encode(text), np.int64)
        if self.kept_ids is not None:
            ids = restrict_ids(ids, self.kept_ids, self.vocab_size - 1)
        return ids.astype(np.int32)

    def pieces(self, ids: Iterable[int]) -> list[bytes]:
        """Raw bytes of every token (partial UTF-8 kept; UNK and unused ids as ``<unk>``)."""
        codec, base = self.encoding, self.encoding.n_vocab
        out = []
        for t in ids:
            orig = int(t)
            if self.kept_ids is not None:
                orig = int(self.kept_ids[orig]) if 0 <= orig < len(self.kept_ids) else -1
            out.append(codec.decode_single_token_bytes(orig) if 0 <= orig < base else UNK_PIECE)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence: its :meth:`pieces` joined (invalid UTF-8 replaced by U+FFFD)."""
        return b"".join(self.pieces(ids)).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        kept = ", restricted" if self.restricted else ""
        return f"Tokenizer({self.name!r}, V={self.vocab_size}{kept})"

    # ------------------------------------------------------------------ checkpoint record
    def to_meta(self) -> dict:
        """``{"kind", "vocab_size", "kept_ids"}`` (kept ids a list, or None): plain JSON."""
        kept = None if self.kept_ids is None else [int(i) for i in self.kept_ids]
        return {"kind": self.name, "vocab_size": self.vocab_size, "kept_ids": kept}

    @classmethod
    def from_meta(cls, record: Mapping[str, Any]) -> Tokenizer:
        """The tokenizer of a checkpoint's ``meta["tokenizer"]`` (:meth:`to_meta`)."""
        return cls(str(record["kind"]), int(record["vocab_size"]), record.get("kept_ids"))

    @classmethod
    def of_dataset(cls, data: Any) -> Tokenizer:
        """The tokenizer a :class:`~gaugeformer.data.corpus.TokenDataset` was encoded with."""
        kept = None if data.vocab_map is None else data.vocab_map.kept_ids
        return cls(data.tokenizer, data.vocab_size, kept)


def get_tokenizer(name: str = "gpt2", *, kept_ids: Sequence[int] | np.ndarray | None = None,
                  vocab_size: int | None = None) -> Tokenizer:
    """A :class:`Tokenizer` by kind, optionally restricted to a checkpoint's kept ids.

    Args:
        name: ``"gpt2"`` (GPT-2 BPE, V = 50257) or ``"bytes"`` (UTF-8 bytes, V = 256).
        kept_ids: a restricted vocabulary's original ids.
        vocab_size: the model's V (default: ``len(kept_ids) + 1``, else the codec's).

    Raises:
        ValueError: Unknown name, or kept ids / a V that do not fit the codec.
    """
    if vocab_size is None:
        vocab_size = len(kept_ids) + 1 if kept_ids is not None else encoding(name).n_vocab
    return Tokenizer(name, vocab_size, kept_ids)


def default_tokenizer(vocab_size: int) -> Tokenizer | None:
    """The tokenizer implied by V alone (bytes for 256, GPT-2 for ≥ 50257), else None (a
    restricted vocabulary, whose kept ids only a checkpoint or the corpus can give)."""
    v = int(vocab_size)
    if v == BYTE_VOCAB:
        return Tokenizer("bytes", v)
    return Tokenizer("gpt2", v) if v >= GPT2_N_VOCAB else None
