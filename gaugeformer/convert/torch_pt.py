"""Torch-free reader for PyTorch ``.pt`` checkpoints and safetensors files.

``torch.save`` (torch >= 1.6) writes a zip archive with one top-level folder ``<prefix>/``:

* ``<prefix>/data.pkl``: a pickle of the saved object. Tensors are pickled as calls to
  ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``; the
  storages are *persistent ids* ``('storage', torch.<X>Storage, key, location, numel)``.
* ``<prefix>/data/<key>``: the raw bytes of each storage, in the byte order named by
  ``<prefix>/byteorder`` (``little`` when the record is absent).
* bookkeeping records (``version``, ``.format_version``, ``.storage_alignment``, ...).

:func:`load_pt` unpickles ``data.pkl`` with an allow-list: only tensor rebuild functions, storage
types, torch dtypes/``Size``/``device``, ``collections.OrderedDict``, ``pathlib`` paths,
``argparse.Namespace``, numpy scalars/arrays and a few harmless builtins can be named by the
pickle. Any other global raises ``UnsafeCheckpointError`` before anything is called, so a
crafted checkpoint cannot run code. Everything torch-specific is turned into plain Python/numpy:

=============================  ===================================================
pickled object                 result
=============================  ===================================================
``torch.Tensor``/``Parameter`` C-contiguous, writable ``np.ndarray`` (exact dtype;
                               ``bfloat16``/``float8_*`` via ``ml_dtypes``; 0-d
                               tensors become 0-d arrays)
``collections.OrderedDict``    ``collections.OrderedDict``
``pathlib.*Path``              ``str``
``argparse.Namespace``         plain ``dict`` of its attributes
``torch.Size``                 ``tuple`` of ints
``torch.device``               ``str`` such as ``"cpu"`` or ``"cuda:0"``
``torch.<dtype>``              ``str`` such as ``"torch.float32"``
numpy scalar / ``ndarray``     the same numpy object (object dtypes are refused)
=============================  ===================================================

Tensors that are the *same view* of the same storage (same storage, dtype, offset, shape and
strides; e.g. tied weights saved under two state-dict keys) are returned as the *same* array
object, so ties can be detected with ``is``. Other views of a shared storage get their own copy of
the viewed elements. ``requires_grad``, backward hooks and Python attributes set on tensors are
dropped.

Every error is a :class:`~gaugeformer.convert.pt_errors.CheckpointError` (a ``ValueError``)
whose one-line message names the file, the problem and the fix.

This module opens the file (zip, legacy-format sniffing, byte order), reads safetensors and
normalises a loaded checkpoint into its parts (:func:`split_checkpoint`). The allow-list lives in
:mod:`~gaugeformer.convert.pt_unpickler`, storages and tensor views in
:mod:`~gaugeformer.convert.pt_tensors`, the errors in :mod:`~gaugeformer.convert.pt_errors`.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from gaugeformer.convert.pt_errors import (
    UNSAFE_FIX,
    CheckpointError,
    CheckpointLayoutError,
    CorruptCheckpointError,
    LegacyFormatError,
    MissingRecordError,
    Refused,
    UnsafeCheckpointError,
    message,
)
from gaugeformer.convert.pt_tensors import TensorReader, read_record
from gaugeformer.convert.pt_unpickler import RestrictedUnpickler, plainify

__all__ = ["load_pt", "load_safetensors", "split_checkpoint"]

PathLike = str | os.PathLike[str]

# Legacy (non-zip) torch.save files start with a pickled magic number.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_MAGIC_LE = _LEGACY_MAGIC.to_bytes(10, "little")
_LEGACY_MAGIC_TEXT = str(_LEGACY_MAGIC).encode()

_RESAVE_FIX = (
    "re-save it with torch>=1.6 (torch.save(torch.load(p, weights_only=False), p2)), "
    "or export the tensors with safetensors"
)


# --------------------------------------------------------------------------------------------
# Opening the file
# --------------------------------------------------------------------------------------------


def _sniff_not_zip(path: str, head: bytes) -> CheckpointError:
    """Builds the error for a file that ``zipfile`` cannot open, from its first bytes."""
    legacy = head[:1] == b"\x80" and _LEGACY_MAGIC_LE in head[:32]
    if legacy or _LEGACY_MAGIC_TEXT in head[:64]:
        return LegacyFormatError(message(
            path, "legacy format: a non-zip torch.save file (torch<1.6 or "
            "_use_new_zipfile_serialization=False)", _RESAVE_FIX))
    if head[257:262] == b"ustar":
        return LegacyFormatError(message(
            path, "legacy format: a tar torch.save file (torch<=0.3)", _RESAVE_FIX))
    if head[:2] == b"PK":
        return CorruptCheckpointError(message(
            path, "truncated or corrupted zip (no readable central directory)",
            "the file is incomplete; copy or re-save it again"))
    return CorruptCheckpointError(message(
        path, "not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save file)",
        "pass a file written by torch.save, or a .safetensors file to load_safetensors"))


def _find_prefix(path: str, names: list[str]) -> str:
    """Returns the archive folder (with ``/``) that holds ``data.pkl``.

    Raises:
        MissingRecordError: no ``<prefix>/data.pkl`` in the zip.
        CorruptCheckpointError: the zip is a TorchScript archive rather than ``torch.save``.
    """
    candidates = [n[: -len("data.pkl")] for n in names
                  if n.endswith("/data.pkl") and n.count("/") == 1]
    if any(n.endswith("/constants.pkl") for n in names):
        raise CorruptCheckpointError(message(
            path, "this is a TorchScript archive (torch.jit.save), not a torch.save checkpoint",
            "save model.state_dict() with torch.save and load that instead"))
    if not candidates:
        raise MissingRecordError(message(
            path, "zip archive has no '<name>/data.pkl' record, so it is not a torch.save file",
            "pass a checkpoint written by torch.save (torch>=1.6)"))
    first = names[0].split("/", 1)[0] + "/"
    return first if first in candidates else candidates[0]


def _byteorder(path: str, zf: zipfile.ZipFile, prefix: str) -> str:
    """Reads ``<prefix>/byteorder`` (``little`` if absent, as for old writers)."""
    name = f"{prefix}byteorder"
    if name not in zf.namelist():
        return "little"
    order = read_record(path, zf, name).decode("ascii", "replace").strip()
    if order not in ("little", "big"):
        raise CorruptCheckpointError(message(
            path, f"unknown byteorder record {order!r:.20} (expected 'little' or 'big')",
            "re-save the checkpoint with torch"))
    return order


def load_pt(path: PathLike) -> Any:
    """Loads a ``torch.save`` (torch>=1.6 zip) file without torch and without running code.

    Args:
        path: the ``.pt``/``.pth``/``.ckpt`` file.

    Returns:
        The saved object with tensors as numpy arrays (exact dtype, shape and values, C-contiguous,
        native byte order; ``bfloat16``/``float8`` via ``ml_dtypes``), ``OrderedDict`` kept,
        ``pathlib`` paths as ``str``, ``argparse.Namespace`` as ``dict``, ``torch.Size`` as
        ``tuple``, ``torch.device`` and torch dtypes as ``str``. See the module docstring.

    Raises:
        FileNotFoundError: no such file.
        LegacyFormatError: a pre-1.6 non-zip (or tar) torch file.
        CorruptCheckpointError: truncated/corrupted zip or pickle, bad byteorder record.
        MissingRecordError: ``data.pkl`` or a ``data/<key>`` storage record is missing.
        StorageBoundsError: a tensor view or storage record is too small.
        UnsupportedDtypeError: a storage dtype without a numpy equivalent.
        UnsafeCheckpointError: the pickle names a global outside the allow-list.
    """
    name = os.fspath(path)
    with open(name, "rb") as fh:
        head = fh.read(512)
    try:
        zf = zipfile.ZipFile(name)
    except zipfile.BadZipFile as exc:
        raise _sniff_not_zip(name, head) from exc
    with zf:
        names = zf.namelist()
        prefix = _find_prefix(name, names)
        swap = _byteorder(name, zf, prefix) != sys.byteorder
        reader = TensorReader(name, zf, prefix, swap)
        pickled = read_record(name, zf, f"{prefix}data.pkl")
        unpickler = RestrictedUnpickler(io.BytesIO(pickled), reader)
        try:
            obj = unpickler.load()
        except CheckpointError:
            raise
        except Refused as exc:
            raise UnsafeCheckpointError(message(
                name, f"refusing to unpickle {exc}; nothing was run", UNSAFE_FIX)) from None
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, IndexError, KeyError,
                AttributeError, OverflowError, MemoryError, RecursionError) as exc:
            raise CorruptCheckpointError(message(
                name, f"cannot unpickle {prefix}data.pkl ({type(exc).__name__}: {exc})",
                "the checkpoint is corrupted or uses an unsupported object; re-save it "
                "with plain tensors, dicts and numbers")) from exc
    if unpickler.saw_namespace:
        obj = plainify(obj, {})
    return obj


# --------------------------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------------------------


def load_safetensors(path: PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Loads a ``.safetensors`` file with the numpy backend.

    Args:
        path: the file.

    Returns:
        ``(tensors, metadata)``: ``{name: array}`` in file order (``bfloat16`` via ``ml_dtypes``)
        and the string metadata of the header (``{}`` when there is none).

    Raises:
        FileNotFoundError: no such file.
        CorruptCheckpointError: the header or data cannot be parsed.
    """
    from safetensors import SafetensorError, safe_open

    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(name)
    try:
        with safe_open(name, framework="np") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptCheckpointError(message(
            name, f"not a readable safetensors file ({exc})",
            "re-export it with safetensors.save_file")) from exc
    return tensors, metadata


