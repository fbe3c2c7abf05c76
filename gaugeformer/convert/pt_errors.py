"""Errors of the torch-free checkpoint reader (:mod:`gaugeformer.convert.torch_pt`).

Every error is a :class:`CheckpointError` (a ``ValueError``) whose one-line message names the
file, the problem and the fix (:func:`message`).
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CheckpointLayoutError",
    "CorruptCheckpointError",
    "LegacyFormatError",
    "MissingRecordError",
    "StorageBoundsError",
    "UnsafeCheckpointError",
    "UnsupportedDtypeError",
]


class CheckpointError(ValueError):
    """Base class: the file cannot be read. Message: ``<file>: <problem>; fix: <fix>``."""


class LegacyFormatError(CheckpointError):
    """A pre-1.6 (non-zip) ``torch.save`` file, or the even older tar format."""


class CorruptCheckpointError(CheckpointError):
    """Truncated or corrupted zip, unreadable pickle, malformed record or tensor description."""


class MissingRecordError(CorruptCheckpointError):
    """A record the pickle needs (``data.pkl`` or a ``data/<key>`` storage) is not in the zip."""


class StorageBoundsError(CorruptCheckpointError):
    """A tensor view (offset, shape, strides) reaches past the end of its storage."""


class UnsupportedDtypeError(CheckpointError):
    """A storage or tensor dtype this reader has no numpy equivalent for (e.g. quantized)."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle names a global that is not on the allow-list; nothing was called."""


class CheckpointLayoutError(CheckpointError):
    """:func:`~gaugeformer.convert.torch_pt.split_checkpoint` does not recognise the structure of
    a loaded object."""


class Refused(Exception):
    """Raised by allow-listed callables for unsafe arguments; becomes UnsafeCheckpointError."""


UNSAFE_FIX = ("if the file is trusted, load it with torch and re-save only tensors, dicts, lists "
              "and numbers (or export to safetensors)")


def message(path: str, problem: str, fix: str) -> str:
    """One-line error message naming the file, the problem and the fix."""
    return " ".join(f"{path}: {problem}; fix: {fix}".split())
