"""The ``.npy`` token cache: one file per (source, split, tokenizer, cleaning version).

A cache hit needs neither ``datasets`` nor the network
(:func:`gaugeformer.data.corpus.load_wikitext_split`). Local files are keyed by their content
(sha256, memoised per path, size and mtime), hub datasets by their config name.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Bump when the cleaning or tokenisation rules (gaugeformer.data.text) change: it is part of every
# cache key.
CLEANING_VERSION = "wikitext-clean-ref826c807-v1"
CACHE_ENV_VAR = "GAUGEFORMER_DATA_CACHE"


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


def sha256_files(paths: Sequence[Path]) -> str:
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


def read_tokens(path: Path) -> np.ndarray | None:
    """The cached ids at ``path`` (int32), or None on a miss."""
    return np.load(path).astype(np.int32, copy=False) if path.is_file() else None


def write_tokens(path: Path, tokens: np.ndarray) -> None:
    """Write ``tokens`` to ``path`` atomically (a temp file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, tokens)
    os.replace(tmp, path)
