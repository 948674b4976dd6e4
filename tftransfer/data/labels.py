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
    values: Sequence, class_names: Sequence[str] | None, source: str
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

    Returns:
        `(labels, class_names)`: an int64 array and the list of names.

    Raises:
        DataError: if a label is negative, out of range or not in
            `class_names`.
    """
    named = class_names is not None and {str(v) for v in values} <= set(class_names)
    ints = [_as_int(v) for v in values]
    if not named and values and all(i is not None for i in ints):
        labels = np.asarray(ints, dtype=np.int64)
        if labels.min() < 0:
            raise DataError(
                f"{source} has a negative label ({labels.min()}); integer "
                "labels must be class indices 0, 1, 2, ..."
            )
        names = (
            list(class_names)
            if class_names is not None
            else [str(i) for i in range(int(labels.max()) + 1)]
        )
        if labels.max() >= len(names):
            raise DataError(
                f"{source} has label {labels.max()} but only {len(names)} class "
                f"names ({names}); give one name per class index."
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
