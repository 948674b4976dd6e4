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
