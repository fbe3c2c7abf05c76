"""Tests for the torch-free checkpoint reader (gaugeformer.convert.torch_pt and its pt_* modules).

Synthetic checkpoints are crafted here with ``pickle`` + ``zipfile`` in torch's own layout
(``<prefix>/data.pkl``, ``<prefix>/data/<key>``, ``<prefix>/byteorder``, ...), so no torch is
needed. The reference checkpoints in ``tests/fixtures`` were written by torch 2.13.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import pathlib
import pickle
import subprocess
import tarfile
import zipfile
from collections.abc import Iterable
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from gaugeformer.convert.pt_errors import (
    CheckpointError,
    CheckpointLayoutError,
    CorruptCheckpointError,
    LegacyFormatError,
    MissingRecordError,
    StorageBoundsError,
    UnsafeCheckpointError,
    UnsupportedDtypeError,
)
from gaugeformer.convert.torch_pt import load_pt, load_safetensors, split_checkpoint

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
FIXTURE_NAMES = ("A_v256", "D_v256", "G_v256", "T_A_v256")
TOP_KEYS = ["step", "model_state_dict", "optimizer_state_dict", "best_val_loss", "config"]

# ============================================================================================
# Fixture builders: torch-layout .pt zips written by hand
# ============================================================================================

_STORAGE_NAMES = {
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
    np.dtype(np.complex64): "ComplexFloatStorage",
    np.dtype(np.complex128): "ComplexDoubleStorage",
}


class Global:
    """A ``module.name`` global written into the pickle without importing it."""

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def __reduce__(self) -> str:
        return self.name  # pickle then calls save_global(self, name)

    def __call__(self, *args: Any) -> Any:  # pickle wants REDUCE callables to be callable
        raise AssertionError("only written into pickles, never called")


class FakeStorage:
    """One ``data/<key>`` record plus its persistent-id fields."""

    def __init__(self, key: str, type_name: str, data: bytes, numel: int) -> None:
        self.key, self.type_name, self.data, self.numel = key, type_name, data, numel


class FakeTensor:
    """Pickles like a torch tensor: ``_rebuild_tensor_v2(storage, offset, size, stride, ...)``."""

    def __init__(self, storage: FakeStorage, offset: int, size: Iterable[int],
                 stride: Iterable[int], rebuild: str = "_rebuild_tensor_v2",
                 dtype: str | None = None) -> None:
        self.storage, self.offset = storage, offset
        self.size, self.stride = tuple(size), tuple(stride)
        self.rebuild, self.dtype = rebuild, dtype

    def __reduce__(self) -> tuple:
        args: tuple = (self.storage, self.offset, self.size, self.stride, False,
                       collections.OrderedDict())
        if self.rebuild == "_rebuild_tensor_v3":
            args = args + (Global("torch", self.dtype),)
        return Global("torch._utils", self.rebuild), args


class FakeParameter:
    """Pickles like ``nn.Parameter``: ``_rebuild_parameter(tensor, requires_grad, hooks)``."""

    def __init__(self, tensor: FakeTensor) -> None:
        self.tensor = tensor

    def __reduce__(self) -> tuple:
        return (Global("torch._utils", "_rebuild_parameter"),
                (self.tensor, True, collections.OrderedDict()))


class FakeTensorWithState:
    """Pickles like a tensor with Python attributes: ``_rebuild_from_type_v2``."""

    def __init__(self, tensor: FakeTensor) -> None:
        self.tensor = tensor

    def __reduce__(self) -> tuple:
        func, args = self.tensor.__reduce__()
        return (Global("torch._tensor", "_rebuild_from_type_v2"),
                (func, Global("torch", "Tensor"), args, {"note": "dropped"}))


class TorchLikePickler(pickle._Pickler):  # the pure-Python pickler lets us override globals
    """Writes ``Global`` markers as GLOBAL opcodes and storages as persistent ids."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if isinstance(obj, Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, FakeStorage):
            return ("storage", Global("torch", obj.type_name), obj.key, "cpu", obj.numel)
        return None


def dumps_torch_like(obj: Any, protocol: int = 2) -> bytes:
    buf = io.BytesIO()
    TorchLikePickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def _swap(array: np.ndarray) -> np.ndarray:
    unit = array.dtype.itemsize // (2 if array.dtype.kind == "c" else 1)
    return array if unit == 1 else array.view(f"u{unit}").byteswap().view(array.dtype)


