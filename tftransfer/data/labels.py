"""Turning label values (integers or strings) into class indices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tftransfer.errors import DataError


def _as_int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def encode_labels(
    values: Sequence,
    class_names: Sequence[str] | None,
    source: str,
    where: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Maps label values to int64 class indices and returns the class names.

    When `class_names` is given and every label is one of those names, each
    label gets the index of its name (so folders named `1/`, `2/`, ... are
    names, not indices). Otherwise integer labels (or strings that all spell
    integers) keep their value; their class names default to `["0", "1",
    ..., str(max)]`. String labels are numbered in sorted order of their
    distinct values, unless `class_names` gives the order.

    Args:
        values: One label per example.
        class_names: Optional class names; label values must then be indices
            into it (integers) or members of it (strings).
        source: Named in error messages.
        where: Optional name of each example for error messages (`"data.csv
            line 4"`); by default `"<source> index <i>"`.

    Returns:
        `(labels, class_names)`: an int64 array and the list of names.

    Raises:
        DataError: if a label is negative, out of range or not in
            `class_names`; the message names the first such label and where
            it is.
    """
    named = class_names is not None and {str(v) for v in values} <= set(class_names)
    ints = [_as_int(v) for v in values]
    if not named and values and all(i is not None for i in ints):
        labels = np.asarray(ints, dtype=np.int64)
        names = (
            list(class_names)
            if class_names is not None
            else [str(i) for i in range(max(int(labels.max()), 0) + 1)]
        )
        wrong = np.flatnonzero((labels < 0) | (labels >= len(names)))
        if wrong.size:
            at = int(wrong[0])
            label = int(labels[at])
            name = where[at] if where is not None else f"{source} index {at}"
            if label < 0:
                problem = "; integer labels are class indices (0, 1, 2, ...). Fix it"
            else:
                problem = (
                    f", but there are only {len(names)} class names ({names}); "
                    f"integer labels are class indices 0 to {len(names) - 1}. "
                    "Fix it, or give one name per class index"
                )
            raise DataError(
                f"{name} has label {label}{problem} ({wrong.size} of "
                f"{len(labels)} labels are out of range)."
            )
        return labels, names
    strings = [str(v) for v in values]
    names = list(class_names) if class_names is not None else sorted(set(strings))
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(strings) - set(index))
    if unknown:
        raise DataError(
            f"{source} has labels {unknown[:10]} that are not among "
            f"class_names={names}; add them to `class_names` or fix the labels."
        )
    return np.asarray([index[s] for s in strings], dtype=np.int64), names


def default_target_names(count: int) -> list[str]:
    """The names of `count` regression targets where none are given.

    Example:

    >>> default_target_names(1), default_target_names(2)
    (['target'], ['target_0', 'target_1'])
    """
    return ["target"] if count == 1 else [f"target_{i}" for i in range(count)]


def encode_multi_labels(
    values: Sequence[Sequence],
    label_names: Sequence[str] | None,
    source: str,
    where: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Maps each example's labels to a multi-hot vector; returns the names.

    Args:
        values: One collection of labels per example (possibly empty): label
            names (strings) or label indices (integers).
        label_names: Optional label names, in vector order; by default the
            sorted distinct names (or `"0"`, `"1"`, ... for indices).
        source: Named in error messages.
        where: Optional name of each example for error messages.

    Returns:
        `(labels, label_names)`: a float32 array `[n, len(label_names)]` of
        0.0 and 1.0, and the list of names.

    Raises:
        DataError: if a label is not among `label_names` or an index is out
            of range; the message names the first such label and where it is.

    Example:

    >>> encode_multi_labels([["sport"], ["sport", "tech"], []], None, "x")
    (array([[1., 0.], [1., 1.], [0., 0.]], dtype=float32), ['sport', 'tech'])
    """
    values = [list(v) for v in values]
    flat = [label for labels in values for label in labels]
    ints = [_as_int(label) for label in flat]
    indices = bool(flat) and all(i is not None for i in ints)
    if label_names is not None:
        names = list(label_names)
    elif indices:
        names = [str(i) for i in range(max(max(ints), 0) + 1)]
    else:
        names = sorted({str(label) for label in flat})
    position = {name: i for i, name in enumerate(names)}
    encoded = np.zeros((len(values), len(names)), np.float32)
    for row, labels in enumerate(values):
        for label in labels:
            index = _as_int(label) if indices else position.get(str(label))
            if index is None or not 0 <= index < len(names):
                name = where[row] if where is not None else f"{source} index {row}"
                raise DataError(
                    f"{name} has label {label!r}, which is not among the "
                    f"label names {names[:10]}{' ...' if len(names) > 10 else ''}; "
                    "add it to `class_names` or fix the label."
                )
            encoded[row, index] = 1.0
    return encoded, names


def parse_targets(values: Sequence, count: int) -> list[float] | str:
    """Parses one example's regression targets (numbers, or strings that
    spell numbers); returns them, or what is wrong with them.

    Example:

    >>> parse_targets(["1.5", 2], 2)
    [1.5, 2.0]
    """
    values = list(values)
    if len(values) != count:
        return f"{len(values)} targets, expected {count}"
    parsed = []
    for value in values:
        if isinstance(value, bool):
            return f"target {value!r} is not a number"
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            return f"target {value!r} is not a number"
        if not np.isfinite(number):
            return f"target {value!r} is not finite"
        parsed.append(number)
    return parsed
