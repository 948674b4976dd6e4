"""`split`: stratified, seeded train / validation / test splits."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tftransfer.data.labeled_data import LabeledData
from tftransfer.errors import DataError


class Splits(NamedTuple):
    """The parts `split()` returns; `test` is `None` when not asked for."""

    train: LabeledData
    validation: LabeledData
    test: LabeledData | None


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise DataError(
            f"Expected `{name}` to be a fraction strictly between 0 and 1. "
            f"Received: {name}={value!r}."
        )


def _labels(data: LabeledData) -> np.ndarray:
    batches = list(data.dataset.map(lambda x, y: y).batch(8192).as_numpy_iterator())
    return np.concatenate(batches) if batches else np.zeros([0], np.int64)


def _strata(data: LabeledData, labels: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """`(name, example indices)` of the groups split in equal proportions.

    Classification: one group per class. Multi-label: each example goes
    with its rarest label (the label with the fewest examples among its
    own), examples without a label form one more group. Regression: one
    group of all examples (a plain random split).
    """
    if data.task == "regression":
        return [("examples", np.arange(len(labels)))]
    if data.task == "multi_label":
        hot = labels.astype(bool)
        counts = hot.sum(axis=0)
        rarity = np.where(hot, counts, np.iinfo(np.int64).max)
        rarest = np.where(hot.any(axis=1), rarity.argmin(axis=1), -1)
        names = [*data.class_names, "(no label)"]
        return [
            (names[label], np.flatnonzero(rarest == label))
            for label in [*range(len(data.class_names)), -1]
        ]
    return [
        (name, np.flatnonzero(labels == label))
        for label, name in enumerate(data.class_names)
    ]


def _subset(data: LabeledData, mask: np.ndarray, name: str, detail: str):
    keep = tf.constant(mask)
    # `filter` makes the cardinality unknown; the part's size is known.
    dataset = (
        data.dataset.enumerate()
        .filter(lambda i, example: tf.gather(keep, i))
        .map(lambda i, example: example)
        .apply(tf.data.experimental.assert_cardinality(int(mask.sum())))
    )
    return dataclasses.replace(
        data,
        dataset=dataset,
        num_examples=int(mask.sum()),
        source=f"{data.source}, {name} part of a {detail}",
    )


def _assign(assignment: np.ndarray, members: np.ndarray, counts: list[int]):
    """Gives the first `counts[0]` of `members` part 1, the next part 2..."""
    start = 0
    for part, count in enumerate(counts, start=1):
        assignment[members[start : start + count]] = part
        start += count


def split(
    data: LabeledData,
    *,
    validation: float = 0.2,
    test: float | None = None,
    seed: int = 0,
) -> Splits:
    """Divides one split into train / validation (/ test) parts, by class.

    Each class is divided in the same proportions (stratified), and every
    class has at least one example in every part. Multi-label data is
    stratified by each example's rarest label (labels too rare to be
    divided, and examples without a label, are pooled and divided at
    random); regression data is divided at random. Which examples go where
    depends only on `seed` and the order of `data`, so the same seed gives
    the same parts. To use a source's own splits instead, read them
    separately (`from_tfds(name, split="test")`, `from_image_folder(path,
    split="validation")`).

    Args:
        data: What a reader returned.
        validation: Fraction of each class for validation, in (0, 1).
        test: Fraction of each class for test, in (0, 1), or `None` for no
            test part.
        seed: Seed of the shuffle that picks the examples of each part.

    Returns:
        `Splits(train, validation, test)`.

    Raises:
        DataError: if a fraction is outside (0, 1), the fractions add up to
            1 or more, or a class (for other tasks, the data) has too few
            examples for every part to get one.

    Example:

    >>> data = tftransfer.data.from_image_folder("flowers/")
    >>> train, validation, _ = tftransfer.data.split(data, validation=0.2)
    """
    _check_fraction("validation", validation)
    fractions = [validation]
    if test is not None:
        _check_fraction("test", test)
        fractions.append(test)
    if sum(fractions) >= 1.0:
        raise DataError(
            f"`validation` + `test` must leave examples for training. "
            f"Received: validation={validation}, test={test}."
        )
    labels = _labels(data)
    parts = len(fractions) + 1
    assignment = np.zeros(len(labels), np.int64)
    rng = np.random.default_rng(seed)
    classes = data.task == "classification"
    # Multi-label groups too small to be divided go into one pool, divided
    # in the same proportions (a class must reach every part).
    pooled = []
    for name, indices in _strata(data, labels):
        members = rng.permutation(indices)
        counts = [max(1, round(len(members) * f)) for f in fractions]
        if len(members) and len(members) - sum(counts) < 1:
            if not classes:
                pooled.extend(members)
                continue
            raise DataError(
                f"Class {name!r} of {data.source} has {len(members)} "
                f"example(s), too few for {parts} stratified parts (train, "
                f"validation{', test' if test else ''}) to each get at least "
                f"one. Add examples, lower the fractions, or drop the class."
            )
        _assign(assignment, members, counts)
    if pooled:
        members = rng.permutation(np.asarray(pooled))
        _assign(assignment, members, [round(len(members) * f) for f in fractions])
    sizes = np.bincount(assignment, minlength=parts)
    if not classes and not sizes.all():
        raise DataError(
            f"{data.source} has {len(labels)} examples, too few for {parts} "
            f"parts (train, validation{', test' if test else ''}) to each get "
            "at least one. Add examples or lower the fractions."
        )
    kind = {"regression": "random", "multi_label": "rarest-label stratified"}
    detail = (
        f"{kind.get(data.task, 'stratified')} split (validation={validation}"
        f"{f', test={test}' if test else ''}, seed={seed})"
    )
    return Splits(
        train=_subset(data, assignment == 0, "train", detail),
        validation=_subset(data, assignment == 1, "validation", detail),
        test=_subset(data, assignment == 2, "test", detail) if test else None,
    )


def sample(data: LabeledData, size: int, *, seed: int = 0) -> LabeledData:
    """A stratified random subset of about `size` examples of `data`.

    Each class (multi-label: each rarest-label group; regression: all
    examples) keeps its share of `data`, and at least `min(2, its count)`
    examples, so every class stays represented: with more than `size / 2`
    classes the sample holds more than `size`. Data of `size` examples or
    fewer is returned unchanged. Which examples are kept depends only on
    `seed` and the order of `data`.

    Args:
        data: What a reader returned.
        size: The number of examples to keep (at least 1).
        seed: Seed of the shuffle that picks them.

    Returns:
        A `LabeledData` with the kept examples, in their order in `data`.

    Raises:
        DataError: if `size` is not a positive integer.

    Example:

    >>> few = tftransfer.data.sample(train, 500, seed=0)
    >>> few.num_examples
    500
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise DataError(
            f"Expected `size` to be a positive number of examples. Received: "
            f"size={size!r}."
        )
    labels = _labels(data)
    if len(labels) <= size:
        return data
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(labels), bool)
    for _, indices in _strata(data, labels):
        share = round(size * len(indices) / len(labels))
        count = min(len(indices), max(share, 2))
        keep[rng.permutation(indices)[:count]] = True
    return _subset(data, keep, "sample", f"stratified sample (seed={seed})")