class Builder:
    """Collects storages while a test assembles the object to save."""

    def __init__(self, big_endian: bool = False) -> None:
        self.storages: dict[str, FakeStorage] = {}
        self.big_endian = big_endian

    def storage(self, flat: np.ndarray, type_name: str | None = None) -> FakeStorage:
        flat = np.ascontiguousarray(flat).reshape(-1)
        data = (_swap(flat) if self.big_endian else flat).tobytes()
        key = str(len(self.storages))
        st = FakeStorage(key, type_name or _STORAGE_NAMES[flat.dtype], data, flat.size)
        self.storages[key] = st
        return st

    def tensor(self, array: np.ndarray) -> FakeTensor:
        array = np.asarray(array)
        strides = tuple(s // array.itemsize for s in np.ascontiguousarray(array).strides)
        return FakeTensor(self.storage(array), 0, array.shape, strides)


def write_pt(path: pathlib.Path, obj: Any, builder: Builder | None = None, *,
             prefix: str = "archive", byteorder: str | None = "little",
             pickled: bytes | None = None, skip: Iterable[str] = (),
             extra: dict[str, bytes] | None = None) -> pathlib.Path:
    """Writes ``obj`` the way ``torch.save`` lays out its zip (stored, uncompressed)."""
    builder = builder or Builder()
    records = {f"{prefix}/data.pkl": pickled if pickled is not None else dumps_torch_like(obj),
               f"{prefix}/.format_version": b"1", f"{prefix}/.storage_alignment": b"64"}
    if byteorder is not None:
        records[f"{prefix}/byteorder"] = byteorder.encode()
    for st in builder.storages.values():
        records[f"{prefix}/data/{st.key}"] = st.data
    records[f"{prefix}/version"] = b"3\n"
    records.update({f"{prefix}/{k}": v for k, v in (extra or {}).items()})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in records.items():
            if name not in {f"{prefix}/{s}" for s in skip}:
                zf.writestr(name, data)
    return path


def save(tmp_path: pathlib.Path, obj: Any, builder: Builder, **kw: Any) -> Any:
    return load_pt(write_pt(tmp_path / "ckpt.pt", obj, builder, **kw))


def assert_one_line(err: pytest.ExceptionInfo, path: os.PathLike | str) -> str:
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    assert "fix:" in message
    return message


# ============================================================================================
# Synthetic checkpoints: values, dtypes, views
# ============================================================================================

DTYPES = [np.float64, np.float32, np.float16, ml_dtypes.bfloat16, np.int64, np.int32, np.int16,
          np.int8, np.uint8, np.bool_, np.complex64, np.complex128]


def _sample(dtype: Any, shape: tuple[int, ...] = (3, 4)) -> np.ndarray:
    values = np.arange(np.prod(shape), dtype=np.float64).reshape(shape) - 5.25
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return (values.astype(np.int64) % 3 == 0)
    if dtype.kind == "c":
        return (values + 1j * values[::-1]).astype(dtype)
    if dtype.kind in "iu":
        return (np.abs(values) * 7).astype(dtype)
    return values.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("big_endian", [False, True], ids=["little", "big"])
def test_dtypes_round_trip_exactly(tmp_path, dtype, big_endian):
    b = Builder(big_endian=big_endian)
    ref = _sample(dtype)
    out = save(tmp_path, {"x": b.tensor(ref)}, b, byteorder="big" if big_endian else "little")
    assert out["x"].dtype == np.dtype(dtype)
    assert out["x"].shape == ref.shape
    np.testing.assert_array_equal(out["x"].view(np.uint8), ref.view(np.uint8))  # bitwise


def test_views_strides_offsets(tmp_path):
    b = Builder()
    base = np.arange(24, dtype=np.float32)
    st = b.storage(base)
    obj = {
        "transposed": FakeTensor(st, 0, (4, 6), (1, 4)),       # base.reshape(6, 4).T
        "offset": FakeTensor(st, 5, (2, 3), (3, 1)),
        "step2": FakeTensor(st, 1, (6,), (2,)),
        "expanded": FakeTensor(st, 7, (3, 2), (0, 1)),        # stride-0 broadcast
        "scalar": FakeTensor(st, 23, (), ()),                 # 0-d tensor
        "empty": FakeTensor(st, 24, (0, 3), (3, 1)),          # offset == numel is legal
        "tail": FakeTensor(st, 20, (4,), (1,)),
    }
    out = save(tmp_path, obj, b)
    np.testing.assert_array_equal(out["transposed"], base.reshape(6, 4).T)
    np.testing.assert_array_equal(out["offset"], base[5:11].reshape(2, 3))
    np.testing.assert_array_equal(out["step2"], base[1::2][:6])
    np.testing.assert_array_equal(out["expanded"], np.broadcast_to(base[7:9], (3, 2)))
    assert out["scalar"].shape == () and isinstance(out["scalar"], np.ndarray)
    assert out["scalar"] == 23.0
    assert out["empty"].shape == (0, 3) and out["empty"].dtype == np.float32
    np.testing.assert_array_equal(out["tail"], base[20:])
    for value in out.values():
        assert value.flags.c_contiguous and value.flags.writeable


def test_shared_storage_and_tied_views(tmp_path):
    b = Builder()
    st = b.storage(np.arange(12, dtype=np.float64))
    first = FakeTensor(st, 0, (3, 4), (4, 1))
    obj = collections.OrderedDict([
        ("a", first),
        ("a_again", FakeTensor(st, 0, (3, 4), (4, 1))),  # same view, distinct tensor object
        ("a_same_object", first),                         # pickle memo
        ("row1", FakeTensor(st, 4, (4,), (1,))),
    ])
    out = save(tmp_path, obj, b)
    assert isinstance(out, collections.OrderedDict) and list(out) == list(obj)
    assert out["a"] is out["a_again"] is out["a_same_object"]  # ties detectable with `is`
    np.testing.assert_array_equal(out["row1"], out["a"][1])
    out["row1"][0] = -1.0                                     # distinct views: own copies
    assert out["a"][1, 0] == 4.0


def test_parameter_and_tensor_with_state(tmp_path):
    b = Builder()
    obj = {"p": FakeParameter(b.tensor(np.eye(3, dtype=np.float32))),
           "s": FakeTensorWithState(b.tensor(np.ones(2, dtype=np.int64)))}
    out = save(tmp_path, obj, b)
    np.testing.assert_array_equal(out["p"], np.eye(3, dtype=np.float32))
    np.testing.assert_array_equal(out["s"], np.ones(2, dtype=np.int64))


@pytest.mark.parametrize("big_endian", [False, True], ids=["little", "big"])
@pytest.mark.parametrize("torch_dtype,np_dtype", [
    ("float8_e4m3fn", ml_dtypes.float8_e4m3fn), ("float8_e5m2", ml_dtypes.float8_e5m2),
    ("uint16", np.uint16), ("uint32", np.uint32)])
def test_rebuild_tensor_v3_untyped_storage(tmp_path, torch_dtype, np_dtype, big_endian):
    b = Builder()
    ref = np.array([[0.5, 1.0, 2.0], [3.0, 0.25, 448.0]]).astype(np_dtype)
    raw = (_swap(ref) if big_endian else ref).reshape(-1).view(np.uint8)
    st = b.storage(raw, type_name="UntypedStorage")
    t = FakeTensor(st, 1, (2, 2), (3, 1), rebuild="_rebuild_tensor_v3", dtype=torch_dtype)
    out = save(tmp_path, {"t": t}, b, byteorder="big" if big_endian else "little")
    assert out["t"].dtype == np.dtype(np_dtype)
    np.testing.assert_array_equal(out["t"], ref.reshape(-1)[[1, 2, 4, 5]].reshape(2, 2))


def test_python_objects_become_plain(tmp_path):
    b = Builder()
    w = b.tensor(np.full((2, 2), 3.0, np.float32))
    shared_list = [1, 2]
    config = argparse.Namespace(lr=0.1, name="run", dirs=[pathlib.PurePosixPath("/a/b")])
    obj = {
        "config": config,
        "args": argparse.Namespace(nested=argparse.Namespace(k=1), shared=shared_list),
        "shared": shared_list,
        "checkpoint_dir": pathlib.PosixPath("checkpoints_publication/ffn_VFE_dynamic"),
        "win": pathlib.PureWindowsPath(r"C:\runs\x"),
        "size": Global("torch", "Size"),
        "sizes": (Global("torch", "Size"),),
        "device": Global("torch", "device"),
        "dtype": Global("torch", "bfloat16"),
        "tags": {"a", "b"},
        "frozen": frozenset({3}),
        "blob": b"\x00\xffxyz",
        "np_scalar": np.float64(2.5),
        "np_int": np.int64(7),
        "np_array": np.arange(6, dtype=np.int16).reshape(2, 3),
        "weights": collections.OrderedDict(w=w),
        "c": 1 + 2j,
        "inf": float("inf"),
    }

    class _Reduce:  # torch.Size((2, 3)) and torch.device('cuda', 1) as REDUCE calls
        def __init__(self, fn: Global, args: tuple) -> None:
            self.fn, self.args = fn, args

        def __reduce__(self) -> tuple:
            return self.fn, self.args

    obj["size"] = _Reduce(Global("torch", "Size"), ((2, 3),))
    obj["sizes"] = (_Reduce(Global("torch", "Size"), ((),)),)
    obj["device"] = _Reduce(Global("torch", "device"), ("cuda", 1))
    out = save(tmp_path, obj, b)
    assert type(out["config"]) is dict
    assert out["config"] == {"lr": 0.1, "name": "run", "dirs": ["/a/b"]}
    assert out["args"] == {"nested": {"k": 1}, "shared": [1, 2]}
    assert type(out["args"]["nested"]) is dict
    assert out["args"]["shared"] is out["shared"]            # identity kept by the rewrite
    assert out["checkpoint_dir"] == "checkpoints_publication/ffn_VFE_dynamic"
    assert type(out["checkpoint_dir"]) is str
    assert out["win"] == r"C:\runs\x"
    assert out["size"] == (2, 3) and out["sizes"] == ((),)
    assert out["device"] == "cuda:1"
    assert out["dtype"] == "torch.bfloat16"
    assert out["tags"] == {"a", "b"} and out["frozen"] == frozenset({3})
    assert out["blob"] == b"\x00\xffxyz"
    assert out["np_scalar"] == 2.5 and out["np_scalar"].dtype == np.float64
    assert out["np_int"] == 7 and out["np_int"].dtype == np.int64
    np.testing.assert_array_equal(out["np_array"], np.arange(6, dtype=np.int16).reshape(2, 3))
    assert isinstance(out["weights"], collections.OrderedDict)
    assert out["c"] == 1 + 2j and out["inf"] == float("inf")


def test_real_pickler_output_with_protocol_4(tmp_path):
    """Protocol 4 (STACK_GLOBAL, MEMOIZE, FRAME) from the C pickler is read as well."""
    obj = {"path": pathlib.PurePosixPath("x/y"), "od": collections.OrderedDict(a=1),
           "ns": argparse.Namespace(a=[1, 2])}
    path = write_pt(tmp_path / "p4.pt", None, pickled=pickle.dumps(obj, protocol=4))
    assert load_pt(path) == {"path": "x/y", "od": {"a": 1}, "ns": {"a": [1, 2]}}


def test_prefix_and_missing_byteorder_record(tmp_path):
    b = Builder()
    path = write_pt(tmp_path / "m.pt", {"x": b.tensor(np.arange(3.0))}, b,
                    prefix="best_model", byteorder=None)
    np.testing.assert_array_equal(load_pt(path)["x"], np.arange(3.0))


# ============================================================================================
# Malicious pickles: refused, and nothing runs
# ============================================================================================


class _Payload:
    """``__reduce__`` that would run ``fn(*args)`` under a plain ``pickle.load``."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple:
        return self.fn, self.args


def _payloads(marker: pathlib.Path) -> dict[str, tuple[bytes, str]]:
    touch = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system/GLOBAL": (pickle.dumps(_Payload(os.system, touch), protocol=2), "system"),
        "os.system/STACK_GLOBAL": (pickle.dumps(_Payload(os.system, touch), protocol=4),
                                   "system"),
        "os.system/INST": (f"(S'{touch}'\nios\nsystem\n.".encode(), "os.system"),
        "builtins.eval": (pickle.dumps(_Payload(eval, code), protocol=2), "eval"),
        "builtins.exec": (pickle.dumps(_Payload(exec, code), protocol=3), "builtins.exec"),
        "subprocess.Popen": (pickle.dumps(_Payload(subprocess.Popen, ["touch", str(marker)]),
                                          protocol=2), "subprocess.Popen"),
        "torch.load": (b"\x80\x02ctorch\nload\nq\x00X\x01\x00\x00\x00xq\x01\x85q\x02Rq\x03.",
                       "torch.load"),
        # nested inside an otherwise valid checkpoint dict, after a tensor was read
        "nested": (dumps_torch_like({"ok": 1, "cfg": {"x": _Payload(os.system, touch)}}),
                   "system"),
    }


def test_payloads_are_live_under_plain_pickle(tmp_path):
    """Sanity check of the test itself: plain pickle really runs the payload."""
    marker = tmp_path / "plain-marker"
    pickle.loads(_payloads(marker)["os.system/GLOBAL"][0])
    assert marker.exists()


@pytest.mark.parametrize("case", list(_payloads(pathlib.Path("m"))))
def test_unsafe_globals_are_refused_without_running(tmp_path, case):
    marker = tmp_path / "marker"
    payload, global_name = _payloads(marker)[case]
    path = write_pt(tmp_path / "evil.pt", None, pickled=payload)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_pt(path)
    message = assert_one_line(err, path)
    assert global_name in message
    assert not marker.exists()


def test_numpy_object_dtype_is_refused(tmp_path):
    evil = np.array([_Payload(os.system, "true")], dtype=object)
    path = write_pt(tmp_path / "obj.pt", None, pickled=pickle.dumps(evil, protocol=2))
    with pytest.raises(UnsafeCheckpointError):  # refused at numpy.core.multiarray / dtype
        load_pt(path)


def test_numpy_object_dtype_is_refused_even_with_safe_items(tmp_path):
    arr = np.array([1, "a"], dtype=object)
    path = write_pt(tmp_path / "obj2.pt", None, pickled=pickle.dumps(arr, protocol=2))
    with pytest.raises(UnsafeCheckpointError) as err:
        load_pt(path)
    assert "object dtype" in assert_one_line(err, path)


# ============================================================================================
# Error cases
# ============================================================================================


def _valid_file(tmp_path: pathlib.Path) -> tuple[pathlib.Path, bytes]:
    b = Builder()
    payload = np.arange(4096, dtype=np.float32) * 1.5
    path = write_pt(tmp_path / "valid.pt", {"w": b.tensor(payload)}, b)
    return path, payload.tobytes()


def test_legacy_non_zip_format(tmp_path):
    path = tmp_path / "legacy.pt"
    with open(path, "wb") as fh:  # what torch<1.6 / _use_new_zipfile_serialization=False writes
        for item in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001}):
            pickle.dump(item, fh, protocol=2)
        fh.write(b"\x00" * 64)
    with pytest.raises(LegacyFormatError) as err:
        load_pt(path)
    message = assert_one_line(err, path)
    assert "legacy format" in message and "torch>=1.6" in message


def test_legacy_tar_format(tmp_path):
    path = tmp_path / "old.tar.pt"
    src = tmp_path / "sys_info"
    src.write_bytes(b"x")
    with tarfile.open(path, "w") as tf:
        tf.add(src, arcname="sys_info")
    with pytest.raises(LegacyFormatError) as err:
        load_pt(path)
    assert "legacy format" in assert_one_line(err, path)


def test_truncated_zip(tmp_path):
    path, _ = _valid_file(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError) as err:
        load_pt(path)
    assert "truncated" in assert_one_line(err, path)


def test_corrupted_storage_bytes(tmp_path):
    path, payload = _valid_file(tmp_path)
    data = bytearray(path.read_bytes())
    at = data.index(payload[100:200])
    data[at: at + 8] = b"\xde\xad\xbe\xef" * 2
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError) as err:
        load_pt(path)
    assert "corrupted" in assert_one_line(err, path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello, not a checkpoint\n")
    with pytest.raises(CorruptCheckpointError) as err:
        load_pt(path)
    assert "not a PyTorch checkpoint" in assert_one_line(err, path)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_pt(tmp_path / "nope.pt")


def test_missing_data_pkl(tmp_path):
    b = Builder()
    path = write_pt(tmp_path / "nopkl.pt", {"x": b.tensor(np.ones(2))}, b, skip=["data.pkl"])
    with pytest.raises(MissingRecordError) as err:
        load_pt(path)
    assert "data.pkl" in assert_one_line(err, path)


def test_missing_storage_record(tmp_path):
    b = Builder()
    path = write_pt(tmp_path / "nostore.pt", {"x": b.tensor(np.ones(2))}, b, skip=["data/0"])
    with pytest.raises(MissingRecordError) as err:
        load_pt(path)
    assert "archive/data/0" in assert_one_line(err, path)


@pytest.mark.parametrize("type_name", ["QInt8Storage", "FooStorage"])
def test_unknown_storage_dtype(tmp_path, type_name):
    b = Builder()
    t = FakeTensor(b.storage(np.ones(4, np.int8), type_name=type_name), 0, (4,), (1,))
    path = write_pt(tmp_path / "q.pt", {"x": t}, b)
    with pytest.raises(UnsupportedDtypeError) as err:
        load_pt(path)
    assert type_name in assert_one_line(err, path)


def test_unknown_v3_dtype(tmp_path):
    b = Builder()
    st = b.storage(np.zeros(8, np.uint8), type_name="UntypedStorage")
    t = FakeTensor(st, 0, (8,), (1,), rebuild="_rebuild_tensor_v3", dtype="bits8")
    path = write_pt(tmp_path / "bits.pt", {"x": t}, b)
    with pytest.raises(CheckpointError):  # torch.bits8 is not an allow-listed dtype global
        load_pt(path)


def test_unknown_byteorder(tmp_path):
    b = Builder()
    path = write_pt(tmp_path / "bo.pt", {"x": b.tensor(np.ones(2))}, b, byteorder="middle")
    with pytest.raises(CorruptCheckpointError) as err:
        load_pt(path)
    assert "byteorder" in assert_one_line(err, path)


def test_view_past_end_of_storage(tmp_path):
    b = Builder()
    st = b.storage(np.arange(6, dtype=np.float32))
    path = write_pt(tmp_path / "oob.pt", {"x": FakeTensor(st, 2, (2, 3), (3, 1))}, b)
    with pytest.raises(StorageBoundsError) as err:
        load_pt(path)
    message = assert_one_line(err, path)
    assert "needs 8 elements" in message and "has 6" in message


def test_storage_record_shorter_than_numel(tmp_path):
    b = Builder()
    st = b.storage(np.arange(6, dtype=np.float32))
    st.numel = 10  # the persistent id claims more elements than the record holds
    path = write_pt(tmp_path / "short.pt", {"x": FakeTensor(st, 0, (6,), (1,))}, b)
    with pytest.raises(StorageBoundsError) as err:
        load_pt(path)
    assert "24 bytes" in assert_one_line(err, path)


@pytest.mark.parametrize("pickled", [b"\x80\x02}q\x00(X\x01\x00", b"garbage!", b""])
def test_garbled_pickle(tmp_path, pickled):
    path = write_pt(tmp_path / "g.pt", None, pickled=pickled)
    with pytest.raises(CorruptCheckpointError) as err:
        load_pt(path)
    assert "data.pkl" in assert_one_line(err, path)


def test_malformed_tensor_arguments(tmp_path):
    b = Builder()
    st = b.storage(np.arange(4, dtype=np.float32))
    bad = FakeTensor(st, 0, (2, 2), (1,))  # stride rank != size rank
    path = write_pt(tmp_path / "bad.pt", {"x": bad}, b)
    with pytest.raises(CorruptCheckpointError):
        load_pt(path)


def test_torchscript_archive_is_named(tmp_path):
    b = Builder()
    path = write_pt(tmp_path / "ts.pt", {"x": 1}, b, extra={"constants.pkl": b"\x80\x02N."})
    with pytest.raises(CorruptCheckpointError) as err:
        load_pt(path)
    assert "TorchScript" in assert_one_line(err, path)


def test_error_hierarchy():
    for cls in (LegacyFormatError, CorruptCheckpointError, MissingRecordError, StorageBoundsError,
                UnsupportedDtypeError, UnsafeCheckpointError, CheckpointLayoutError):
        assert issubclass(cls, CheckpointError) and issubclass(cls, ValueError)
    assert issubclass(MissingRecordError, CorruptCheckpointError)
    assert issubclass(StorageBoundsError, CorruptCheckpointError)


# ============================================================================================
# safetensors
# ============================================================================================


def test_load_safetensors_round_trip(tmp_path):
    from safetensors.numpy import save_file

    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3),
               "b": np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16),
               "i": np.array(3, dtype=np.int64)}
    save_file(tensors, str(tmp_path / "m.safetensors"), metadata={"config": json.dumps({"K": 19})})
    out, meta = load_safetensors(tmp_path / "m.safetensors")
    assert set(out) == set(tensors)
    for key, ref in tensors.items():
        assert out[key].dtype == ref.dtype and out[key].shape == ref.shape
        np.testing.assert_array_equal(out[key], ref)
    assert json.loads(meta["config"]) == {"K": 19}
    assert split_checkpoint(out)["model_state_dict"].keys() == out.keys()

    save_file({"w": tensors["w"]}, str(tmp_path / "plain.safetensors"))
    assert load_safetensors(tmp_path / "plain.safetensors")[1] == {}


def test_load_safetensors_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CorruptCheckpointError) as err:
        load_safetensors(bad)
    assert_one_line(err, bad)
    with pytest.raises(FileNotFoundError):
        load_safetensors(tmp_path / "missing.safetensors")


# ============================================================================================
# split_checkpoint
# ============================================================================================


def _sd() -> collections.OrderedDict:
    return collections.OrderedDict(a=np.zeros(2, np.float32), b=np.ones((2, 2), np.float32))


def test_split_reference_layout():
    opt = {"state": {}, "param_groups": [{"params": [0, 1], "name": "ffn"}]}
    obj = {"step": 499, "model_state_dict": _sd(), "optimizer_state_dict": opt,
           "best_val_loss": np.float64(3.5), "config": {"lr": 0.1}}
    parts = split_checkpoint(obj)
    assert set(parts) == {"model_state_dict", "optimizer_state_dict", "config", "step",
                          "best_val_loss"}
    assert type(parts["model_state_dict"]) is dict and list(parts["model_state_dict"]) == ["a", "b"]
    assert parts["optimizer_state_dict"] is opt and parts["config"] == {"lr": 0.1}
    assert parts["step"] == 499 and type(parts["step"]) is int
    assert parts["best_val_loss"] == 3.5 and type(parts["best_val_loss"]) is float


def test_split_bare_state_dict():
    parts = split_checkpoint(_sd())
    assert list(parts["model_state_dict"]) == ["a", "b"]
    assert parts["optimizer_state_dict"] is parts["config"] is parts["step"] is None
    assert parts["best_val_loss"] is None


@pytest.mark.parametrize("model_key", ["state_dict", "model_state", "model"])
def test_split_other_trainer_layouts(model_key):
    opt = {"state": {0: {}}, "param_groups": []}
    parts = split_checkpoint({model_key: _sd(), "optimizer": opt,
                              "global_step": np.array(12.0, np.float32)})
    assert list(parts["model_state_dict"]) == ["a", "b"]
    assert parts["optimizer_state_dict"] is opt and parts["step"] == 12


@pytest.mark.parametrize("obj,needle", [
    ([1, 2], "list"),
    ({"config": {}, "step": 1}, "no model state dict"),
    ({"model_state_dict": _sd(), "config": "lr=0.1"}, "config"),
    ({"model_state_dict": _sd(), "step": 1.5}, "step"),
    ({"model_state_dict": _sd(), "best_val_loss": "low"}, "best_val_loss"),
])
def test_split_errors(obj, needle):
    with pytest.raises(CheckpointLayoutError) as err:
        split_checkpoint(obj)
    assert needle in str(err.value) and "\n" not in str(err.value)


# ============================================================================================
# The reference checkpoints (torch 2.13, FastTrainer.save_checkpoint)
# ============================================================================================


@pytest.fixture(scope="module")
def ckpts() -> dict[str, Any]:
    return {name: load_pt(FIXTURES / name / "best_model.pt") for name in FIXTURE_NAMES}


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_top_level(ckpts, name):
    ckpt = ckpts[name]
    assert list(ckpt) == TOP_KEYS
    assert isinstance(ckpt["model_state_dict"], collections.OrderedDict)
    assert ckpt["best_val_loss"] == float("inf")
    assert ckpt["config"]["checkpoint_dir"] == "checkpoints_publication/ffn_VFE_dynamic"
    assert type(ckpt["config"]["checkpoint_dir"]) is str
    parts = split_checkpoint(ckpt)
    assert parts["step"] == (299 if name == "T_A_v256" else 0)
    assert parts["config"] is ckpt["config"] and parts["best_val_loss"] == float("inf")
    for value in parts["model_state_dict"].values():
        assert isinstance(value, np.ndarray) and value.dtype == np.float32


def test_fixture_a_state_dict_shapes(ckpts):
    sd = ckpts["A_v256"]["model_state_dict"]
    expected = {
        "generators": (3, 19, 19), "token_embed.base_mu": (19,),
        "token_embed.base_log_sigma_diag": (19,), "token_embed.generators": (3, 19, 19),
        "token_embed.phi_embed.weight": (256, 3), "token_embed.pos_embed.weight": (128, 19),
        "pos_encoding.pos_phi": (128, 3), "out_proj.weight": (256, 19),
    }
    for layer in (0, 1):
        blk = f"transformer.blocks.{layer}"
        for head in range(9):
            d = 1 if head < 5 else 3 if head < 8 else 5
            expected[f"{blk}.attention.head_generators.{head}.gen"] = (3, d, d)
        expected[f"{blk}.ffn.variational_ffn.lr"] = ()
        expected[f"{blk}.ffn.variational_ffn.generators"] = (3, 19, 19)
    assert {k: v.shape for k, v in sd.items()} == expected
    assert next(iter(sd)) == "generators" and list(sd)[-1] == "out_proj.weight"
    assert "token_embed.mu_embed.weight" not in sd  # gauge_fixed_priors
    # buffers that are one tensor in torch come back as one array
    assert sd["token_embed.generators"] is sd["generators"]


def test_fixture_a_values_match_golden(ckpts):
    sd = ckpts["A_v256"]["model_state_dict"]
    golden = np.load(FIXTURES / "A_v256" / "golden.npz")
    tokens = golden["tokens"]
    # embed_phi = phi_embed[tokens] bitwise; logits = mu_final @ out_proj.weight.T
    np.testing.assert_array_equal(golden["embed_phi"], sd["token_embed.phi_embed.weight"][tokens])
    np.testing.assert_allclose(golden["mu_final"] @ sd["out_proj.weight"].T, golden["logits"],
                               rtol=1e-5, atol=1e-6)


def test_fixture_d_shapes(ckpts):
    sd = ckpts["D_v256"]["model_state_dict"]
    assert sd["generators"].shape == (3, 25, 25)
    assert sd["out_proj.weight"].shape == (256, 25)
    assert [sd[f"transformer.blocks.0.attention.head_generators.{h}.gen"].shape
            for h in range(3)] == [(3, 5, 5), (3, 9, 9), (3, 11, 11)]
    assert not any(k.startswith("transformer.blocks.1.") for k in sd)


def test_fixture_g_tied_embeddings(ckpts):
    sd = ckpts["G_v256"]["model_state_dict"]
    assert sd["out_proj.weight"] is sd["token_embed.mu_embed.weight"]
    assert sd["out_proj.weight"].shape == (256, 19)
    assert sd["transformer.final_norm.weight"].shape == (19,)
    groups = ckpts["G_v256"]["optimizer_state_dict"]["param_groups"]
    assert [(g["name"], len(g["params"])) for g in groups] == [
        ("mu_embed", 1), ("phi_embed", 1), ("ffn", 13)]


# Parameters of config A in named_parameters() order; the trainer fills its groups in this order
# and torch numbers optimizer params consecutively across groups (ids 0..7).
A_PARAMS = [
    ("phi_embed", "token_embed.phi_embed.weight"), ("phi_embed", "pos_encoding.pos_phi"),
    ("ffn", "token_embed.base_mu"), ("ffn", "token_embed.base_log_sigma_diag"),
    ("ffn", "token_embed.pos_embed.weight"),
    ("ffn", "transformer.blocks.0.ffn.variational_ffn.lr"),
    ("ffn", "transformer.blocks.1.ffn.variational_ffn.lr"),
    ("output", "out_proj.weight"),
]


def test_fixture_t_a_optimizer_state(ckpts):
    ckpt = ckpts["T_A_v256"]
    sd, opt = ckpt["model_state_dict"], ckpt["optimizer_state_dict"]
    assert list(opt) == ["state", "param_groups"]
    groups = opt["param_groups"]
    assert [g["name"] for g in groups] == ["phi_embed", "ffn", "output"]
    assert [g["params"] for g in groups] == [[0, 1], [2, 3, 4, 5, 6], [7]]
    assert [g["initial_lr"] for g in groups] == [0.05, 0.2, 0.2]
    assert [g["weight_decay"] for g in groups] == [0.0, 0.01, 0.0]
    for g in groups:
        assert g["betas"] == (0.9, 0.999) and g["eps"] == 1e-8 and g["amsgrad"] is False
    assert sorted(opt["state"]) == list(range(8))
    ids = [i for g in groups for i in g["params"]]
    for pid, (group, name) in zip(ids, A_PARAMS, strict=True):
        assert groups[[g["name"] for g in groups].index(group)]["params"].count(pid) == 1
        state = opt["state"][pid]
        assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
        assert state["step"].shape == () and state["step"].dtype == np.float32
        assert float(state["step"]) == 300.0
        assert state["exp_avg"].shape == state["exp_avg_sq"].shape == sd[name].shape
        assert state["exp_avg"].dtype == np.float32
        assert (state["exp_avg_sq"] >= 0).all()
    assert sum(sd[name].size for _, name in A_PARAMS) == 8488  # KEYS.md parameter count
    # rows >= 32 of pos_phi / pos_embed never got a gradient (training windows of 32)
    assert not opt["state"][1]["exp_avg"][32:].any() and opt["state"][1]["exp_avg"][:32].any()
    assert not opt["state"][4]["exp_avg"][32:].any()


def test_fixture_untrained_optimizer_state_is_empty(ckpts):
    for name in ("A_v256", "D_v256", "G_v256"):
        assert ckpts[name]["optimizer_state_dict"]["state"] == {}
