"""Turn a model handle into a directory that holds a SavedModel.

Downloading, caching and archive extraction are tensorflow_hub's own
(`tensorflow_hub.resolve`, cache in `TFHUB_CACHE_DIR`,
`TFHUB_MODEL_LOAD_FORMAT`); this module adds the checks and the error
messages around them.

Archive size limit: a `.tar`/`.tar.gz` archive (a TF Hub or Kaggle model
URL, any http(s) URL, a `gs://...tar.gz`) may expand to at most
`TFTRANSFER_MAX_ARCHIVE_BYTES` bytes (default 16 GiB) and to at most
`TFTRANSFER_MAX_ARCHIVE_RATIO` times its compressed size (default 100; the
compressed size counts as at least 1 MiB, so any archive may expand to
100 MiB). The downloaded archive is kept in an anonymous temporary file in
the cache folder and checked before anything is extracted: its decompressed
stream and the sizes its members declare (sparse members included) are
counted, and the check stops as soon as either passes the limit. A refused
archive is a `HandleError` naming the handle and both variables, and leaves
nothing in the cache. Set the variables (integers) to raise the limit for an
archive you trust.
"""

import bz2
import gzip
import lzma
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from typing import BinaryIO

import tensorflow as tf
import tensorflow_hub as hub
from google.protobuf import message, text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_hub import compressed_module_resolver, resolver

from tftransfer.errors import (
    ConfigError,
    HandleError,
    HandleNotFoundError,
    TFTransferError,
)

DEFAULT_MAX_ARCHIVE_BYTES = 16 << 30
DEFAULT_MAX_ARCHIVE_RATIO = 100
# The ratio applies to at least this many compressed bytes.
_MIN_COMPRESSED_BYTES = 1 << 20
_CHUNK = 1 << 20

_OFFLINE_HINT = (
    "If this machine has no network access, download the model elsewhere "
    "(a TF Hub or Kaggle handle gives a .tar.gz with `?tf-hub-format=compressed`), "
    "extract it, and pass the folder that holds `saved_model.pb` instead."
)


def resolve(handle: str | os.PathLike) -> str:
    """Returns the directory of the SavedModel that `handle` names.

    Accepted handles:

    - a local directory, or a `file://` URL of one;
    - a `gs://` directory, read in place through `tf.io.gfile` (also what
      `TFHUB_MODEL_LOAD_FORMAT=UNCOMPRESSED` resolves hub handles to, as TPU
      workers need);
    - a TF Hub (`https://tfhub.dev/...`) or Kaggle
      (`https://www.kaggle.com/models/...`) model URL, or any http(s) or
      `gs://` URL of a `.tar.gz` archive; these are downloaded once into the
      tensorflow_hub cache (`TFHUB_CACHE_DIR`).

    Archive members that would land outside the cache folder (`..` paths,
    symbolic or hard links) make the download fail, and nothing of it stays in
    the cache. So does an archive that expands past the archive size limit
    (`TFTRANSFER_MAX_ARCHIVE_BYTES`, default 16 GiB, and
    `TFTRANSFER_MAX_ARCHIVE_RATIO`, default 100 times its compressed size;
    see the module docstring).

    A local folder's `saved_model.pb` (or `.pbtxt`) must parse as a
    SavedModel with at least one MetaGraph.

    Args:
        handle: the handle or path of a TF2 SavedModel.

    Returns:
        A local or `gs://` directory holding `saved_model.pb`.

    Raises:
        HandleNotFoundError: a local path that does not exist.
        HandleError: a handle that cannot be downloaded, an unsafe or
            oversized archive, a folder that holds no SavedModel, or a
            `saved_model.pb` that is empty or corrupt.
        ConfigError: an archive limit variable that is not a positive
            integer.

    Example:

    >>> path = tftransfer.hub.resolve("https://tfhub.dev/google/imagenet/"
    ...                               "mobilenet_v2_100_224/feature_vector/5")
    >>> sorted(tf.io.gfile.listdir(path))
    ['saved_model.pb', 'variables']
    """
    if isinstance(handle, os.PathLike):
        handle = os.fspath(handle)
    if not isinstance(handle, str) or not handle.strip():
        raise HandleError(
            "Expected a model handle: a folder, a `file://`, `gs://` or "
            f"http(s) URL. Received: handle={handle!r}"
        )
    if handle.startswith("file://"):
        handle = handle[len("file://") :]
    if _is_remote(handle):
        path = _download(handle)
    else:
        path = os.path.abspath(os.path.expanduser(handle))
        if not os.path.exists(path):
            raise HandleNotFoundError(
                f"The model handle {handle!r} is not a URL and no such path "
                "exists. Pass the folder that holds `saved_model.pb`, or a "
                "TF Hub / Kaggle model URL."
            )
    if not path.startswith("gs://"):
        _check_is_saved_model(handle, path)
    return path


def _is_remote(handle: str) -> bool:
    return handle.startswith(("http://", "https://", "gs://"))


