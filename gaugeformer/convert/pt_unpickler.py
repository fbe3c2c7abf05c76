"""The safe unpickler of a ``torch.save`` zip: only allow-listed globals can be named.

``data.pkl`` may name only tensor rebuild functions, storage types, torch
dtypes/``Size``/``device``, ``collections.OrderedDict``, ``pathlib`` paths, ``argparse.Namespace``,
numpy scalars/arrays and a few harmless builtins; each resolves to a stand-in here (tensors: the
:class:`~gaugeformer.convert.pt_tensors.TensorReader`), which checks its arguments before it builds
anything.  Any other global raises :class:`~gaugeformer.convert.pt_errors.UnsafeCheckpointError`
before anything is imported or called, so a crafted checkpoint cannot run code.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pathlib
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np

from gaugeformer.convert.pt_errors import (
    UNSAFE_FIX,
    Refused,
    UnsafeCheckpointError,
    UnsupportedDtypeError,
    message,
)
from gaugeformer.convert.pt_tensors import (
    STORAGE_DTYPES,
    TORCH_DTYPES,
    StorageType,
    TensorReader,
    TypeMarker,
    is_int,
    is_int_tuple,
    rebuild_parameter,
)

# --------------------------------------------------------------------------------------------
# argparse.Namespace, as a plain dict
# --------------------------------------------------------------------------------------------

class NamespaceDict(dict):
    """Receives an ``argparse.Namespace`` (NEWOBJ + BUILD); replaced by a plain dict afterwards."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slotstate)
            state = state[0]
        if not isinstance(state, dict):
            raise TypeError(f"argparse.Namespace state must be a dict, got {type(state).__name__}")
        self.update(state)


def plainify(obj: Any, memo: dict[int, Any]) -> Any:
    """Copies containers, replacing ``NamespaceDict`` by ``dict``; keeps identity and cycles."""
    oid = id(obj)
    if oid in memo:
        return memo[oid]
    kind = type(obj)
    if kind in (dict, collections.OrderedDict, NamespaceDict):
        out: Any = collections.OrderedDict() if kind is collections.OrderedDict else {}
        memo[oid] = out
        for key, value in obj.items():
            out[key] = plainify(value, memo)
        return out
    if kind is list:
        out = []
        memo[oid] = out
        out.extend(plainify(v, memo) for v in obj)
        return out
    if kind is tuple:
        out = tuple(plainify(v, memo) for v in obj)
        memo[oid] = out
        return out
    return obj


# --------------------------------------------------------------------------------------------
# Allow-listed callables: each checks its arguments
# --------------------------------------------------------------------------------------------


def _path_to_str(posix: bool) -> Callable[..., str]:
    """Returns a callable turning pickled ``pathlib`` parts into a string path."""
    cls = pathlib.PurePosixPath if posix else pathlib.PureWindowsPath

    def build(*parts: Any) -> str:
        if not all(isinstance(p, str) for p in parts):
            raise TypeError("pathlib parts must be strings")
        return str(cls(*parts))

    return build


def _torch_size(dims: Any = ()) -> tuple[int, ...]:
    if not is_int_tuple(dims):
        raise TypeError("torch.Size needs a tuple of ints")
    return tuple(dims)


def _torch_device(kind: Any, index: Any = None) -> str:
    if not isinstance(kind, str) or not (index is None or is_int(index)):
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
        raise Refused("a numpy object dtype (it could hold arbitrary objects)")
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


_NDARRAY = TypeMarker("numpy.ndarray")  # only usable as _reconstruct's subtype, not callable


def _numpy_reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    """``numpy._core.multiarray._reconstruct``: an empty ndarray that BUILD then fills."""
    if subtype is not _NDARRAY or not is_int_tuple(shape) or not isinstance(typecode, bytes):
        raise TypeError("numpy array reconstruction needs (ndarray, shape, bytes)")
    return np.empty((0,), dtype=np.uint8)  # BUILD (ndarray.__setstate__) sets shape and data


# --------------------------------------------------------------------------------------------
# The unpickler
# --------------------------------------------------------------------------------------------


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals go through an allow-list and whose persistent ids (the
    storages) and tensor rebuilds go through a :class:`TensorReader`.

    Attributes:
        saw_namespace: the pickle held an ``argparse.Namespace`` (call :func:`plainify` on the
            result to turn it into a ``dict``).
    """

    def __init__(self, file: io.BufferedIOBase, reader: TensorReader) -> None:
        super().__init__(file)
        self.reader = reader
        self.path = reader.path
        self.saw_namespace = False
        self.globals = self._allow_list()

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
            ("argparse", "Namespace"): NamespaceDict,
            ("torch._utils", "_rebuild_tensor"): self.reader.rebuild_tensor_v1,
            ("torch._utils", "_rebuild_tensor_v2"): self.reader.rebuild_tensor_v2,
            ("torch._utils", "_rebuild_tensor_v3"): self.reader.rebuild_tensor_v3,
            ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
            ("torch._tensor", "_rebuild_from_type_v2"): self.reader.rebuild_from_type_v2,
            ("torch", "Tensor"): TypeMarker("torch.Tensor"),
            ("torch.nn.parameter", "Parameter"): TypeMarker("torch.nn.Parameter"),
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
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name, STORAGE_DTYPES[name])
        if module == "torch" and name in TORCH_DTYPES:
            return f"torch.{name}"
        if module in ("torch", "torch.storage") and name.endswith("Storage"):
            raise UnsupportedDtypeError(message(
                self.path, f"storage type torch.{name} has no numpy equivalent "
                "(quantized and other exotic dtypes are not supported)",
                "convert the tensor to a float/int dtype in torch and re-save"))
        raise UnsafeCheckpointError(message(
            self.path, f"refusing to unpickle global '{module}.{name}': it is not on the "
            "allow-list of tensor/container types, and nothing was imported or run",
            UNSAFE_FIX))

    def find_class(self, module: str, name: str) -> Any:
        found = self.find_global(module, name)
        if found is NamespaceDict:
            self.saw_namespace = True
        return found

    def persistent_load(self, pid: Any) -> Any:
        return self.reader.persistent_load(pid)
