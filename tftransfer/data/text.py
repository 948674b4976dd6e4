"""`from_csv`, `from_jsonl` and `from_text_folder`: labelled text data
(classification; CSV and JSON Lines also multi-label and regression)."""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import json
import os
import re
import threading
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow as tf

from tftransfer.data.labeled_data import LabeledData
from tftransfer.data.labels import encode_labels, encode_multi_labels, parse_targets
from tftransfer.data.skips import report_fallbacks, report_skipped
from tftransfer.errors import DataError, DataNotFoundError
from tftransfer.vocabulary import TASKS

# `csv.field_size_limit` is one setting for the whole process.
_FIELD_LIMIT_LOCK = threading.Lock()
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _codec(encoding: str, argument: str = "encoding") -> str:
    """Returns the canonical name of `encoding`, or raises `DataError`."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise DataError(
            f"Unknown text encoding. Received: {argument}={encoding!r}. Pass a "
            "Python codec name such as 'utf-8', 'cp1252' or 'latin-1'."
        ) from None


def _without_bom(raw: bytes, encoding: str) -> bytes:
    """Drops a UTF-8 byte order mark when reading UTF-8."""
    if _codec(encoding) == "utf-8" and raw.startswith(codecs.BOM_UTF8):
        return raw[len(codecs.BOM_UTF8) :]
    return raw


def _read_lines(path: str, encoding: str) -> tuple[list[str], dict[int, str]]:
    """Returns the decoded lines of `path` and `{line number: problem}`.

    Each line is decoded on its own so that an undecodable byte sequence is
    reported with its line number; such lines are decoded with replacement
    characters so that the rest of the file still parses.
    """
    if not tf.io.gfile.exists(path):
        raise DataNotFoundError(f"Text file {path} does not exist.")
    with tf.io.gfile.GFile(path, "rb") as f:
        raw = _without_bom(f.read(), encoding)
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


def _check_text(text) -> str | None:
    """Returns what is wrong with one example's text, or `None`."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return "empty text"
    if not isinstance(text, str):
        return f"text is a {type(text).__name__}, not a string"
    return None


def _read_label(label, task: str, separator: str):
    """One example's label as the task reads it: `(value, problem)`.

    Classification: an integer or a string. Multi-label: a list of names or
    indices, or a string of names joined by `separator` (an empty string:
    no label). Regression: the list of the target columns' values, as
    numbers.
    """
    if task == "regression":
        if any(value is None or value == "" for value in label):
            return None, "missing target"
        parsed = parse_targets(label, len(label))
        return (None, parsed) if isinstance(parsed, str) else (parsed, None)
    if label is None:
        return None, "missing label"
    if task == "multi_label":
        if isinstance(label, str):
            return [
                name.strip() for name in label.split(separator) if name.strip()
            ], None
        labels = label if isinstance(label, list) else [label]
        if all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in labels):
            return [v.strip() if isinstance(v, str) else v for v in labels], None
        return None, f"label {label!r} is not a list of names or indices"
    if isinstance(label, str) and not label.strip():
        return None, "missing label"
    if not isinstance(label, (int, str)) or isinstance(label, bool):
        return None, f"label {label!r} is neither an integer nor a string"
    return (label.strip() if isinstance(label, str) else label), None


def _build(
    rows: Iterable[tuple[str, object, object, str | None]],
    path: str,
    class_names: Sequence[str] | None,
    strict: bool,
    what: str = "rows",
    task: str = "classification",
    label_separator: str = "|",
) -> LabeledData:
    """Turns `(where, text, label, problem)` rows into `LabeledData`.

    `where` names the example in messages (`"data.csv line 3"`); `label`
    is read by `_read_label()` for `task`.
    """
    texts, values, kept, skipped, total = [], [], [], [], 0
    for where, text, label, problem in rows:
        total += 1
        problem = problem or _check_text(text)
        if not problem:
            label, problem = _read_label(label, task, label_separator)
        if problem:
            skipped.append(f"{where}: {problem}")
        else:
            texts.append(text)
            values.append(label)
            kept.append(where)
    reported = report_skipped(skipped, total, path, what, strict)
    if not texts:
        raise DataError(f"{path} has no usable examples ({total} {what} read).")
    if task == "multi_label":
        labels, names = encode_multi_labels(values, class_names, path, where=kept)
    elif task == "regression":
        labels, names = np.asarray(values, np.float32), list(class_names)
    else:
        labels, names = encode_labels(values, class_names, path, where=kept)
    return LabeledData(
        dataset=tf.data.Dataset.from_tensor_slices(
            (np.asarray(texts, dtype=object), labels)
        ),
        class_names=names,
        num_examples=len(texts),
        modality="text",
        source=path,
        input_format="text",
        skipped=reported,
        task=task,
    )