# --------------------------------------------------------------------------------------------
# Normalising the loaded object
# --------------------------------------------------------------------------------------------

# Keys under which a model state dict is found, in priority order. 'model_state_dict' is what the
# reference's FastTrainer saves; the others are common conventions of other trainers.
_MODEL_KEYS = ("model_state_dict", "state_dict", "model_state", "model")
_OPTIMIZER_KEYS = ("optimizer_state_dict", "optimizer_state", "optimizer")
_STEP_KEYS = ("step", "global_step")


def _is_state_dict(obj: Any) -> bool:
    """True for a non-empty mapping of ``str`` keys whose values are all arrays."""
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()))


def _is_optimizer_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "state" in obj and "param_groups" in obj


def _as_int(value: Any) -> int | None:
    if value is None:
        return None
    number = np.asarray(value)
    if number.shape != () or number.dtype.kind not in "iuf" or number != np.floor(number):
        raise CheckpointLayoutError(f"checkpoint step must be an integer, got {value!r:.40}; "
                                    "fix: store the step as an int")
    return int(number)


def _as_float(value: Any) -> float | None:
    if value is None:
        return None
    number = np.asarray(value)
    if number.shape != () or number.dtype.kind not in "iuf":
        raise CheckpointLayoutError(f"best_val_loss must be a number, got {value!r:.40}; "
                                    "fix: store it as a float")
    return float(number)


