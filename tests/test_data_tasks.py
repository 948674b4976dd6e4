"""Multi-label and regression data: readers, `from_arrays` and splits."""

import json

import numpy as np
import pytest

from tftransfer import data
from tftransfer.errors import DataError
from tftransfer.vocabulary import TASKS


def _rows(dataset):
    return [(x, y.tolist()) for x, y in dataset.as_numpy_iterator()]


def _texts(count):
    return np.array([f"text {i}" for i in range(count)])


def test_from_arrays_takes_multi_hot_rows_or_label_name_lists():
    hot = data.from_arrays(
        _texts(3), np.array([[1, 0], [1, 1], [0, 0]]), ["a", "b"], task="multi_label"
    )
    assert hot.task == "multi_label"
    assert hot.class_names == ["a", "b"]
    assert [y for _, y in _rows(hot.dataset)] == [[1, 0], [1, 1], [0, 0]]
    named = data.from_arrays(_texts(3), [["b"], ["a", "b"], []], task="multi_label")
    assert named.class_names == ["a", "b"]
    assert [y for _, y in _rows(named.dataset)] == [[0, 1], [1, 1], [0, 0]]
    with pytest.raises(DataError, match="values other than 0 and 1"):
        data.from_arrays(_texts(2), np.array([[0.5, 1], [1, 0]]), task="multi_label")
    with pytest.raises(DataError, match="'c'.*not among the label names"):
        data.from_arrays(_texts(2), [["a"], ["c"]], ["a", "b"], task="multi_label")


def test_from_arrays_takes_one_or_several_regression_targets():
    one = data.from_arrays(_texts(3), [1.5, 2, -3], task="regression")
    assert one.class_names == ["target"]
    assert [y for _, y in _rows(one.dataset)] == [[1.5], [2.0], [-3.0]]
    two = data.from_arrays(
        _texts(2), np.array([[1.0, 2.0], [3.0, 4.0]]), ["w", "h"], task="regression"
    )
    assert two.class_names == ["w", "h"]
    assert two.num_classes == 2
    with pytest.raises(DataError, match="NaN or infinite.*index 1"):
        data.from_arrays(_texts(2), [1.0, np.nan], task="regression")
    with pytest.raises(DataError, match="numeric targets"):
        data.from_arrays(_texts(2), ["a", "b"], task="regression")
    with pytest.raises(DataError, match="one of"):
        data.from_arrays(_texts(2), [0, 1], task="ranking")
    assert "regression" in TASKS


def test_csv_multi_label_cells_are_split_on_the_separator(tmp_path):
    path = tmp_path / "tags.csv"
    path.write_text("text,tags\nfirst,sport;tech\nsecond,\nthird, tech \n")
    tags = data.from_csv(
        path, label_column="tags", task="multi_label", label_separator=";"
    )
    assert tags.class_names == ["sport", "tech"]
    assert _rows(tags.dataset) == [
        (b"first", [1.0, 1.0]),
        (b"second", [0.0, 0.0]),  # an empty cell: no label
        (b"third", [0.0, 1.0]),
    ]


def test_jsonl_multi_label_lists_and_regression_targets(tmp_path):
    path = tmp_path / "posts.jsonl"
    lines = [
        {"text": "a", "label": ["x", "y"], "price": 1.5, "size": "2"},
        {"text": "b", "label": [], "price": 3, "size": 4},
        {"text": "c", "label": "x", "price": "cheap", "size": 1},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    tags = data.from_jsonl(path, task="multi_label")
    assert tags.class_names == ["x", "y"]
    assert [y for _, y in _rows(tags.dataset)] == [[1, 1], [0, 0], [1, 0]]
    with pytest.warns(UserWarning) as caught:
        values = data.from_jsonl(
            path, label_column=["price", "size"], task="regression"
        )
    assert [str(w.message).split(";")[0] for w in caught] == [
        f"Skipped {path} line 3: target 'cheap' is not a number",
        f"Skipped 1 of 3 rows in {path}",
    ]
    assert values.class_names == ["price", "size"]
    assert [y for _, y in _rows(values.dataset)] == [[1.5, 2.0], [3.0, 4.0]]
    assert values.skipped == (f"{path} line 3: target 'cheap' is not a number",)
    with pytest.raises(DataError, match="one label_column"):
        data.from_jsonl(path, label_column=["price", "size"])


def test_csv_regression_reads_numbers_and_names_targets_after_columns(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text("text,price\nsmall flat,100.5\nbig house,2e3\nno price,\n")
    with pytest.warns(UserWarning) as caught:
        prices = data.from_csv(path, label_column="price", task="regression")
    assert "missing target" in str(caught[0].message)
    assert str(caught[-1].message).startswith(f"Skipped 1 of 3 rows in {path}")
    assert prices.class_names == ["price"]
    assert [y for _, y in _rows(prices.dataset)] == [[100.5], [2000.0]]
    with pytest.raises(DataError, match="missing target"):
        data.from_csv(path, label_column="price", task="regression", strict=True)


def test_regression_split_is_random_and_never_leaves_a_part_empty():
    targets = data.from_arrays(_texts(20), np.arange(20.0), task="regression")
    parts = data.split(targets, validation=0.2, test=0.1, seed=3)
    assert [p.num_examples for p in parts] == [14, 4, 2]
    assert "random split" in parts.train.source
    seen = sorted(y[0] for p in parts for _, y in _rows(p.dataset))
    assert seen == list(range(20))
    with pytest.raises(DataError, match="too few for 3 parts"):
        data.split(
            data.from_arrays(_texts(2), [1.0, 2.0], task="regression"),
            validation=0.2,
            test=0.2,
        )


def test_multi_label_split_stratifies_by_the_rarest_label():
    labels = [["common"]] * 30 + [["common", "rare"]] * 10 + [[]] * 10
    tags = data.from_arrays(_texts(50), labels, task="multi_label")
    parts = data.split(tags, validation=0.2, seed=0)
    rare = [sum(y[1] for _, y in _rows(p.dataset)) for p in parts[:2]]
    assert rare == [8, 2]  # the rare label in both parts, in proportion
    assert [p.num_examples for p in parts[:2]] == [40, 10]
    # A label with too few examples to divide is pooled, not an error.
    few = data.from_arrays(_texts(11), [["a"]] * 10 + [["b"]], task="multi_label")
    train, validation, _ = data.split(few, validation=0.2)
    assert train.num_examples + validation.num_examples == 11