def _label_columns(
    label_column: str | Sequence[str], task: str, class_names
) -> tuple[list[str], Sequence[str] | None]:
    """The label columns to read, and the class (target) names: a
    regression task reads one column per target, named after it."""
    if task not in TASKS:
        raise DataError(f"Expected task to be one of {TASKS}. Received: task={task!r}.")
    columns = [label_column] if isinstance(label_column, str) else list(label_column)
    if task != "regression" and len(columns) != 1:
        raise DataError(
            f"Expected one label_column for task={task!r} (several columns are "
            f"regression targets). Received: label_column={columns!r}."
        )
    if task == "regression":
        class_names = list(class_names or columns)
        if len(class_names) != len(columns):
            raise DataError(
                f"Expected one target name per label column ({columns}). "
                f"Received: class_names={class_names!r}."
            )
    return columns, class_names


def _row_label(task: str, values: list):
    """The label of a row from its label columns' `values`."""
    return values if task == "regression" else values[0]


@contextlib.contextmanager
def _field_size_limit(size: int):
    """Lets `csv` read fields of up to `size` characters within the block.

    Python's csv module refuses fields over 128 KiB by default, a limit set
    for the whole process; it is raised under a lock and restored after.
    """
    with _FIELD_LIMIT_LOCK:
        before = csv.field_size_limit()
        csv.field_size_limit(max(before, size))
        try:
            yield
        finally:
            csv.field_size_limit(before)


def _ends_in_open_quote(lines: list[str], delimiter: str) -> bool:
    """Whether the CSV record in `lines` ends inside a quoted field.

    Python's csv reader takes a quote that is never closed as running to the
    end of the file; only its strict mode says so.
    """
    try:
        for _ in csv.reader(lines, delimiter=delimiter, strict=True):
            pass
    except csv.Error as e:
        return "unexpected end of data" in str(e)
    return False


def _csv_records(
    lines: list[str], path: str, delimiter: str
) -> list[tuple[int, int, list[str]]]:
    """Parses CSV `lines` into `(first line, last line, fields)` per record.

    A field may be as long as the file. An unparsable line and a quote that
    is never closed are `DataError`s naming the line.
    """
    records, first = [], 1
    with _field_size_limit(sum(len(line) for line in lines) + 1):
        reader = csv.reader(lines, delimiter=delimiter)
        try:
            for fields in reader:
                records.append((first, reader.line_num, fields))
                first = reader.line_num + 1
        except csv.Error as e:
            raise DataError(
                f"{path} line {reader.line_num}: the CSV cannot be parsed ({e}). "
                "Fix that line, or pass the file's `delimiter`."
            ) from None
        if records and _ends_in_open_quote(lines[records[-1][0] - 1 :], delimiter):
            # The open field is the record's last one and runs to the end of
            # the file, so its line breaks count the lines after its quote.
            breaks = len(_LINE_BREAK.findall(records[-1][2][-1]))
            opened = len(lines) - breaks + bool(_LINE_BREAK.search(lines[-1]))
            raise DataError(
                f"{path} line {opened}: a quoted field opens here and is never "
                "closed; everything from there to the end of the file "
                f"({len(lines) - opened + 1} line(s)) would be read as one "
                "field. Add the closing quote, and double each quote inside a "
                'quoted field ("").'
            )
    return records


