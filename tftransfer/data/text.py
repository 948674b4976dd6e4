"""`from_csv`, `from_jsonl` and `from_text_folder`: text classification data."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf

from tftransfer.data.labeled_data import LabeledData
from tftransfer.data.labels import encode_labels
from tftransfer.data.skips import report_skipped
from tftransfer.errors import DataError, DataNotFoundError


def _read_lines(path: str, encoding: str) -> tuple[list[str], dict[int, str]]:
    """Returns the decoded lines of `path` and `{line number: problem}`.

    Each line is decoded on its own so that an undecodable byte sequence is
    reported with its line number; such lines are decoded with replacement
    characters so that the rest of the file still parses.
    """
    if not tf.io.gfile.exists(path):
        raise DataNotFoundError(f"Text file {path} does not exist.")
    with tf.io.gfile.GFile(path, "rb") as f:
        raw = f.read()
    if raw.startswith(b"\xef\xbb\xbf") and encoding.replace("-", "") == "utf8":
        raw = raw[3:]
    lines, bad = [], {}
    for number, line in enumerate(raw.splitlines(keepends=True), start=1):
        try:
            lines.append(line.decode(encoding))
        except UnicodeDecodeError as e:
            bad[number] = (
                f"bytes that are not valid {encoding} (byte {line[e.start]:#04x} "
                f"at column {e.start + 1}); re-save the file as {encoding} or "
                "pass the file's `encoding`"
            )
            lines.append(line.decode(encoding, errors="replace"))
    return lines, bad


def _check_example(text, label) -> str | None:
    """Returns what is wrong with one example, or `None`."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return "empty text"
    if not isinstance(text, str):
        return f"text is a {type(text).__name__}, not a string"
    if label is None or (isinstance(label, str) and not label.strip()):
        return "missing label"
    if not isinstance(label, (int, str)) or isinstance(label, bool):
        return f"label {label!r} is neither an integer nor a string"
    return None


def _build(
    rows: Iterator[tuple[str, object, object, str | None]],
    path: str,
    class_names: Sequence[str] | None,
    strict: bool,
    what: str = "rows",
) -> LabeledData:
    """Turns `(where, text, label, problem)` rows into `LabeledData`.

    `where` names the example in messages (`"data.csv line 3"`).
    """
    texts, values, skipped, total = [], [], [], 0
    for where, text, label, problem in rows:
        total += 1
        problem = problem or _check_example(text, label)
        if problem:
            skipped.append(f"{where}: {problem}")
        else:
            texts.append(text)
            values.append(label.strip() if isinstance(label, str) else label)
    reported = report_skipped(skipped, total, path, what, strict)
    if not texts:
        raise DataError(f"{path} has no usable examples ({total} {what} read).")
    labels, names = encode_labels(values, class_names, path)
    return LabeledData(
        dataset=tf.data.Dataset.from_tensor_slices(
            (np.asarray(texts, dtype=object), labels)
        ),
        class_names=names,
        num_examples=len(texts),
        kind="text",
        source=path,
        input_format="text",
        skipped=reported,
    )


def from_csv(
    path: str | os.PathLike,
    *,
    text_column: str = "text",
    label_column: str = "label",
    class_names: Sequence[str] | None = None,
    delimiter: str = ",",
    encoding: str = "utf-8",
    strict: bool = False,
) -> LabeledData:
    """Reads text examples from a CSV file with a header row.

    Labels may be integers (class indices, kept as they are; class names
    default to `"0"`, `"1"`, ...) or strings (numbered in sorted order unless
    `class_names` gives the order). Rows with empty text, a missing label or
    bytes that are not valid in `encoding` are skipped with a
    `SkippedInputWarning` naming the line, and counted in a summary; with
    `strict=True` the first one raises instead.

    Args:
        path: The CSV file (local, or any file system `tf.io.gfile` reads).
        text_column: Header of the column holding the text.
        label_column: Header of the column holding the label.
        class_names: Optional class names, in label order.
        delimiter: The field separator.
        encoding: The file's text encoding (ASCII-compatible).
        strict: Raise `DataError` on the first bad row instead of skipping.

    Returns:
        A `LabeledData` of `(raw string, label)`.

    Raises:
        DataNotFoundError: if the file does not exist.
        DataError: if a named column is missing (the message lists the
            columns the file has), no row is usable, a label is not among
            `class_names`, or (`strict=True`) a row is bad.

    Example:

    >>> data = tftransfer.data.from_csv("reviews.csv", text_column="review",
    ...                                 label_column="sentiment")
    """
    path = os.fspath(path)
    lines, bad = _read_lines(path, encoding)
    reader = csv.reader(lines, delimiter=delimiter)
    header = next(reader, None)
    for column in (text_column, label_column):
        if header is None or column not in header:
            raise DataError(
                f"{path} has no column {column!r}; its columns are "
                f"{header or []}. Pass the right `text_column` / `label_column`."
            )
    text_at, label_at = header.index(text_column), header.index(label_column)

    def rows():
        start = reader.line_num + 1
        for row in reader:
            end, first = reader.line_num, start
            start = end + 1
            if not row:
                continue
            problem = next((bad[n] for n in range(first, end + 1) if n in bad), None)
            yield (
                f"{path} line {first}",
                row[text_at] if text_at < len(row) else None,
                row[label_at] if label_at < len(row) else None,
                problem,
            )

    return _build(rows(), path, class_names, strict)