def split_checkpoint(obj: Any) -> dict[str, Any]:
    """Normalises a loaded checkpoint into its parts.

    Recognised layouts:

    * the reference's ``FastTrainer`` dict: ``model_state_dict``, ``optimizer_state_dict``,
      ``config`` (a dict of training hyper-parameters), ``step`` (0-based), ``best_val_loss``;
    * the same with a model under ``state_dict``/``model_state``/``model`` or an optimizer under
      ``optimizer_state``/``optimizer`` and ``global_step`` for ``step`` (other trainers);
    * a bare state dict (every value an array), as accepted by the reference's
      ``validate_attention.py``.

    A ``config`` that was an ``argparse.Namespace`` is already a dict after :func:`load_pt`.

    Args:
        obj: what :func:`load_pt` (or :func:`load_safetensors`'s first item) returned.

    Returns:
        ``{"model_state_dict": dict[str, np.ndarray], "optimizer_state_dict": dict | None,
        "config": dict | None, "step": int | None, "best_val_loss": float | None}``.
        ``model_state_dict`` is a plain ``dict`` in the saved key order; the optimizer and config
        are returned as loaded.

    Raises:
        CheckpointLayoutError: no model state dict can be found, or a part has the wrong type.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointLayoutError(f"checkpoint is a {type(obj).__name__}, not a dict; fix: "
                                    "save a dict with 'model_state_dict' or a bare state dict")
    if _is_state_dict(obj):
        return {"model_state_dict": dict(obj), "optimizer_state_dict": None, "config": None,
                "step": None, "best_val_loss": None}
    model_key = next((k for k in _MODEL_KEYS if _is_state_dict(obj.get(k))), None)
    if model_key is None:
        raise CheckpointLayoutError(
            f"no model state dict found among top-level keys {sorted(map(str, obj))[:12]}; "
            f"fix: save one under 'model_state_dict' (or {', '.join(_MODEL_KEYS[1:])})")
    optimizer = next((obj[k] for k in _OPTIMIZER_KEYS if _is_optimizer_state(obj.get(k))), None)
    config = obj.get("config")
    if config is not None and not isinstance(config, Mapping):
        raise CheckpointLayoutError(f"checkpoint config is a {type(config).__name__}, not a "
                                    "dict; fix: save vars(config) or a plain dict")
    step = next((obj[k] for k in _STEP_KEYS if obj.get(k) is not None), None)
    return {
        "model_state_dict": dict(obj[model_key]),
        "optimizer_state_dict": optimizer,
        "config": config,
        "step": _as_int(step),
        "best_val_loss": _as_float(obj.get("best_val_loss")),
    }
