"""Turn a model handle into a directory that holds a SavedModel.

Downloading, caching and archive extraction are tensorflow_hub's own
(`tensorflow_hub.resolve`, cache in `TFHUB_CACHE_DIR`,
`TFHUB_MODEL_LOAD_FORMAT`); this module adds the checks and the error
messages around them.
"""

import os
import urllib.error

import tensorflow as tf
import tensorflow_hub as hub

from tftransfer.errors import HandleError, HandleNotFoundError

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
    the cache.

    Args:
        handle: the handle or path of a TF2 SavedModel.

    Returns:
        A local or `gs://` directory holding `saved_model.pb`.

    Raises:
        HandleNotFoundError: a local path that does not exist.
        HandleError: a handle that cannot be downloaded, an unsafe archive,
            or a folder that holds no SavedModel.

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
    try:
        return hub.resolve(handle)
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
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return
    contents = sorted(os.listdir(path))
    if "saved_model.pbtxt" in contents:
        return
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