def _download(handle: str) -> str:
    bounded = [
        r
        for r in (_BoundedHttpResolver(), _BoundedGcsResolver())
        if r.is_supported(handle)
    ]
    try:
        return bounded[0](handle) if bounded else hub.resolve(handle)
    except TFTransferError:
        raise
    except (TimeoutError, urllib.error.URLError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise HandleError(
            f"Could not download the model {handle!r}: {reason}. {_OFFLINE_HINT}"
        ) from error
    except ValueError as error:
        # tensorflow_hub refuses archive members outside the target folder
        # and unexpected server answers with ValueError.
        raise HandleError(
            f"Refused the model at {handle!r}: {error}. A model archive may "
            "only hold regular files and folders below its root; ask the "
            "publisher for a clean archive."
        ) from error
    except OSError as error:
        raise HandleError(
            f"Could not read the model {handle!r}: {error}. {_OFFLINE_HINT}"
        ) from error
    except tf.errors.OpError as error:
        raise HandleError(
            f"Could not read the model {handle!r}: {error.message}"
        ) from error


def _check_is_saved_model(handle: str, path: str) -> None:
    if not os.path.isdir(path):
        raise HandleError(
            f"The model handle {handle!r} is a file, not a SavedModel folder. "
            "Extract the archive and pass the folder that holds "
            "`saved_model.pb`."
        )
    for name in ("saved_model.pb", "saved_model.pbtxt"):
        if os.path.exists(os.path.join(path, name)):
            _check_saved_model_file(handle, path, name)
            return
    contents = sorted(os.listdir(path))
    shown = ", ".join(contents[:10]) + (", ..." if len(contents) > 10 else "")
    hint = (
        "It looks like a Keras 3 file; load it with keras.saving.load_model()."
        if any(name.endswith((".keras", ".h5")) for name in contents)
        else "Pass the folder that holds `saved_model.pb` and `variables/`."
    )
    raise HandleError(
        f"The folder {path!r} (from handle {handle!r}) holds no SavedModel: "
        f"no `saved_model.pb`. It holds: [{shown or 'nothing'}]. {hint}"
    )


def _check_saved_model_file(handle: str, path: str, name: str) -> None:
    """Parses `saved_model.pb(txt)`: an empty or corrupt one is a HandleError."""
    file = os.path.join(path, name)
    if _is_remote(handle):
        fix = (
            f"Delete the folder {path!r} from the tensorflow_hub cache and "
            "resolve the handle again to download it afresh."
        )
    else:
        fix = (
            "Copy or download the model again, or re-export it with "
            "`tf.saved_model.save`."
        )
    described = f"The SavedModel file {file!r} (from handle {handle!r})"
    proto = saved_model_pb2.SavedModel()
    try:
        with open(file, "rb") as f:
            data = f.read()
        if name.endswith(".pbtxt"):
            text_format.Parse(data.decode("utf-8"), proto)
        else:
            proto.ParseFromString(data)
    except OSError as error:
        raise HandleError(f"{described} cannot be read: {error}. {fix}") from error
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError) as error:
        raise HandleError(
            f"{described} is corrupt: it does not parse as a SavedModel "
            f"({error}). {fix}"
        ) from error
    if not proto.meta_graphs:
        state = "is empty (0 bytes)" if not data else "holds no MetaGraph"
        raise HandleError(f"{described} {state}, so it holds no model. {fix}")


def archive_limit(compressed_bytes: int) -> int:
    """The most bytes an archive of `compressed_bytes` bytes may expand to.

    `min(TFTRANSFER_MAX_ARCHIVE_BYTES, TFTRANSFER_MAX_ARCHIVE_RATIO *
    max(compressed_bytes, 1 MiB))`, with the defaults
    `DEFAULT_MAX_ARCHIVE_BYTES` (16 GiB) and `DEFAULT_MAX_ARCHIVE_RATIO`
    (100) for variables that are not set.

    Raises:
        ConfigError: a variable that is set but is not a positive integer.
    """
    max_bytes, ratio = _limits()
    return min(max_bytes, ratio * max(compressed_bytes, _MIN_COMPRESSED_BYTES))


def _limits() -> tuple[int, int]:
    values = []
    for variable, default in (
        ("TFTRANSFER_MAX_ARCHIVE_BYTES", DEFAULT_MAX_ARCHIVE_BYTES),
        ("TFTRANSFER_MAX_ARCHIVE_RATIO", DEFAULT_MAX_ARCHIVE_RATIO),
    ):
        text = os.environ.get(variable, "").strip()
        try:
            value = int(text) if text else default
        except ValueError:
            value = 0
        if value <= 0:
            raise ConfigError(
                f"Expected a positive integer in the environment variable "
                f"{variable}. Received: {variable}={text!r}. Unset it for the "
                f"default ({default})."
            )
        values.append(value)
    return values[0], values[1]


class _BoundedHttpResolver(compressed_module_resolver.HttpCompressedFileResolver):
    """tensorflow_hub's http(s) archive resolver, with the archive size limit.

    tensorflow_hub extracts the checked tar stream (`_checked_archive`)
    instead of the server's response.
    """

    def __call__(self, handle: str) -> str:
        self._handle = handle
        return super().__call__(handle)

    def _call_urlopen(self, request: urllib.request.Request | str) -> BinaryIO:
        with super()._call_urlopen(request) as response:
            return _checked_archive(response, self._handle)