def from_jsonl(
    path: str | os.PathLike,
    *,
    text_column: str = "text",
    label_column: str = "label",
    class_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    strict: bool = False,
) -> LabeledData:
    """Reads text examples from a JSON Lines file (one JSON object a line).

    Labels and bad rows are handled as in `from_csv()`; a line that is not a
    JSON object is a bad row too. Blank lines are ignored.

    Args:
        path: The `.jsonl` file (local, or any file system `tf.io.gfile`
            reads).
        text_column: Field holding the text.
        label_column: Field holding the label (an integer or a string).
        class_names: Optional class names, in label order.
        encoding: The file's text encoding (ASCII-compatible).
        strict: Raise `DataError` on the first bad row instead of skipping.

    Returns:
        A `LabeledData` of `(raw string, label)`.

    Raises:
        DataNotFoundError: if the file does not exist.
        DataError: if no object has `text_column` or `label_column` (the
            message lists the fields the first object has), no row is
            usable, a label is not among `class_names`, or (`strict=True`) a
            row is bad.

    Example:

    >>> data = tftransfer.data.from_jsonl("reviews.jsonl", label_column="stars")
    """
    path = os.fspath(path)
    lines, bad = _read_lines(path, encoding)
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line) if number not in bad else None
        except json.JSONDecodeError as e:
            bad[number] = f"not valid JSON ({e.msg} at column {e.colno})"
            record = None
        if record is not None and not isinstance(record, dict):
            bad[number] = f"a JSON {type(record).__name__}, not an object"
            record = None
        records.append((number, record))
    objects = [r for _, r in records if r is not None]
    for column in (text_column, label_column):
        if objects and not any(column in r for r in objects):
            raise DataError(
                f"{path} has no field {column!r} in any object; the first "
                f"object has {sorted(objects[0])}. Pass the right "
                "`text_column` / `label_column`."
            )
    rows = (
        (
            f"{path} line {n}",
            (r or {}).get(text_column),
            (r or {}).get(label_column),
            bad.get(n),
        )
        for n, r in records
    )
    return _build(rows, path, class_names, strict)


def from_text_folder(
    path: str | os.PathLike,
    *,
    suffix: str = ".txt",
    encoding: str = "utf-8",
    strict: bool = False,
) -> LabeledData:
    """Reads text files stored one sub-folder per class (`path/<class>/*.txt`).

    Class names are the sorted sub-folder names (hidden ones are ignored);
    files are read in sorted order, one example each. Empty files and files
    with bytes that are not valid in `encoding` are skipped with a
    `SkippedInputWarning` naming the file, and counted in a summary; with
    `strict=True` the first one raises instead.

    Args:
        path: The folder (local, or any file system `tf.io.gfile` reads).
        suffix: The ending of the text files to read.
        encoding: The files' text encoding.
        strict: Raise `DataError` on the first bad file instead of skipping.

    Returns:
        A `LabeledData` of `(raw string, label)`.

    Raises:
        DataNotFoundError: if the folder does not exist.
        DataError: if it holds fewer than two class folders, or a class
            folder holds no usable file.

    Example:

    >>> data = tftransfer.data.from_text_folder("bbc/")  # bbc/sport/001.txt, ...
    """
    path = os.fspath(path)
    if not tf.io.gfile.isdir(path):
        raise DataNotFoundError(
            f"Text folder {path} does not exist; pass a folder holding one "
            f"sub-folder of {suffix} files per class."
        )
    classes = sorted(
        name.rstrip("/")
        for name in tf.io.gfile.listdir(path)
        if not name.startswith(".") and tf.io.gfile.isdir(os.path.join(path, name))
    )
    if len(classes) < 2:
        raise DataError(
            f"{path} holds {len(classes)} class folder(s); a classifier needs "
            f"at least two sub-folders of {suffix} files, one per class."
        )

    def rows():
        for name in classes:
            files = sorted(tf.io.gfile.glob(os.path.join(path, name, f"*{suffix}")))
            if not files:
                raise DataError(
                    f"Class folder {os.path.join(path, name)} holds no {suffix} "
                    "files; add some or remove the folder."
                )
            for file in files:
                with tf.io.gfile.GFile(file, "rb") as f:
                    raw = f.read()
                try:
                    yield file, raw.decode(encoding), name, None
                except UnicodeDecodeError as e:
                    problem = (
                        f"bytes that are not valid {encoding} at byte {e.start}; "
                        f"re-save the file as {encoding} or pass its `encoding`"
                    )
                    yield file, None, name, problem

    return _build(rows(), path, classes, strict, what="files")
