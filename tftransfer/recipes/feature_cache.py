"""The on-disk feature cache of `FeatureExtraction` (and `FineTuning` phase 1).

Features are computed once per (backbone, feature choice, data,
preparation) and stored under a key that fingerprints all four, so a rerun
reuses them and any change computes new ones. Each split is a directory of
shards (`features-00000.npy`, `labels-00000.npy`) plus `manifest.json`,
written into a temporary sibling and renamed into place when complete: a run
killed while computing leaves no partial cache behind.

An example's features have any fixed shape, which the manifest records as
`feature_shape`: a vector `[dim]`, or for `pooling="attention"` a sequence
with its mask as the last channel, `[length, dim + 1]` (see
`tftransfer.recipes.attention_pooling`). Manifests written before that
field record `feature_dim`, read as `[feature_dim]`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import tensorflow as tf

from tftransfer import atomic

DEFAULT_SHARD_BYTES = 64 * 2**20
DEFAULT_MEMORY_BUDGET = 2**30


def fingerprint(*parts) -> str:
    """Returns a short hex digest of JSON-serialisable `parts`."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def weights_digest(layer) -> str:
    """Returns a digest of a layer's weight values (names, shapes, bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    for variable in layer.weights:
        value = np.ascontiguousarray(variable.numpy())
        digest.update(f"{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def files_digest(directory: str | os.PathLike) -> str | None:
    """Returns a digest of a directory's file names, sizes and modification
    times, or `None` when `directory` is not a local directory.

    A cheap stand-in for hashing the weights that a model loads from the
    directory: replacing or editing any file changes its size or time.
    """
    root = Path(directory)
    if not root.is_dir():
        return None
    entries = sorted(
        (path.relative_to(root).as_posix(), *_size_and_time(str(path)))
        for path in root.rglob("*")
        if path.is_file()
    )
    return fingerprint(str(root.resolve()), entries)


def paths_digest(paths: Iterable[str]) -> str:
    """Returns a digest of files' paths, sizes and modification times, in
    order: like `files_digest()`, for the files a dataset reads (local
    paths or `tf.io.gfile` URLs such as `gs://...`).

    Example:

    >>> paths_digest(["flowers/daisy/1.jpg", "flowers/roses/2.jpg"])
    '5f0c...'
    """
    return fingerprint([(path, *_size_and_time(path)) for path in paths])


def _size_and_time(path: str) -> tuple[int, int]:
    """A file's size in bytes and modification time in nanoseconds."""
    if "://" in path:
        stat = tf.io.gfile.stat(path)
        return stat.length, stat.mtime_nsec
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


class DataDigest:
    """A digest of a dataset's `(inputs, labels)` batches, values and order.

    Every example is fingerprinted in the TensorFlow graph
    (`example_fingerprints`), so the fingerprints can come out of the same
    pass that computes the features, and the digest hashes them in order.

    Example:

    >>> DataDigest.of(batches) == cached.data_digest  # one pass, no backbone
    True
    """

    def __init__(self):
        self._hash = hashlib.blake2b(digest_size=16)

    @staticmethod
    def example_fingerprints(inputs, labels) -> tf.Tensor:
        """Returns a 64-bit fingerprint (int64 `[batch]`) of every example."""
        parts = [tf.fingerprint(t) for t in tf.nest.flatten((inputs, labels))]
        rows = tf.fingerprint(tf.concat(parts, axis=1))
        return tf.reshape(tf.bitcast(rows, tf.int64), [-1])

    @classmethod
    def of(cls, batches: tf.data.Dataset) -> str:
        """Returns the digest of batches of `(inputs, labels)` (one pass)."""
        digest = cls()
        fingerprints = batches.map(
            cls.example_fingerprints, num_parallel_calls=tf.data.AUTOTUNE
        )
        for values in fingerprints.as_numpy_iterator():
            digest.update(values)
        return digest.hexdigest()

    def update(self, fingerprints: np.ndarray) -> None:
        """Adds the fingerprints of the next batch of examples."""
        self._hash.update(np.ascontiguousarray(fingerprints, np.int64).tobytes())

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def stored_labels(labels) -> np.ndarray:
    """A batch of labels as the cache stores them: integer class indices
    as int64 `[batch]`; float labels (multi-hot vectors, regression targets)
    as float32 `[batch, width]`.

    The dtype follows the task: recipes give multi-label and regression
    labels as floats, integer ones included (see `Recipe._batches`).
    """
    labels = np.asarray(labels)
    if labels.dtype.kind in "iu":
        return labels.astype(np.int64).reshape(-1)
    return labels.astype(np.float32).reshape(len(labels), -1)


