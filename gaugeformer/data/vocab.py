"""The reference's restricted vocabulary (spec ref-diagnostics §9.3).

When a model's V is below its tokenizer's, the reference keeps the ``V − 1`` most frequent training
ids (ties: first seen first), sorted by original id, as ids ``0 … len(kept_ids) − 1``; every other
id is UNK.  :class:`VocabMap` is that restriction, :func:`build_vocab_map` ranks a training split,
:func:`restrict_vocab` applies the rule to both splits.  A model's
:class:`~gaugeformer.data.tokenizer.Tokenizer` carries the kept ids (checkpoints record them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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


@dataclass(frozen=True, eq=False)
class VocabMap:
    """The reference's restricted vocabulary of one dataset.

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