def from_csv(
    path: str | os.PathLike,
    *,
    text_column: str = "text",
    label_column: str | Sequence[str] = "label",
    class_names: Sequence[str] | None = None,
    delimiter: str = ",",
    encoding: str = "utf-8",
    strict: bool = False,
    task: str = "classification",
    label_separator: str = "|",
) -> LabeledData:
    """Reads text examples from a CSV file with a header row.

    Classification labels may be integers (class indices, kept as they
    are; class names default to `"0"`, `"1"`, ...) or strings (numbered in
    sorted order unless `class_names` gives the order). Multi-label cells
    hold the example's label names joined by `label_separator` (`"sport|tech"`;
    an empty cell: no label). Regression cells hold numbers, one
    `label_column` per target. Rows with empty text, a missing or unreadable
    label or bytes that are not valid in `encoding` are skipped with a
    `SkippedInputWarning` naming the line, and counted in a summary; with
    `strict=True` the first one raises instead.

    Args:
        path: The CSV file (local, or any file system `tf.io.gfile` reads).
        text_column: Header of the column holding the text.
        label_column: Header of the column holding the label; for
            regression, a list of headers reads several targets.
        class_names: Optional class names, in label order (multi-label: the
            label names; regression: the target names, by default the
            label columns' headers).
        delimiter: The field separator.
        encoding: The file's text encoding (ASCII-compatible).
        strict: Raise `DataError` on the first bad row instead of skipping.
        task: `"classification"`, `"multi_label"` or `"regression"`.
        label_separator: Multi-label only: what separates the label names
            in a cell.

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
    >>> tags = tftransfer.data.from_csv("posts.csv", label_column="tags",
    ...                                 task="multi_label")  # "a|b" cells
    """
    path = os.fspath(path)
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise DataError(
            "Expected `delimiter` to be one character, such as ',', ';' or "
            f"'\\t'. Received: delimiter={delimiter!r}."
        )
    label_columns, class_names = _label_columns(label_column, task, class_names)
    lines, bad = _read_lines(path, encoding)
    records = _csv_records(lines, path, delimiter)
    header = records[0][2] if records else None
    for column in (text_column, *label_columns):
        if header is None or column not in header:
            raise DataError(
                f"{path} has no column {column!r}; its columns are "
                f"{header or []}. Pass the right `text_column` / `label_column`."
            )
    text_at = header.index(text_column)
    label_at = [header.index(column) for column in label_columns]

    def rows():
        for first, last, row in records[1:]:
            if not row:
                continue
            problem = next((bad[n] for n in range(first, last + 1) if n in bad), None)
            yield (
                f"{path} line {first}",
                row[text_at] if text_at < len(row) else None,
                _row_label(task, [row[i] if i < len(row) else None for i in label_at]),
                problem,
            )

    return _build(
        rows(), path, class_names, strict, task=task, label_separator=label_separator
    )