class CachedFeatures:
    """Features and labels of one split, stored as shards on disk.

    Args:
        directory: the split's directory (holding `manifest.json`).
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        manifest = json.loads((self.directory / "manifest.json").read_text())
        self.shards: list[int] = manifest["shards"]
        # Per-example feature shape (older manifests: a vector's width).
        self.feature_shape: tuple[int, ...] = tuple(
            manifest["feature_shape"]
            if "feature_shape" in manifest
            else [manifest["feature_dim"]]
        )
        self.dtype: str = manifest["dtype"]
        # Per-example label shape and dtype: `[]`, int64 (class indices) or
        # `[width]`, float32 (multi-hot labels, regression targets).
        labels = manifest.get("labels", {"shape": [], "dtype": "int64"})
        self.label_shape: tuple[int, ...] = tuple(labels["shape"])
        self.label_dtype: str = labels["dtype"]
        self.data_digest: str | None = manifest.get("data_digest")
        # The dtype policy the backbone pass computed them in.
        self.precision: str = manifest.get("precision", "float32")

    @property
    def num_examples(self) -> int:
        return sum(self.shards)

    @property
    def nbytes(self) -> int:
        values = self.num_examples * int(np.prod(self.feature_shape))
        return values * np.dtype(self.dtype).itemsize

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns all `(features, labels)` as arrays in memory, features
        `[num_examples, *feature_shape]`."""
        return self._load("features"), self.labels()

    def labels(self) -> np.ndarray:
        """Returns all labels in memory: int64 `[num_examples]` class
        indices, or float32 `[num_examples, width]` (multi-hot labels,
        regression targets)."""
        return self._load("labels")

    def _load(self, kind: str) -> np.ndarray:
        return np.concatenate(
            [np.load(self._path(kind, i)) for i in range(len(self.shards))]
        )

    def dataset(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        drop_remainder: bool = False,
    ) -> tf.data.Dataset:
        """Returns batches of `(features, labels)`.

        Features up to `memory_budget` bytes are held in memory; larger ones
        are streamed from the shards (memory-mapped), so memory use stays
        flat however many examples there are.

        Args:
            batch_size: the global batch size.
            shuffle: shuffle every epoch (shard order and examples).
            seed: shuffling seed (give one under multi-worker training, so
                that every worker shuffles alike).
            memory_budget: bytes of features to hold in memory at most.
            drop_remainder: drop the last partial batch.
        """
        if self.nbytes <= memory_budget:
            dataset = tf.data.Dataset.from_tensor_slices(self.arrays())
            if shuffle:
                dataset = dataset.shuffle(self.num_examples, seed=seed)
        else:
            dataset = self._streamed(shuffle, seed)
        return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(
            tf.data.AUTOTUNE
        )

    def _streamed(self, shuffle: bool, seed: int | None) -> tf.data.Dataset:
        signature = (
            tf.TensorSpec((None, *self.feature_shape), self.dtype),
            tf.TensorSpec((None, *self.label_shape), self.label_dtype),
        )

        def read_shard(index):
            index = int(index)
            yield (
                np.load(self._path("features", index), mmap_mode="r"),
                np.load(self._path("labels", index), mmap_mode="r"),
            )

        indices = tf.data.Dataset.range(len(self.shards))
        if shuffle:
            indices = indices.shuffle(len(self.shards), seed=seed)
        dataset = indices.interleave(
            lambda index: tf.data.Dataset.from_generator(
                read_shard, args=(index,), output_signature=signature
            ),
            cycle_length=2 if shuffle else 1,
        ).unbatch()
        if shuffle:
            dataset = dataset.shuffle(max(self.shards), seed=seed)
        return dataset.apply(tf.data.experimental.assert_cardinality(self.num_examples))

    def _path(self, kind: str, index: int) -> Path:
        return self.directory / f"{kind}-{index:05d}.npy"