class _BoundedGcsResolver(compressed_module_resolver.GcsCompressedFileResolver):
    """tensorflow_hub's `gs://...tar.gz` resolver, with the archive size limit."""

    def __call__(self, handle: str) -> str:
        def download(handle: str, tmp_dir: str) -> None:
            with tf.io.gfile.GFile(handle, "rb") as source:
                archive = _checked_archive(source, handle)
            with archive:
                resolver.DownloadManager(handle).download_and_uncompress(
                    archive, tmp_dir
                )

        return resolver.atomic_download(
            handle,
            download,
            compressed_module_resolver._module_dir(handle),
            compressed_module_resolver.LOCK_FILE_TIMEOUT_SEC,
        )


class _LimitedStream:
    """Reads a stream, refusing the archive once more than `limit` bytes came out.

    Closing it closes the stream and `archive`, the file the stream reads.
    """

    def __init__(
        self,
        stream: BinaryIO,
        archive: BinaryIO,
        limit: int,
        refuse: Callable[[int], None],
    ):
        self._stream = stream
        self._archive = archive
        self._limit = limit
        self._refuse = refuse
        self._count = 0

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self._limit + 1 - self._count
        data = self._stream.read(size)
        self._count += len(data)
        if self._count > self._limit:
            self._refuse(self._count)
        return data

    def close(self) -> None:
        self._stream.close()
        self._archive.close()

    def __enter__(self) -> "_LimitedStream":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _checked_archive(source: BinaryIO, handle: str) -> _LimitedStream:
    """Copies an archive aside, checks what it expands to, returns its tar stream.

    The archive is copied into an anonymous temporary file in the
    tensorflow_hub cache folder (gone when closed, or when the process ends).
    Its tar stream is then read through once, counting the stream's bytes and
    the sizes its members declare (a sparse member declares more than it
    stores); past `archive_limit` the archive is refused before anything is
    extracted. The returned tar stream, for tensorflow_hub to extract, is read
    through the same limit.
    """
    max_bytes, _ = _limits()
    cache = resolver.tfhub_cache_dir(use_temp=True)
    # Returned open for tensorflow_hub to read: no `with`.
    archive = tempfile.TemporaryFile(dir=None if "://" in cache else cache)  # noqa: SIM115
    try:
        compressed = 0
        for chunk in iter(lambda: source.read(_CHUNK), b""):
            compressed += len(chunk)
            if compressed > max_bytes:
                _refuse_archive(handle, compressed, compressed, max_bytes)
            archive.write(chunk)
        limit = archive_limit(compressed)

        def refuse(expanded: int) -> None:
            _refuse_archive(handle, compressed, expanded, limit)

        try:
            scanned = _LimitedStream(_decompressed(archive), archive, limit, refuse)
            with tarfile.open(fileobj=scanned, mode="r|") as tar:
                declared = 0
                for member in tar:
                    declared += member.size
                    if declared > limit:
                        refuse(declared)
        except (
            tarfile.TarError,
            EOFError,
            OSError,
            zlib.error,
            lzma.LZMAError,
        ) as error:
            raise HandleError(
                f"The download of {handle!r} is not a readable .tar or .tar.gz "
                f"archive ({error}). Check that the URL serves a model archive "
                "(a TF Hub or Kaggle model, or a .tar.gz of a SavedModel folder)."
            ) from error
        return _LimitedStream(_decompressed(archive), archive, limit, refuse)
    except BaseException:
        archive.close()
        raise


def _decompressed(archive: BinaryIO) -> BinaryIO:
    """The tar stream of a gzip, bzip2, xz or uncompressed tar archive.

    Reads from the start of `archive`; tells compressions apart as `tarfile`
    does.
    """
    archive.seek(0)
    head = archive.read(10)
    archive.seek(0)
    if head.startswith(b"\x1f\x8b\x08"):
        return gzip.GzipFile(fileobj=archive, mode="rb")
    if head[:3] == b"BZh" and head[4:10] == b"1AY&SY":
        return bz2.BZ2File(archive)
    if head.startswith((b"\x5d\x00\x00\x80", b"\xfd7zXZ")):
        return lzma.LZMAFile(archive)
    return archive


def _refuse_archive(handle: str, compressed: int, reached: int, limit: int) -> None:
    max_bytes, ratio = _limits()
    raise HandleError(
        f"Refused the model archive at {handle!r}: it expands to more than "
        f"{limit:,} bytes (reached {reached:,} bytes from {compressed:,} "
        "compressed bytes), past the archive size limit "
        f"(TFTRANSFER_MAX_ARCHIVE_BYTES={max_bytes}, "
        f"TFTRANSFER_MAX_ARCHIVE_RATIO={ratio} times the compressed size). "
        "Nothing of it was kept in the cache. If you trust this archive, set "
        "those environment variables to larger integers."
    )
