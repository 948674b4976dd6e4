"""`from_image_folder`: images stored one sub-folder per class."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tftransfer.data.image_files import find_bad_images
from tftransfer.data.labeled_data import LabeledData
from tftransfer.data.skips import report_skipped
from tftransfer.errors import DataError, DataNotFoundError

SPLIT_NAMES = ("train", "validation", "val", "valid", "dev", "test")


def _subfolders(path: str) -> list[str]:
    return sorted(
        name
        for name in tf.io.gfile.listdir(path)
        if not name.startswith(".")
        and tf.io.gfile.isdir(os.path.join(path, name.rstrip("/")))
    )


def _files_under(folder: str) -> list[str]:
    """Every file below `folder` (nested folders included), sorted."""
    files = []
    for root, _, names in tf.io.gfile.walk(folder):
        files.extend(os.path.join(root, name) for name in names)
    return sorted(files)


def _class_names(path: str, split: str | None) -> tuple[str, list[str]]:
    """Returns the folder holding the class folders, and the class names.

    With split sub-folders (`path/train/cats/...`, the TFDS `ImageFolder`
    layout), the class names are those of every split together, so that a
    label means the same class in each split.
    """
    top = [name.rstrip("/") for name in _subfolders(path)]
    if not top:
        raise DataError(
            f"Image folder {path} has no class sub-folders. Put the images of "
            "each class in their own sub-folder: <folder>/<class name>/<image>."
        )
    splits_layout = all(name in SPLIT_NAMES for name in top)
    if split is None:
        if splits_layout:
            raise DataError(
                f"Image folder {path} holds the splits {top}; choose one with "
                f"`split=`, for example split={top[-1]!r}."
            )
        return path, top
    if split not in top:
        raise DataNotFoundError(
            f"Image folder {path} has no split sub-folder {split!r}; it has "
            f"{top}. Pass one of those as `split`."
        )
    names = sorted(
        {name.rstrip("/") for s in top for name in _subfolders(os.path.join(path, s))}
    )
    return os.path.join(path, split), names


def from_image_folder(
    path: str | os.PathLike,
    *,
    split: str | None = None,
    verify: str = "decode",
    strict: bool = False,
) -> LabeledData:
    """Reads images stored one sub-folder per class.

    The layout is `path/<class name>/<image>` (images may sit in nested
    folders below their class folder), or the TFDS `ImageFolder` layout with
    split folders, `path/<split>/<class name>/<image>`, read one split at a
    time. Class names are the sorted folder names; folders whose name starts
    with `.` and files directly in `path` are ignored. JPEG, PNG, BMP and GIF
    (first frame) images are read whatever their file extension.

    Every file is checked when listed, so that one bad file among thousands
    cannot stop training later. Files that are not images (`.txt`,
    `.DS_Store`), empty, truncated or damaged inside (they do not decode) are
    skipped with a `SkippedInputWarning` naming each file and a summary
    count, and listed in `LabeledData.skipped`; with `strict=True` the first
    one raises instead.

    Args:
        path: The folder (local, or any file system `tf.io.gfile` reads,
            such as `gs://`).
        split: The split folder to read, for the split layout.
        verify: `"decode"` (default) checks each file's format signature
            and end marker, then decodes every image once, in parallel
            (JPEGs at 1/8 scale, which still costs 60-90% of one epoch's
            decoding: reading the coded data is most of a JPEG's decode).
            `"header"` only checks the signature and end marker:
            much faster for very large or remote folders, but an image
            damaged inside then stops training with TensorFlow's decode
            error.
        strict: Raise `DataError` on the first bad file instead of skipping.

    Returns:
        A `LabeledData` of `(file path, label)` with
        `input_format="file_path"`; images are decoded in the pipeline.

    Raises:
        DataNotFoundError: if `path` or the split folder does not exist.
        DataError: if the folder has no class folders, a class folder has no
            usable images, there is only one class, or (`strict=True`) a
            file is bad.

    Example:

    >>> data = tftransfer.data.from_image_folder("flowers/", split="train")
    >>> data.class_names
    ['daisy', 'roses', 'tulips']
    """
    path = os.fspath(path).rstrip("/") or "/"
    if not tf.io.gfile.isdir(path):
        kind = "is not a folder" if tf.io.gfile.exists(path) else "does not exist"
        raise DataNotFoundError(
            f"Image folder {path} {kind}. Pass the folder that holds one "
            "sub-folder of images per class."
        )
    root, class_names = _class_names(path, split)
    paths, labels = [], []
    for label, name in enumerate(class_names):
        folder = os.path.join(root, name)
        if tf.io.gfile.isdir(folder):
            files = _files_under(folder)
            paths.extend(files)
            labels.extend([label] * len(files))
    if not paths:
        raise DataError(f"Image folder {root} has no files in its class folders.")
    problems = find_bad_images(paths, verify=verify)
    skipped = report_skipped(
        [f"{paths[i]}: {reason}" for i, reason in sorted(problems.items())],
        total=len(paths),
        source=root,
        what="files",
        strict=strict,
    )
    keep = [i for i in range(len(paths)) if i not in problems]
    paths = [paths[i] for i in keep]
    labels = np.asarray([labels[i] for i in keep], dtype=np.int64)
    present = set(labels.tolist())
    for label, name in enumerate(class_names):
        folder = os.path.join(root, name)
        if label not in present and tf.io.gfile.isdir(folder):
            raise DataError(
                f"Class folder {folder} has no usable images. Add JPEG, PNG, "
                "BMP or GIF images to it, or remove the folder."
            )
    return LabeledData(
        dataset=tf.data.Dataset.from_tensor_slices((paths, labels)),
        class_names=class_names,
        num_examples=len(paths),
        modality="image",
        source=f"image folder {root}",
        input_format="file_path",
        skipped=skipped,
    )
