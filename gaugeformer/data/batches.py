"""Token arrays → ``(x, y)`` batches (spec ref-diagnostics §9.4), addressed by an integer step.

* **Training.** Stride-1 windows of length N+1, shuffled per epoch, ``drop_last`` (the reference's
  loader); here the order is a pure function of the step (:class:`TrainBatches`), so training
  resumes exactly.
* **Evaluation.** The reference scored only the first 5 validation batches (tokens 0…213);
  :class:`EvalBatches` scores **every** validation token once (non-overlapping windows and a
  mask). :func:`reference_eval_batches` reproduces the reference's, for comparisons.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

PAD_ID = 0  # the reference's pad_token_id (a real GPT-2 token, "!")


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
