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
pickle. Any other global raises :class:`UnsafeCheckpointError` before anything is called, so a
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

Every error is a :class:`CheckpointError` (a ``ValueError``) whose one-line message names the
file, the problem and the fix.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import math
import os
import pathlib
import pickle
import sys
import zipfile
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

__all__ = [
    "CheckpointError",
    "CheckpointLayoutError",
    "CorruptCheckpointError",
    "LegacyFormatError",
    "MissingRecordError",
    "StorageBoundsError",
    "UnsafeCheckpointError",
    "UnsupportedDtypeError",
    "load_pt",
    "load_safetensors",
    "split_checkpoint",
]

PathLike = str | os.PathLike[str]

# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


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
    """:func:`split_checkpoint` does not recognise the structure of a loaded object."""


class _Refused(Exception):
    """Raised by allow-listed callables for unsafe arguments; becomes UnsafeCheckpointError."""


_UNSAFE_FIX = ("if the file is trusted, load it with torch and re-save only tensors, dicts, lists "
               "and numbers (or export to safetensors)")


def _message(path: str, problem: str, fix: str) -> str:
    """One-line error message naming the file, the problem and the fix."""
    return " ".join(f"{path}: {problem}; fix: {fix}".split())


# --------------------------------------------------------------------------------------------
# Dtype tables
# --------------------------------------------------------------------------------------------

# torch.<X>Storage (typed storages, as written by torch.save for the classic dtypes).
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
    "UntypedStorage": np.dtype(np.uint8),  # raw bytes; _rebuild_tensor_v3 reinterprets them
}

# torch.<dtype> globals (pickled dtypes; _rebuild_tensor_v3 passes one for the newer dtypes).
_TORCH_DTYPES: dict[str, np.dtype] = {
    "float64": np.dtype(np.float64),
    "double": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "half": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "float8_e4m3fnuz": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "float8_e5m2fnuz": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "int64": np.dtype(np.int64),
    "long": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int": np.dtype(np.int32),
    "int16": np.dtype(np.int16),
    "short": np.dtype(np.int16),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16),
    "uint32": np.dtype(np.uint32),
    "uint64": np.dtype(np.uint64),
    "bool": np.dtype(np.bool_),
    "complex64": np.dtype(np.complex64),
    "cfloat": np.dtype(np.complex64),
    "complex128": np.dtype(np.complex128),
    "cdouble": np.dtype(np.complex128),
}

# Legacy (non-zip) torch.save files start with a pickled magic number.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_MAGIC_LE = _LEGACY_MAGIC.to_bytes(10, "little")
_LEGACY_MAGIC_TEXT = str(_LEGACY_MAGIC).encode()

_RESAVE_FIX = (
    "re-save it with torch>=1.6 (torch.save(torch.load(p, weights_only=False), p2)), "
    "or export the tensors with safetensors"
)


# --------------------------------------------------------------------------------------------
# Small value types created while unpickling
# --------------------------------------------------------------------------------------------


class _StorageType:
    """Stand-in for a ``torch.<X>Storage`` class named by the pickle."""

    def __init__(self, name: str, dtype: np.dtype) -> None:
        self.name = name
        self.dtype = dtype


class _Storage:
    """A storage record viewed as a flat array of ``numel`` elements of ``dtype``.

    Attributes:
        key: the record name under ``data/``.
        array: 1-D read-only array, shape ``(numel,)``, native byte order.
    """

    def __init__(self, key: str, array: np.ndarray) -> None:
        self.key = key
        self.array = array


class _TypeMarker:
    """Stand-in for ``torch.Tensor`` / ``torch.nn.Parameter`` used as ``new_type``."""

    def __init__(self, name: str) -> None:
        self.name = name


