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


def _read(path: str, whole: bool) -> tuple[int, bytes, bytes]:
    """Returns the size, the first bytes and the last `_TAIL_BYTES` bytes of a
    file: its whole contents as both with `whole`, else 32 and its tail.

    Local files are read with Python's `open`, whose seek is free; `tf.io.gfile`
    (for `gs://` and other remote paths) reads through what it skips.
    """
    remote = "://" in path
    with tf.io.gfile.GFile(path, "rb") if remote else open(path, "rb") as f:
        if whole:
            contents = f.read()
            return len(contents), contents, contents[-_TAIL_BYTES:]
        size = f.size() if remote else os.fstat(f.fileno()).st_size
        head = f.read(32)
        f.seek(max(0, size - _TAIL_BYTES))
        return size, head, f.read()


def _header_problem(size: int, head: bytes, tail: bytes) -> str | None:
    """Returns why a file is not a complete image, judged from its ends."""
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


def _decode_problem(contents: bytes) -> str | None:
    """Decodes image bytes as cheaply as catches damage; returns why not.

    JPEGs are decoded at 1/8 scale: libjpeg still reads every coded block,
    which is where damage inside a file shows, but skips most of the inverse
    DCT. Other formats are decoded in full. Eager ops, one file at a time:
    tracing a `tf.data` pass would take longer than the decoding of a few
    hundred small images.
    """
    try:
        if contents.startswith(b"\xff\xd8\xff"):
            tf.io.decode_jpeg(contents, channels=3, ratio=8)
        else:
            tf.io.decode_image(contents, channels=3, expand_animations=False)
    except tf.errors.OpError as e:
        reason = _OP_CONTEXT.sub("", e.message).strip()
        return f"could not be decoded ({reason})"
    return None


def _file_problem(path: str, decode: bool) -> str | None:
    """Returns why the file at `path` is not a usable image, or `None`."""
    size, head, tail = _read(path, whole=decode)
    problem = _header_problem(size, head, tail)
    if problem is None and decode:
        problem = _decode_problem(head)
    return problem


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
    decode = verify == "decode"
    if paths and "://" in paths[0]:
        workers = 16  # Remote (gs://...): overlap the latency.
    elif decode:
        workers = os.cpu_count() or 1  # Decoding releases the GIL.
    else:
        workers = 1  # Local ends are read faster one by one than across threads.
    if workers == 1:
        reasons = [_file_problem(path, decode) for path in paths]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            reasons = list(pool.map(lambda path: _file_problem(path, decode), paths))
    return {i: r for i, r in enumerate(reasons) if r is not None}
