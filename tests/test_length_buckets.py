"""Length bucketing: batches cut at their longest member, order restored."""

import numpy as np
import pytest
import tensorflow as tf

from tftransfer import data
from tftransfer.backbones import Backbone
from tftransfer.data import length_buckets
from tftransfer.recipes import FeatureExtraction

SEQ_LENGTH = 32


def _prepared_batches(lengths, batch_size):
    """Batches of token dicts padded to SEQ_LENGTH, `lengths` tokens each;
    word ids count positions, labels number the examples."""
    ids = np.zeros((len(lengths), SEQ_LENGTH), np.int32)
    for row, length in enumerate(lengths):
        ids[row, :length] = np.arange(1, length + 1)
    inputs = {
        "input_word_ids": ids,
        "input_mask": (ids > 0).astype(np.int32),
        "input_type_ids": np.zeros_like(ids),
    }
    labels = np.arange(len(lengths), dtype=np.int64)
    return tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(batch_size)


def test_batches_hold_similar_lengths_cut_at_their_longest_member():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, SEQ_LENGTH + 1, size=90)
    batches = _prepared_batches(lengths, batch_size=8)
    chunks = length_buckets.sorted_by_length(batches, 8, window_batches=4)
    assert int(chunks.cardinality()) == int(batches.cardinality()) == 12
    seen = []
    for inputs, (labels, positions) in chunks.as_numpy_iterator():
        np.testing.assert_array_equal(labels, positions)
        chunk_lengths = lengths[positions]
        cut = inputs["input_mask"].shape[1]
        assert cut == min(SEQ_LENGTH, -(-chunk_lengths.max() // 8) * 8)
        assert inputs["input_mask"].sum(axis=1).tolist() == chunk_lengths.tolist()
        assert list(chunk_lengths) == sorted(chunk_lengths, reverse=True)
        seen.extend(positions.tolist())
    assert sorted(seen) == list(range(90))
    # Sorted within windows of 4 batches (32 examples), never across them.
    assert [set(seen[i : i + 32]) for i in range(0, 90, 32)] == [
        set(range(i, min(i + 32, 90))) for i in range(0, 90, 32)
    ]


def test_in_original_order_restores_the_order_of_every_window():
    lengths = np.random.default_rng(1).integers(1, SEQ_LENGTH + 1, size=45)
    chunks = length_buckets.sorted_by_length(
        _prepared_batches(lengths, 4), 4, window_batches=3
    )
    passed = (
        ({"length": inputs["input_mask"].sum(axis=1)}, (labels, positions))
        for inputs, (labels, positions) in chunks.as_numpy_iterator()
    )
    windows = list(length_buckets.in_original_order(passed, 12))
    assert [len(labels) for _, labels in windows] == [12, 12, 12, 9]
    labels = np.concatenate([labels for _, labels in windows])
    features = np.concatenate([f["length"] for f, _ in windows])
    np.testing.assert_array_equal(labels, np.arange(45))
    np.testing.assert_array_equal(features, lengths)


def test_applies_to_token_batches_only():
    assert length_buckets.applies_to(_prepared_batches([3, 4], 2).element_spec)
    images = tf.data.Dataset.from_tensor_slices((np.zeros((2, 4, 4, 3)), [0, 1]))
    assert not length_buckets.applies_to(images.batch(2).element_spec)


@pytest.mark.parametrize(
    "features, pooling", [(None, None), ("sequence_output", "mean")]
)
def test_feature_pass_by_length_gives_the_padded_features_in_order(
    bert_paths, tmp_path, monkeypatch, features, pooling
):
    cuts = []
    sort = length_buckets.sorted_by_length

    def counted(batches, batch_size, *args):
        chunks = sort(batches, batch_size, *args)
        cuts.extend(x["input_mask"].shape[1] for x, _ in chunks)
        return chunks

    monkeypatch.setattr(length_buckets, "sorted_by_length", counted)
    words = ["the", "a", "an", "and", "of", "to", "in", "is"]
    rng = np.random.default_rng(2)
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 30))) for _ in range(75)]
    labeled = data.from_arrays(texts, [i % 3 for i in range(75)])
    backbone = Backbone.from_hub_text(*bert_paths, seq_length=SEQ_LENGTH)
    recipe = FeatureExtraction(
        backbone,
        features=features,
        pooling=pooling,
        batch_size=8,
        cache_dir=tmp_path / "cache",
        run_dir=tmp_path / "run",
        verbose=0,
    )
    cached, labels = recipe.cached_features(labeled, "train").arrays()
    # The same pass over the batches padded to seq_length, in their order.
    padded = recipe._batches(labeled)
    assert padded.element_spec[0]["input_mask"].shape[1] == SEQ_LENGTH
    expected = np.concatenate(
        [recipe._pass_function("float32")(x).numpy() for x, _ in padded]
    )
    np.testing.assert_array_equal(labels, [i % 3 for i in range(75)])
    np.testing.assert_allclose(cached, expected, atol=1e-5)
    # The pass ran on batches cut shorter than seq_length.
    assert len(cuts) == 10 and min(cuts) < SEQ_LENGTH