class _NamespaceDict(dict):
    """Receives an ``argparse.Namespace`` (NEWOBJ + BUILD); replaced by a plain dict afterwards."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slotstate)
            state = state[0]
        if not isinstance(state, dict):
            raise TypeError(f"argparse.Namespace state must be a dict, got {type(state).__name__}")
        self.update(state)


def _plainify(obj: Any, memo: dict[int, Any]) -> Any:
    """Copies containers, replacing ``_NamespaceDict`` by ``dict``; keeps identity and cycles."""
    oid = id(obj)
    if oid in memo:
        return memo[oid]
    kind = type(obj)
    if kind in (dict, collections.OrderedDict, _NamespaceDict):
        out: Any = collections.OrderedDict() if kind is collections.OrderedDict else {}
        memo[oid] = out
        for key, value in obj.items():
            out[key] = _plainify(value, memo)
        return out
    if kind is list:
        out = []
        memo[oid] = out
        out.extend(_plainify(v, memo) for v in obj)
        return out
    if kind is tuple:
        out = tuple(_plainify(v, memo) for v in obj)
        memo[oid] = out
        return out
    return obj


# --------------------------------------------------------------------------------------------
# The restricted unpickler
# --------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int_tuple(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(_is_int(v) for v in value)


class _Archive:
    """An opened torch zip archive plus the state needed while unpickling it.

    Args:
        path: file name, used in error messages.
        zf: the opened zip.
        prefix: the archive folder including the trailing ``/`` (e.g. ``"best_model/"``).
        swap: whether storages are in the opposite byte order of this machine.
    """

    def __init__(self, path: str, zf: zipfile.ZipFile, prefix: str, swap: bool) -> None:
        self.path = path
        self.zf = zf
        self.prefix = prefix
        self.swap = swap
        self.names = set(zf.namelist())
        self.raw: dict[str, bytes] = {}
        self.storages: dict[tuple[str, np.dtype], _Storage] = {}
        self.views: dict[tuple, np.ndarray] = {}
        self.saw_namespace = False
        self.globals = self._allow_list()

    # ---- errors ------------------------------------------------------------------------------

    def corrupt(self, problem: str, cls: type[CheckpointError] = CorruptCheckpointError) -> Any:
        """Returns (for ``raise``) a corrupt-file error naming this file."""
        return cls(_message(self.path, problem, "re-save the checkpoint from the original run"))

    # ---- globals -----------------------------------------------------------------------------

    def _allow_list(self) -> dict[tuple[str, str], Any]:
        paths = {
            name: _path_to_str(posix)
            for name, posix in [
                ("PosixPath", True), ("PurePosixPath", True), ("Path", True), ("PurePath", True),
                ("WindowsPath", False), ("PureWindowsPath", False),
            ]
        }
        table: dict[tuple[str, str], Any] = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("argparse", "Namespace"): _NamespaceDict,
            ("torch._utils", "_rebuild_tensor"): self.rebuild_tensor_v1,
            ("torch._utils", "_rebuild_tensor_v2"): self.rebuild_tensor_v2,
            ("torch._utils", "_rebuild_tensor_v3"): self.rebuild_tensor_v3,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
            ("torch._tensor", "_rebuild_from_type_v2"): self.rebuild_from_type_v2,
            ("torch", "Tensor"): _TypeMarker("torch.Tensor"),
            ("torch.nn.parameter", "Parameter"): _TypeMarker("torch.nn.Parameter"),
            ("torch", "Size"): _torch_size,
            ("torch", "device"): _torch_device,
            ("builtins", "set"): _safe_set,
            ("builtins", "frozenset"): _safe_frozenset,
            ("builtins", "complex"): _safe_complex,
            ("builtins", "bytes"): _safe_bytes,
            ("builtins", "bytearray"): _safe_bytearray,
            ("_codecs", "encode"): _safe_codecs_encode,
        }
        for module in ("pathlib", "pathlib._local"):
            for name, fn in paths.items():
                table[(module, name)] = fn
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            table[(module, "scalar")] = _numpy_scalar
            table[(module, "_reconstruct")] = _numpy_reconstruct
        table[("numpy", "dtype")] = _numpy_dtype
        table[("numpy", "ndarray")] = _NDARRAY
        return table

    def find_global(self, module: str, name: str) -> Any:
        """Resolves a pickle GLOBAL/STACK_GLOBAL/INST through the allow-list only.

        Raises:
            UnsafeCheckpointError: the global is not allow-listed (nothing is imported or called).
            UnsupportedDtypeError: a ``torch.<X>Storage`` with no numpy equivalent.
        """
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names in protocol <3
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in self.globals:
            return self.globals[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return f"torch.{name}"
        if module in ("torch", "torch.storage") and name.endswith("Storage"):
            raise UnsupportedDtypeError(_message(
                self.path, f"storage type torch.{name} has no numpy equivalent "
                "(quantized and other exotic dtypes are not supported)",
                "convert the tensor to a float/int dtype in torch and re-save"))
        raise UnsafeCheckpointError(_message(
            self.path, f"refusing to unpickle global '{module}.{name}': it is not on the "
            "allow-list of tensor/container types, and nothing was imported or run",
            _UNSAFE_FIX))

    # ---- storages ----------------------------------------------------------------------------

    def persistent_load(self, pid: Any) -> _Storage:
        """Returns the storage named by ``('storage', type, key, location, numel)``."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise self.corrupt(f"unexpected persistent id {pid!r:.80} in data.pkl")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise self.corrupt(f"persistent id names {storage_type!r:.60}, not a storage type")
        if not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise self.corrupt(f"malformed storage id (key={key!r:.40}, numel={numel!r:.40})")
        cache_key = (key, storage_type.dtype)
        if cache_key not in self.storages:
            raw = self._read_storage_bytes(key)
            self.storages[cache_key] = self._typed_storage(key, raw, storage_type, numel)
        return self.storages[cache_key]

    def _read_storage_bytes(self, key: str) -> bytes:
        if key not in self.raw:
            record = f"{self.prefix}data/{key}"
            if record not in self.names:
                raise MissingRecordError(_message(
                    self.path, f"storage record '{record}' is missing from the zip",
                    "the file was truncated or edited; re-save the checkpoint"))
            self.raw[key] = _read_record(self.path, self.zf, record)
        return self.raw[key]

    def _typed_storage(self, key: str, raw: bytes, st: _StorageType, numel: int) -> _Storage:
        dtype = st.dtype
        need = numel * dtype.itemsize
        if len(raw) < need:
            raise self.corrupt(
                f"storage record data/{key} has {len(raw)} bytes but torch.{st.name} of "
                f"{numel} elements needs {need}", StorageBoundsError)
        array = np.frombuffer(raw, dtype=dtype, count=numel)
        if self.swap:
            array = _byteswap(array)
            array.flags.writeable = False
        return _Storage(key, array)

    # ---- tensors -----------------------------------------------------------------------------

    def view(self, storage: Any, offset: Any, size: Any, stride: Any, dtype: np.dtype | None
             ) -> np.ndarray:
        """Materialises ``storage[offset:]`` as ``size``/``stride`` (in elements) and copies it.

        Args:
            storage: a ``_Storage`` from :meth:`persistent_load`.
            offset: first element, in elements of the storage dtype (or of ``dtype`` for v3).
            size: shape tuple.
            stride: strides in elements, same length as ``size``.
            dtype: reinterpret the storage bytes as this dtype (``_rebuild_tensor_v3``) or None.

        Returns:
            A C-contiguous writable array of shape ``size``; identical views return one object.
        """
        if not isinstance(storage, _Storage):
            raise self.corrupt(f"tensor rebuilt from {type(storage).__name__}, not a storage")
        if not (_is_int(offset) and _is_int_tuple(size) and _is_int_tuple(stride)):
            raise self.corrupt(f"malformed tensor view (offset={offset!r:.30}, size={size!r:.40},"
                               f" stride={stride!r:.40})")
        size, stride = tuple(size), tuple(stride)
        if len(size) != len(stride) or offset < 0 or min(size + stride, default=0) < 0:
            raise self.corrupt(f"malformed tensor view (offset={offset}, size={size}, "
                               f"stride={stride})")
        flat = storage.array
        if dtype is not None and dtype != flat.dtype:  # reinterpret the record's raw bytes
            nbytes = flat.nbytes
            if nbytes % dtype.itemsize:
                raise self.corrupt(f"storage data/{storage.key} of {nbytes} bytes is not a "
                                   f"whole number of {dtype} elements")
            flat = np.frombuffer(self.raw[storage.key], dtype, nbytes // dtype.itemsize)
            if self.swap:
                flat = _byteswap(flat)
        memo_key = (storage.key, flat.dtype, offset, size, stride)
        if memo_key in self.views:
            return self.views[memo_key]
        reach = sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        last = offset + reach if math.prod(size) else offset - 1  # empty: offset <= numel
        if last >= flat.shape[0]:
            raise StorageBoundsError(_message(
                self.path, f"tensor view (offset={offset}, size={size}, stride={stride}) needs "
                f"{last + 1} elements but storage data/{storage.key} has {flat.shape[0]}",
                "the checkpoint is corrupted; re-save it from the original run"))
        itemsize = flat.dtype.itemsize
        # as_strided goes through __array_interface__, which some ml_dtypes (float8_e5m2) do
        # not survive, so stride over opaque same-size items and reinterpret the copy.
        opaque = flat[min(offset, flat.shape[0]):].view(np.dtype((np.void, itemsize)))
        strided = np.lib.stride_tricks.as_strided(
            opaque, shape=size, strides=tuple(s * itemsize for s in stride), writeable=False)
        out = np.array(strided, copy=True, order="C").view(flat.dtype)
        self.views[memo_key] = out
        return out

    def rebuild_tensor_v1(self, storage: Any, offset: Any, size: Any, stride: Any) -> np.ndarray:
        """``torch._utils._rebuild_tensor``."""
        return self.view(storage, offset, size, stride, None)

    def rebuild_tensor_v2(self, storage: Any, offset: Any, size: Any, stride: Any,
                          requires_grad: Any = False, hooks: Any = None, metadata: Any = None
                          ) -> np.ndarray:
        """``torch._utils._rebuild_tensor_v2``; ``requires_grad``/hooks/metadata are dropped."""
        del requires_grad, hooks, metadata
        return self.view(storage, offset, size, stride, None)

    def rebuild_tensor_v3(self, storage: Any, offset: Any, size: Any, stride: Any,
                          requires_grad: Any, hooks: Any, dtype: Any, metadata: Any = None
                          ) -> np.ndarray:
        """``torch._utils._rebuild_tensor_v3``: untyped storage plus an explicit dtype."""
        del requires_grad, hooks, metadata
        if not (isinstance(dtype, str) and dtype.startswith("torch.")):
            raise self.corrupt(f"_rebuild_tensor_v3 got dtype {dtype!r:.40}")
        name = dtype[len("torch."):]
        if name not in _TORCH_DTYPES:
            raise UnsupportedDtypeError(_message(
                self.path, f"tensor dtype {dtype} has no numpy equivalent",
                "convert the tensor to a float/int dtype in torch and re-save"))
        return self.view(storage, offset, size, stride, _TORCH_DTYPES[name])

    def rebuild_from_type_v2(self, func: Any, new_type: Any, args: Any, state: Any) -> Any:
        """``torch._tensor._rebuild_from_type_v2``: a plain tensor/Parameter with extra state."""
        del state
        allowed = (self.rebuild_tensor_v1, self.rebuild_tensor_v2, self.rebuild_tensor_v3,
                   _rebuild_parameter)
        if not isinstance(new_type, _TypeMarker) or func not in allowed:
            raise self.corrupt("tensor subclass rebuild with a non-tensor function or type")
        return func(*args)


def _byteswap(array: np.ndarray) -> np.ndarray:
    """Reverses the byte order of each scalar (each half for complex); returns a new array."""
    unit = array.dtype.itemsize // (2 if array.dtype.kind == "c" else 1)
    if unit == 1:
        return array.copy()
    return array.view(f"u{unit}").byteswap().view(array.dtype)


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None,
                       state: Any = None) -> Any:
    """``torch._utils._rebuild_parameter[_with_state]``: a Parameter is just its data."""
    del requires_grad, hooks, state
    if not isinstance(data, np.ndarray):
        raise TypeError(f"Parameter data must be a tensor, got {type(data).__name__}")
    return data