class FeatureCache:
    """A directory of cached features, one subdirectory per key and split.

    Args:
        directory: where the cache lives (shared between runs).
        shard_bytes: size of one shard file.

    Example:

    >>> cache = FeatureCache("~/.cache/tftransfer/features")
    >>> train = cache.lookup(key, "train") or cache.store(key, "train", batches)
    >>> train.dataset(32, shuffle=True)
    """

    def __init__(
        self, directory: str | os.PathLike, *, shard_bytes: int = DEFAULT_SHARD_BYTES
    ):
        self.directory = Path(directory).expanduser()
        self.shard_bytes = shard_bytes

    def lookup(self, key: str, split: str) -> CachedFeatures | None:
        """Returns the cached split, or `None` when it was never completed."""
        directory = self.directory / key / split
        if (directory / "manifest.json").exists():
            return CachedFeatures(directory)
        return None

    def store(
        self,
        key: str,
        split: str,
        batches: Iterable,
        *,
        data_digest: DataDigest | None = None,
        precision: Callable[[], str] | None = None,
        write: bool = True,
    ) -> CachedFeatures:
        """Stores a split (replacing any older one) and returns it.

        Args:
            key: the fingerprint of backbone, features, data and preparation.
            split: `"train"`, `"validation"` or `"test"`.
            batches: an iterable of `(features, labels)` numpy batches,
                consumed once; features `[batch, *feature_shape]`, one
                `feature_shape` for all.
            data_digest: a `DataDigest` that `batches` updates while it is
                consumed; it is recorded in the manifest, so a later run can
                check that the data under `key` is still the same.
            precision: returns the dtype policy the features were computed
                in, asked once `batches` is consumed (the pass may choose it
                on its first batches); recorded in the manifest. `None`:
                float32.
            write: whether this process stores the result (`False` on
                non-chief workers, which keep theirs in a temporary folder,
                removed with the last reference to the returned features).
        """
        parent = (
            self.directory / key
            if write
            else Path(tempfile.mkdtemp(prefix="features-"))
        )
        parent.mkdir(parents=True, exist_ok=True)
        # A feature pass killed mid-write left its partial folder behind.
        atomic.remove_stale_temporaries(parent, f".{split}.partial-")
        temporary = atomic.temporary_dir(parent, f".{split}.partial-")
        try:
            self._write(temporary, batches, data_digest, precision)
            atomic.replace_dir(temporary, parent / split)
        except BaseException:
            if not write:
                shutil.rmtree(parent, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        features = CachedFeatures(parent / split)
        if not write:
            # Nothing else reads this private copy.
            weakref.finalize(features, shutil.rmtree, parent, ignore_errors=True)
        return features

    def _write(
        self,
        directory: Path,
        batches: Iterable,
        data_digest: DataDigest | None,
        precision: Callable[[], str] | None,
    ) -> None:
        shards: list[int] = []
        pending_features: list[np.ndarray] = []
        pending_labels: list[np.ndarray] = []
        pending_bytes = 0
        feature_shape, dtype = [0], "float32"
        label_shape, label_dtype = [], "int64"

        def flush():
            nonlocal pending_bytes
            index = len(shards)
            np.save(
                directory / f"features-{index:05d}.npy",
                np.concatenate(pending_features),
            )
            np.save(
                directory / f"labels-{index:05d}.npy", np.concatenate(pending_labels)
            )
            shards.append(sum(len(f) for f in pending_features))
            pending_features.clear()
            pending_labels.clear()
            pending_bytes = 0

        for features, labels in batches:
            features = np.asarray(features)
            feature_shape, dtype = list(features.shape[1:]), features.dtype.name
            pending_features.append(features)
            labels = stored_labels(labels)
            label_shape, label_dtype = list(labels.shape[1:]), labels.dtype.name
            pending_labels.append(labels)
            pending_bytes += features.nbytes
            if pending_bytes >= self.shard_bytes:
                flush()
        if pending_features:
            flush()
        atomic.write_json(
            directory / "manifest.json",
            {
                "shards": shards,
                "feature_shape": feature_shape,
                "dtype": dtype,
                "labels": {"shape": label_shape, "dtype": label_dtype},
                "data_digest": data_digest.hexdigest() if data_digest else None,
                "precision": precision() if precision else "float32",
            },
        )
