"""`split`: stratified, seeded, disjoint parts, and the fractions it refuses."""

import numpy as np
import pytest

from tftransfer import data
from tftransfer.errors import DataError


def _data(counts=(20, 10, 5)):
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    texts = np.array([f"example {i}" for i in range(len(labels))])
    return data.from_arrays(texts, labels, class_names=["a", "b", "c"])


def _contents(part):
    return sorted((x.decode(), int(y)) for x, y in part.dataset.as_numpy_iterator())


def test_split_is_stratified_disjoint_and_complete():
    source = _data()
    train, validation, test = data.split(source, validation=0.2, test=0.2, seed=1)
    counts = {
        name: np.bincount([y for _, y in _contents(part)], minlength=3).tolist()
        for name, part in [("train", train), ("validation", validation), ("test", test)]
    }
    assert counts == {
        "train": [12, 6, 3],
        "validation": [4, 2, 1],
        "test": [4, 2, 1],
    }
    assert (train.num_examples, validation.num_examples, test.num_examples) == (
        21,
        7,
        7,
    )
    parts = _contents(train) + _contents(validation) + _contents(test)
    assert sorted(parts) == _contents(source)  # nothing lost, nothing twice
    assert train.class_names == ["a", "b", "c"]
    assert "stratified split (validation=0.2, test=0.2, seed=1)" in test.source


def test_split_parts_know_their_cardinality():
    # Without it, anything that counts batches (a learning-rate schedule)
    # sees an unknown cardinality (-2).
    parts = data.split(_data(), validation=0.2, test=0.2, seed=1)
    for part in parts:
        assert int(part.dataset.cardinality()) == part.num_examples
        assert len(list(part.dataset)) == part.num_examples


def test_split_same_seed_same_parts_other_seed_other_parts():
    source = _data()
    first = data.split(source, validation=0.25, seed=7)
    again = data.split(source, validation=0.25, seed=7)
    other = data.split(source, validation=0.25, seed=8)
    assert first.test is None
    assert _contents(first.validation) == _contents(again.validation)
    assert _contents(first.train) == _contents(again.train)
    assert _contents(first.validation) != _contents(other.validation)


def test_split_gives_every_class_at_least_one_example_per_part():
    train, validation, _ = data.split(_data((50, 2)), validation=0.1)
    assert np.bincount([y for _, y in _contents(validation)]).tolist() == [5, 1]
    assert np.bincount([y for _, y in _contents(train)]).tolist() == [45, 1]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_fraction_outside_open_unit_interval_is_an_error(fraction):
    with pytest.raises(
        DataError, match=f"strictly between 0 and 1. Received: validation={fraction}"
    ):
        data.split(_data(), validation=fraction)
    with pytest.raises(DataError, match="Received: test="):
        data.split(_data(), validation=0.2, test=fraction)


def test_split_fractions_leaving_no_training_data_are_an_error():
    with pytest.raises(DataError, match="must leave examples for training"):
        data.split(_data(), validation=0.6, test=0.4)


def test_split_too_few_examples_per_class_is_an_error():
    with pytest.raises(
        DataError, match=r"Class 'c' of .* has 2 example\(s\), too few for 3"
    ):
        data.split(_data((10, 10, 2)), validation=0.2, test=0.2)
    with pytest.raises(
        DataError, match=r"Class 'b' .* has 1 example\(s\), too few for 2"
    ):
        data.split(_data((10, 1, 5)), validation=0.2)
