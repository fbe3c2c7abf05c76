"""The tensor reader of a ``torch.save`` zip: storage records viewed as numpy arrays.

A pickled tensor is a call ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
whose storage is a persistent id ``('storage', torch.<X>Storage, key, location, numel)`` naming the
record ``<prefix>/data/<key>``.  :class:`TensorReader` resolves those ids (:meth:`persistent_load`)
and performs the rebuild calls on numpy: exact dtype (``bfloat16``/``float8_*`` via ``ml_dtypes``),
native byte order, C-contiguous writable copies; identical views of one storage come back as one
array object, so tied weights stay tied.  The safe unpickler that calls it:
:mod:`gaugeformer.convert.pt_unpickler`.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from typing import Any

import ml_dtypes
import numpy as np

from gaugeformer.convert.pt_errors import (
    CheckpointError,
    CorruptCheckpointError,
    MissingRecordError,
    StorageBoundsError,
    UnsupportedDtypeError,
    message,
)



# torch.<X>Storage (typed storages, as written by torch.save for the classic dtypes).
STORAGE_DTYPES: dict[str, np.dtype] = {
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
TORCH_DTYPES: dict[str, np.dtype] = {
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



# --------------------------------------------------------------------------------------------
# Value types created while unpickling
# --------------------------------------------------------------------------------------------


class StorageType:
    """Stand-in for a ``torch.<X>Storage`` class named by the pickle."""

    def __init__(self, name: str, dtype: np.dtype) -> None:
        self.name = name
        self.dtype = dtype


class Storage:
    """A storage record viewed as a flat array of ``numel`` elements of ``dtype``.

    Attributes:
        key: the record name under ``data/``.
        array: 1-D read-only array, shape ``(numel,)``, native byte order.
    """

    def __init__(self, key: str, array: np.ndarray) -> None:
        self.key = key
        self.array = array


class TypeMarker:
    """Stand-in for ``torch.Tensor`` / ``torch.nn.Parameter`` used as ``new_type``."""

    def __init__(self, name: str) -> None:
        self.name = name


def is_int(value: Any) -> bool:
    """A Python int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_int_tuple(value: Any) -> bool:
    """A tuple or list of :func:`is_int` values."""
    return isinstance(value, (tuple, list)) and all(is_int(v) for v in value)


def read_record(path: str, zf: zipfile.ZipFile, name: str) -> bytes:
    """Reads one zip member; CRC/size/inflate failures become :class:`CorruptCheckpointError`."""
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise CorruptCheckpointError(message(
            path, f"zip record '{name}' is corrupted ({exc})",
            "the file was damaged in transfer; copy or re-save it again")) from exc


# --------------------------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------------------------


class TensorReader:
    """The storages and tensor views of one opened torch zip archive.

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
        self.storages: dict[tuple[str, np.dtype], Storage] = {}
        self.views: dict[tuple, np.ndarray] = {}

    # ---- errors ------------------------------------------------------------------------------

    def corrupt(self, problem: str, cls: type[CheckpointError] = CorruptCheckpointError) -> Any:
        """Returns (for ``raise``) a corrupt-file error naming this file."""
        return cls(message(self.path, problem, "re-save the checkpoint from the original run"))

    # ---- storages ----------------------------------------------------------------------------

    def persistent_load(self, pid: Any) -> Storage:
        """Returns the storage named by ``('storage', type, key, location, numel)``."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise self.corrupt(f"unexpected persistent id {pid!r:.80} in data.pkl")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, StorageType):
            raise self.corrupt(f"persistent id names {storage_type!r:.60}, not a storage type")
        if not isinstance(key, str) or not is_int(numel) or numel < 0:
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
                raise MissingRecordError(message(
                    self.path, f"storage record '{record}' is missing from the zip",
                    "the file was truncated or edited; re-save the checkpoint"))
            self.raw[key] = read_record(self.path, self.zf, record)
        return self.raw[key]

    def _typed_storage(self, key: str, raw: bytes, st: StorageType, numel: int) -> Storage:
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
        return Storage(key, array)

    # ---- tensors -----------------------------------------------------------------------------

    def view(self, storage: Any, offset: Any, size: Any, stride: Any, dtype: np.dtype | None
             ) -> np.ndarray:
        """Materialises ``storage[offset:]`` as ``size``/``stride`` (in elements) and copies it.

        Args:
            storage: a ``Storage`` from :meth:`persistent_load`.
            offset: first element, in elements of the storage dtype (or of ``dtype`` for v3).
            size: shape tuple.
            stride: strides in elements, same length as ``size``.
            dtype: reinterpret the storage bytes as this dtype (``_rebuild_tensor_v3``) or None.

        Returns:
            A C-contiguous writable array of shape ``size``; identical views return one object.
        """
        if not isinstance(storage, Storage):
            raise self.corrupt(f"tensor rebuilt from {type(storage).__name__}, not a storage")
        if not (is_int(offset) and is_int_tuple(size) and is_int_tuple(stride)):
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
            raise StorageBoundsError(message(
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
        if name not in TORCH_DTYPES:
            raise UnsupportedDtypeError(message(
                self.path, f"tensor dtype {dtype} has no numpy equivalent",
                "convert the tensor to a float/int dtype in torch and re-save"))
        return self.view(storage, offset, size, stride, TORCH_DTYPES[name])

    def rebuild_from_type_v2(self, func: Any, new_type: Any, args: Any, state: Any) -> Any:
        """``torch._tensor._rebuild_from_type_v2``: a plain tensor/Parameter with extra state."""
        del state
        allowed = (self.rebuild_tensor_v1, self.rebuild_tensor_v2, self.rebuild_tensor_v3,
                   rebuild_parameter)
        if not isinstance(new_type, TypeMarker) or func not in allowed:
            raise self.corrupt("tensor subclass rebuild with a non-tensor function or type")
        return func(*args)


def _byteswap(array: np.ndarray) -> np.ndarray:
    """Reverses the byte order of each scalar (each half for complex); returns a new array."""
    unit = array.dtype.itemsize // (2 if array.dtype.kind == "c" else 1)
    if unit == 1:
        return array.copy()
    return array.view(f"u{unit}").byteswap().view(array.dtype)


def rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None,
                      state: Any = None) -> Any:
    """``torch._utils._rebuild_parameter[_with_state]``: a Parameter is just its data."""
    del requires_grad, hooks, state
    if not isinstance(data, np.ndarray):
        raise TypeError(f"Parameter data must be a tensor, got {type(data).__name__}")
    return data