def _path_to_str(posix: bool) -> Callable[..., str]:
    """Returns a callable turning pickled ``pathlib`` parts into a string path."""
    cls = pathlib.PurePosixPath if posix else pathlib.PureWindowsPath

    def build(*parts: Any) -> str:
        if not all(isinstance(p, str) for p in parts):
            raise TypeError("pathlib parts must be strings")
        return str(cls(*parts))

    return build


def _torch_size(dims: Any = ()) -> tuple[int, ...]:
    if not _is_int_tuple(dims):
        raise TypeError("torch.Size needs a tuple of ints")
    return tuple(dims)


def _torch_device(kind: Any, index: Any = None) -> str:
    if not isinstance(kind, str) or not (index is None or _is_int(index)):
        raise TypeError("torch.device needs (str[, int])")
    return kind if index is None else f"{kind}:{index}"


def _safe_set(items: Any = ()) -> set:
    if not isinstance(items, (list, tuple)):
        raise TypeError("set() from a pickle needs a list")
    return set(items)


def _safe_frozenset(items: Any = ()) -> frozenset:
    return frozenset(_safe_set(items))


def _safe_complex(real: Any = 0.0, imag: Any = 0.0) -> complex:
    if not all(isinstance(v, (int, float)) for v in (real, imag)):
        raise TypeError("complex() from a pickle needs numbers")
    return complex(real, imag)