def from_jsonl(
    path: str | os.PathLike,
    *,
    text_column: str = "text",
    label_column: str | Sequence[str] = "label",
    class_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    strict: bool = False,
    task: str = "classification",
    label_separator: str = "|",
) -> LabeledData:
    """Reads text examples from a JSON Lines file (one JSON object a line).

    Labels and bad rows are handled as in `from_csv()`; a line that is not a
    JSON object is a bad row too. Blank lines are ignored. Multi-label
    labels are JSON lists of names or indices (`["sport", "tech"]`), or
    strings joined by `label_separator`; regression targets are numbers.

    Args:
        path: The `.jsonl` file (local, or any file system `tf.io.gfile`
            reads).
        text_column: Field holding the text.
        label_column: Field holding the label (an integer or a string; a
            list for multi-label); for regression, a list of fields reads
            several targets.
        class_names: Optional class names, in label order (see
            `from_csv()`).
        encoding: The file's text encoding (ASCII-compatible).
        strict: Raise `DataError` on the first bad row instead of skipping.
        task: `"classification"`, `"multi_label"` or `"regression"`.
        label_separator: Multi-label only: what separates the label names
            in a string label.

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
    label_columns, class_names = _label_columns(label_column, task, class_names)
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
    for column in (text_column, *label_columns):
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
            _row_label(task, [(r or {}).get(column) for column in label_columns]),
            bad.get(n),
        )
        for n, r in records
    )
    return _build(
        rows, path, class_names, strict, task=task, label_separator=label_separator
    )


def _decode_file(
    raw: bytes, encoding: str, fallback_encoding: str | None
) -> tuple[str | None, str | None, str | None]:
    """Decodes one file's bytes: `(text, problem, fallback note)`.

    `text` is `None` when neither encoding fits; `problem` then says why. The
    note says when `fallback_encoding` was used.
    """
    body = _without_bom(raw, encoding)
    try:
        return body.decode(encoding), None, None
    except UnicodeDecodeError as e:
        where = f"byte {body[e.start]:#04x} at {e.start + len(raw) - len(body)}"
    if fallback_encoding is None:
        problem = (
            f"bytes that are not valid {encoding} ({where}); re-save the file "
            f"as {encoding} or pass its `encoding`"
        )
        return None, problem, None
    try:
        text = body.decode(fallback_encoding)
    except UnicodeDecodeError:
        problem = (
            f"bytes that are neither valid {encoding} ({where}) nor "
            f"{fallback_encoding}; re-save the file as UTF-8"
        )
        return None, problem, None
    return text, None, f"not valid {encoding} ({where}); read as {fallback_encoding}"


def from_text_folder(
    path: str | os.PathLike,
    *,
    suffix: str = ".txt",
    encoding: str = "utf-8",
    fallback_encoding: str | None = "cp1252",
    strict: bool = False,
) -> LabeledData:
    """Reads text files stored one sub-folder per class (`path/<class>/*.txt`).

    Class names are the sorted sub-folder names (hidden ones are ignored);
    files are read in sorted order, one example each.

    Each file is decoded as `encoding` (UTF-8 by default; a UTF-8 byte order
    mark is dropped). A file that is not valid in it is decoded as
    `fallback_encoding` instead (by default Windows-1252, the usual encoding
    of older Western text, which agrees with Latin-1 on every printable
    Latin-1 character); such files are listed in `LabeledData.fallbacks` and counted in a
    `DecodingFallbackWarning`. Empty files and files valid in neither
    encoding are skipped with a `SkippedInputWarning` naming the file, and
    counted in a summary; with `strict=True` the first one raises instead.

    Args:
        path: The folder (local, or any file system `tf.io.gfile` reads).
        suffix: The ending of the text files to read.
        encoding: The encoding every file is decoded as first. Pass it
            when the files are not UTF-8; with an encoding in which any
            bytes are valid (Latin-1), no file falls back.
        fallback_encoding: The encoding of files that are not valid in
            `encoding`, or `None` to skip such files instead.
        strict: Raise `DataError` on the first bad file instead of skipping.
            Files read with `fallback_encoding` are not bad files.

    Returns:
        A `LabeledData` of `(raw string, label)`.

    Raises:
        DataNotFoundError: if the folder does not exist.
        DataError: if it holds fewer than two class folders, a class folder
            holds no usable file, an encoding is unknown, or
            (`strict=True`) a file is bad.

    Example:

    >>> data = tftransfer.data.from_text_folder("bbc/")  # bbc/sport/001.txt, ...
    >>> data.fallbacks  # files that are not UTF-8, read as Windows-1252
    ('bbc/sport/199.txt: not valid utf-8 (byte 0xa3 at 257); read as cp1252',)
    """
    path = os.fspath(path)
    _codec(encoding)
    if fallback_encoding is not None:
        _codec(fallback_encoding, "fallback_encoding")
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
    rows, fallbacks = [], []
    for name in classes:
        files = sorted(tf.io.gfile.glob(os.path.join(path, name, f"*{suffix}")))
        if not files:
            raise DataError(
                f"Class folder {os.path.join(path, name)} holds no {suffix} "
                "files; add some or remove the folder."
            )
        for file in files:
            with tf.io.gfile.GFile(file, "rb") as f:
                text, problem, note = _decode_file(
                    f.read(), encoding, fallback_encoding
                )
            rows.append((file, text, name, problem))
            if note and text.strip():
                fallbacks.append((file, note))
    data = _build(rows, path, classes, strict, what="files")
    return dataclasses.replace(
        data,
        fallbacks=report_fallbacks(
            fallbacks, len(rows), path, encoding, fallback_encoding
        ),
    )
