"""A tokenizer matched to a model's vocabulary, and how a checkpoint records it.

:class:`ModelTokenizer` turns text into the ids a model was trained on and back: the byte tokenizer
(V = 256), GPT-2 BPE (V ≥ 50257), or GPT-2 restricted to the reference's frequency-ranked
vocabulary (``kept_ids``, :class:`~gaugeformer.data.text.VocabMap`).  Every checkpoint the trainer
and the converter write stores :meth:`ModelTokenizer.to_meta` under ``meta["tokenizer"]`` (kind
and, for a restricted vocabulary, the kept ids), so a loaded model decodes without its corpus.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from gaugeformer.data.text import TokenDataset, VocabMap, load_embedded_dataset, load_wikitext
from gaugeformer.data.tokenizer import GPT2_N_VOCAB, get_tokenizer

BYTE_VOCAB = 256
UNK_PIECE = b"<unk>"


@dataclasses.dataclass(frozen=True)
class ModelTokenizer:
    """A tokenizer matched to a model vocabulary.

    Attributes:
        name: ``"gpt2"`` or ``"bytes"`` (the tokenizer kind).
        vocab_size: the model's V.
        vocab_map: the reference-style restriction (GPT-2 ids → ``0…V−1``), or None.
    """

    name: str
    vocab_size: int
    vocab_map: VocabMap | None = None

    @property
    def kind(self) -> str:
        return self.name

    @property
    def tokenizer(self) -> Any:
        """The underlying tokenizer object (tiktoken ``Encoding`` or ``ByteTokenizer``)."""
        return get_tokenizer(self.name)

    @property
    def restricted(self) -> bool:
        """Whether model ids are restricted-vocabulary ids."""
        return self.vocab_map is not None

    @property
    def kept_ids(self) -> np.ndarray | None:
        return None if self.vocab_map is None else self.vocab_map.kept_ids

    def describe(self) -> str:
        """``"GPT-2 BPE"``, ``"UTF-8 bytes"`` or ``"GPT-2 BPE restricted to V ids"``."""
        base = {"gpt2": "GPT-2 BPE", "bytes": "UTF-8 bytes"}[self.name]
        return f"{base} restricted to {self.vocab_size} ids" if self.restricted else base

    def encode(self, text: str) -> np.ndarray:
        """Model ids of ``text`` (restricted ids with UNK where the map applies)."""
        ids = np.asarray(self.tokenizer.encode(text), np.int64)
        if self.vocab_map is not None:
            ids = self.vocab_map.apply(ids, self.vocab_map.train_unk)
        return ids.astype(np.int32)

    def _original(self, model_id: int) -> int | None:
        if self.vocab_map is None:
            return int(model_id)
        kept = self.vocab_map.kept_ids
        return int(kept[model_id]) if 0 <= model_id < len(kept) else None

    def pieces(self, ids: Iterable[int]) -> list[bytes]:
        """Raw bytes of every token (partial UTF-8 kept; UNK shown as ``<unk>``)."""
        out = []
        for t in ids:
            orig = self._original(int(t))
            if orig is None:
                out.append(UNK_PIECE)
            elif self.name == "bytes":
                out.append(bytes([orig]) if orig < BYTE_VOCAB else UNK_PIECE)
            else:
                out.append(self.tokenizer.decode_single_token_bytes(orig)
                           if orig < GPT2_N_VOCAB else UNK_PIECE)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence (lossy bytes replaced by U+FFFD)."""
        return b"".join(self.pieces(ids)).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ checkpoint record
    def to_meta(self) -> dict:
        """``{"kind", "vocab_size", "kept_ids"}`` (kept ids a list, or None): plain JSON."""
        kept = None if self.vocab_map is None else [int(i) for i in self.vocab_map.kept_ids]
        return {"kind": self.name, "vocab_size": int(self.vocab_size), "kept_ids": kept}

    @classmethod
    def from_meta(cls, d: Mapping[str, Any]) -> ModelTokenizer:
        kept = d.get("kept_ids")
        vmap = None if kept is None else VocabMap(np.asarray(kept, np.int32), int(d["vocab_size"]))
        return cls(str(d["kind"]), int(d["vocab_size"]), vmap)

    @classmethod
    def of_dataset(cls, data: TokenDataset) -> ModelTokenizer:
        """The tokenizer a :class:`~gaugeformer.data.text.TokenDataset` was encoded with."""
        return cls(data.tokenizer, data.vocab_size, data.vocab_map)


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
                      data_files: Mapping[str, Any] | None = None) -> ModelTokenizer:
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
        return ModelTokenizer("bytes", v)
    if name != "gpt2":
        raise ValueError(f"unknown tokenizer {name!r}; expected auto, gpt2 or bytes")
    if v >= GPT2_N_VOCAB:
        return ModelTokenizer("gpt2", v)
    if vocab_dataset is None:
        raise ValueError(
            f"model vocabulary V={v} is a restricted GPT-2 vocabulary (the reference keeps the "
            f"{v - 1} most frequent training ids + UNK); rebuilding it needs the training corpus: "
            "pass --dataset wikitext-2|wikitext-103|embedded (and --data-files train=... offline)")
    return ModelTokenizer("gpt2", v, restricted_vocab_map(vocab_dataset, v, data_files=data_files))


def default_tokenizer(vocab_size: int) -> ModelTokenizer | None:
    """The tokenizer implied by V alone (bytes for 256, GPT-2 for ≥ 50257), else None."""
    try:
        return resolve_tokenizer(vocab_size)
    except ValueError:
        return None