def _safe_bytes(data: Any = b"", *rest: Any) -> bytes:
    if rest or not isinstance(data, (bytes, bytearray, list)):
        raise TypeError("bytes() from a pickle needs bytes or a list of ints")
    return bytes(data)


def _safe_bytearray(data: Any = b"", *rest: Any) -> bytearray:
    if isinstance(data, str) and rest in ((), ("latin-1",), ("latin1",)):
        return bytearray(data.encode("latin-1"))
    return bytearray(_safe_bytes(data, *rest))


def _safe_codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """Protocol-2 pickles spell bytes as ``_codecs.encode(str, 'latin1')``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise TypeError("_codecs.encode from a pickle only decodes latin-1 text")
    return text.encode("latin-1")


def _check_numpy_dtype(dtype: Any) -> np.dtype:
    if not isinstance(dtype, np.dtype):
        raise TypeError("expected a numpy dtype")
    if dtype.hasobject:
        raise _Refused("a numpy object dtype (it could hold arbitrary objects)")
    return dtype


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if not isinstance(spec, str):
        raise TypeError("numpy.dtype from a pickle needs a type string")
    return _check_numpy_dtype(np.dtype(spec, align=bool(align), copy=bool(copy)))


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    dtype = _check_numpy_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise TypeError("numpy scalar data must be bytes of the dtype's size")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


_NDARRAY = _TypeMarker("numpy.ndarray")  # only usable as _reconstruct's subtype, not callable


def _numpy_reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    """``numpy._core.multiarray._reconstruct``: an empty ndarray that BUILD then fills."""
    if subtype is not _NDARRAY or not _is_int_tuple(shape) or not isinstance(typecode, bytes):
        raise TypeError("numpy array reconstruction needs (ndarray, shape, bytes)")
    return np.empty((0,), dtype=np.uint8)  # BUILD (ndarray.__setstate__) sets shape and data


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals and persistent ids go through an :class:`_Archive`."""

    def __init__(self, file: io.BufferedIOBase, archive: _Archive) -> None:
        super().__init__(file)
        self._archive = archive

    def find_class(self, module: str, name: str) -> Any:
        found = self._archive.find_global(module, name)
        if found is _NamespaceDict:
            self._archive.saw_namespace = True
        return found

    def persistent_load(self, pid: Any) -> Any:
        return self._archive.persistent_load(pid)


