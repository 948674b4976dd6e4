"""Checking that files are images TensorFlow can decode, before training."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

import tensorflow as tf

from tftransfer.errors import DataError

VERIFY_MODES = ("header", "decode")
_SIGNATURES = {
    b"\xff\xd8\xff": "jpeg",
    b"\x89PNG\r\n\x1a\n": "png",
    b"GIF87a": "gif",
    b"GIF89a": "gif",
    b"BM": "bmp",
}
# Bytes read from the end of a file to find its format's end marker. Cameras
# and editors sometimes pad files after the marker.
_TAIL_BYTES = 1024
# What TensorFlow wraps an eager op's error message in: the function node
# before it, the op's name after it.
_OP_CONTEXT = re.compile(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]( name:.*)?")


def _ends(path: str) -> tuple[int, bytes, bytes]:
    """Returns the size, the first 32 and the last `_TAIL_BYTES` bytes of a file.

    Local files are read with Python's `open`, whose seek is free; `tf.io.gfile`
    (for `gs://` and other remote paths) reads through what it skips.
    """
    remote = "://" in path
    with tf.io.gfile.GFile(path, "rb") if remote else open(path, "rb") as f:
        size = f.size() if remote else os.fstat(f.fileno()).st_size
        head = f.read(32)
        f.seek(max(0, size - _TAIL_BYTES))
        return size, head, f.read()


def _header_problem(path: str) -> str | None:
    """Returns why `path` is not a complete image, judged from its ends."""
    size, head, tail = _ends(path)
    if size == 0:
        return "empty file"
    fmt = next((f for sig, f in _SIGNATURES.items() if head.startswith(sig)), None)
    if fmt is None:
        return "not a JPEG, PNG, BMP or GIF image"
    complete = {
        "jpeg": lambda: b"\xff\xd9" in tail,
        "png": lambda: b"IEND" in tail,
        "gif": lambda: tail.rstrip(b"\x00").endswith(b";"),
        "bmp": lambda: size >= int.from_bytes(head[2:6], "little"),
    }[fmt]
    return None if complete() else f"truncated {fmt.upper()} (its end is missing)"


def _decode_shape(contents: tf.Tensor) -> tf.Tensor:
    """Decodes image bytes as cheaply as catches damage; returns the shape.

    JPEGs are decoded at 1/8 scale: libjpeg still reads every coded block,
    which is where damage inside a file shows, but skips most of the inverse
    DCT, which halves the cost. Other formats are decoded in full.
    """
    return tf.cond(
        tf.equal(tf.strings.substr(contents, 0, 3), b"\xff\xd8\xff"),
        lambda: tf.shape(tf.io.decode_jpeg(contents, channels=3, ratio=8)),
        lambda: tf.shape(
            tf.io.decode_image(contents, channels=3, expand_animations=False)
        ),
    )


def _decode_problems(paths: list[str]) -> dict[int, str]:
    """Decodes every file in `paths` with TensorFlow; returns failures by index."""
    ds = tf.data.Dataset.from_tensor_slices(paths).enumerate()
    ds = ds.map(
        lambda i, p: (i, _decode_shape(tf.io.read_file(p))),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).ignore_errors()
    decoded = {int(i) for i, _ in ds.as_numpy_iterator()}
    problems = {}
    for i in sorted(set(range(len(paths))) - decoded):
        try:
            _decode_shape(tf.io.read_file(paths[i]))
        except tf.errors.OpError as e:
            reason = _OP_CONTEXT.sub("", e.message).strip()
            problems[i] = f"could not be decoded ({reason})"
    return problems


def find_bad_images(paths: list[str], verify: str = "decode") -> dict[int, str]:
    """Finds the files among `paths` that are not usable images.

    Args:
        paths: Image file paths (local or any `tf.io.gfile` file system).
        verify: `"header"` reads each file's first bytes and its end: it
            catches non-images (`.txt`, `.DS_Store`), empty files and
            truncated files, cheaply. `"decode"` also decodes every image
            with TensorFlow (JPEGs at 1/8 scale), which catches damage
            inside a file too.

    Returns:
        `{index into paths: reason}` for each bad file.
    """
    if verify not in VERIFY_MODES:
        raise DataError(
            f"Expected `verify` to be one of {VERIFY_MODES}. Received: "
            f"verify={verify!r}."
        )
    if paths and "://" in paths[0]:  # Remote (gs://...): overlap the latency.
        with ThreadPoolExecutor(max_workers=16) as pool:
            reasons = list(pool.map(_header_problem, paths))
    else:  # Local files are read faster one by one than across threads.
        reasons = [_header_problem(path) for path in paths]
    problems = {i: r for i, r in enumerate(reasons) if r is not None}
    if verify == "decode":
        good = [i for i in range(len(paths)) if i not in problems]
        found = _decode_problems([paths[i] for i in good])
        problems.update({good[j]: reason for j, reason in found.items()})
    return problems
