"""Text → token ids: the reference's WikiText cleaning and a chunked encode equal to one ``encode``.

* **Cleaning (spec ref-diagnostics §9.2, exactly as the reference).** Drop rows whose ``strip()`` is
  empty, join the remaining rows *unstripped* with ``"\\n\\n"``; if the text contains ``<unk>``,
  delete it and collapse runs of spaces/tabs to one space; then ``" @-@ "→"-"``, ``" @,@ "→","``,
  ``" @.@ "→"."``.
* **Tokenisation.** One GPT-2 BPE encode of the whole split (no BOS/EOS). Large texts are encoded in
  chunks cut only between a non-space and a space character, where tiktoken's r50k regex always has
  a pre-token boundary, so the ids equal those of a single ``encode`` call.

Corpora and their token caches: :mod:`gaugeformer.data.corpus`; the codecs:
:mod:`gaugeformer.data.tokenizer`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import numpy as np
from tqdm import tqdm

from gaugeformer.data.tokenizer import ByteEncoding, Codec, encoding

DEFAULT_CHUNK_CHARS = 1 << 20
PROGRESS_MIN_CHARS = 4 << 20

_SPACE_RUN = re.compile(r"[ \t]+")
_SAFE_CUT = re.compile(r"\S(?=\s)")


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
    tokenizer: Codec | str,
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
        tokenizer: A codec (:func:`~gaugeformer.data.tokenizer.encoding`) or its name (``"gpt2"``,
            ``"bytes"``).
        chunk_chars: Approximate chunk size for the threaded, chunked encode.
        progress: Show a tqdm bar; ``None`` = only for texts over 4 MiB.
        desc: Progress-bar label.

    Returns:
        ``np.int32`` array of token ids.
    """
    tok = encoding(tokenizer) if isinstance(tokenizer, str) else tokenizer
    if isinstance(tok, ByteEncoding):
        return tok.encode_to_numpy(text).astype(np.int32)
    cuts = safe_cut_points(text, chunk_chars)
    chunks = [text[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    show = len(text) >= PROGRESS_MIN_CHARS if progress is None else progress
    batch = hasattr(tok, "encode_batch")
    group = max(1, os.cpu_count() or 1) if batch else 1
    pieces: list[np.ndarray] = []
    with tqdm(total=len(text), desc=desc, unit="char", unit_scale=True, disable=not show) as bar:
        for start in range(0, len(chunks), group):
            part = chunks[start : start + group]
            ids = tok.encode_batch(part, num_threads=group) if batch else [tok.encode(part[0])]
            pieces.extend(np.asarray(x, dtype=np.int32) for x in ids)
            bar.update(sum(len(c) for c in part))
    return np.concatenate(pieces) if pieces else np.zeros((0,), np.int32)