# --------------------------------------------------------------------------------------------
# Opening the file
# --------------------------------------------------------------------------------------------


def _read_record(path: str, zf: zipfile.ZipFile, name: str) -> bytes:
    """Reads one zip member; CRC/size/inflate failures become :class:`CorruptCheckpointError`."""
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise CorruptCheckpointError(_message(
            path, f"zip record '{name}' is corrupted ({exc})",
            "the file was damaged in transfer; copy or re-save it again")) from exc


def _sniff_not_zip(path: str, head: bytes) -> CheckpointError:
    """Builds the error for a file that ``zipfile`` cannot open, from its first bytes."""
    legacy = head[:1] == b"\x80" and _LEGACY_MAGIC_LE in head[:32]
    if legacy or _LEGACY_MAGIC_TEXT in head[:64]:
        return LegacyFormatError(_message(
            path, "legacy format: a non-zip torch.save file (torch<1.6 or "
            "_use_new_zipfile_serialization=False)", _RESAVE_FIX))
    if head[257:262] == b"ustar":
        return LegacyFormatError(_message(
            path, "legacy format: a tar torch.save file (torch<=0.3)", _RESAVE_FIX))
    if head[:2] == b"PK":
        return CorruptCheckpointError(_message(
            path, "truncated or corrupted zip (no readable central directory)",
            "the file is incomplete; copy or re-save it again"))
    return CorruptCheckpointError(_message(
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
        raise CorruptCheckpointError(_message(
            path, "this is a TorchScript archive (torch.jit.save), not a torch.save checkpoint",
            "save model.state_dict() with torch.save and load that instead"))
    if not candidates:
        raise MissingRecordError(_message(
            path, "zip archive has no '<name>/data.pkl' record, so it is not a torch.save file",
            "pass a checkpoint written by torch.save (torch>=1.6)"))
    first = names[0].split("/", 1)[0] + "/"
    return first if first in candidates else candidates[0]


def _byteorder(path: str, zf: zipfile.ZipFile, prefix: str) -> str:
    """Reads ``<prefix>/byteorder`` (``little`` if absent, as for old writers)."""
    name = f"{prefix}byteorder"
    if name not in zf.namelist():
        return "little"
    order = _read_record(path, zf, name).decode("ascii", "replace").strip()
    if order not in ("little", "big"):
        raise CorruptCheckpointError(_message(
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
        archive = _Archive(name, zf, prefix, swap)
        pickled = _read_record(name, zf, f"{prefix}data.pkl")
        try:
            obj = _RestrictedUnpickler(io.BytesIO(pickled), archive).load()
        except CheckpointError:
            raise
        except _Refused as exc:
            raise UnsafeCheckpointError(_message(
                name, f"refusing to unpickle {exc}; nothing was run", _UNSAFE_FIX)) from None
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, IndexError, KeyError,
                AttributeError, OverflowError, MemoryError, RecursionError) as exc:
            raise CorruptCheckpointError(_message(
                name, f"cannot unpickle {prefix}data.pkl ({type(exc).__name__}: {exc})",
                "the checkpoint is corrupted or uses an unsupported object; re-save it "
                "with plain tensors, dicts and numbers")) from exc
    if archive.saw_namespace:
        obj = _plainify(obj, {})
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
        raise CorruptCheckpointError(_message(
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
