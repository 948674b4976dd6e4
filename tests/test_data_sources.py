"""`from_tfds` (offline, mocked), `from_tfrecord` and `from_arrays`."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from data_fixtures import image_bytes

from tftransfer import data
from tftransfer.data import tfds as tfds_reader
from tftransfer.errors import DataError, DataNotFoundError


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Downloads are impossible here: the network probe says so."""
    monkeypatch.setattr(tfds_reader, "_network_reachable", lambda timeout=3.0: False)


def test_tfds_image_dataset_keeps_images_encoded_with_label_names():
    with tfds.testing.mock_data(num_examples=6):
        result = data.from_tfds("mnist", split="train[:80%]", download=False)
        examples = list(result.dataset.as_numpy_iterator())
    assert result.class_names == [str(i) for i in range(10)]
    assert (result.modality, result.input_format) == ("image", "encoded_image")
    assert "mnist" in result.source and "train[:80%]" in result.source
    assert len(examples) == 6
    image, label = examples[0]
    assert image[:4] == b"\x89PNG" and 0 <= label < 10
    assert tf.io.decode_image(image, channels=3).shape == (28, 28, 3)


def test_tfds_text_dataset_gives_raw_strings():
    with tfds.testing.mock_data(num_examples=3):
        result = data.from_tfds("imdb_reviews", split="test", download=False)
        examples = list(result.dataset.as_numpy_iterator())
    assert result.class_names == ["neg", "pos"]
    assert (result.modality, result.input_format) == ("text", "text")
    assert all(isinstance(x, bytes) and y in (0, 1) for x, y in examples)


def test_tfds_unknown_name_suggests_close_names():
    with pytest.raises(
        DataError, match=r"Unknown TFDS dataset 'mnistt'. Did you mean \[.*'mnist'"
    ):
        data.from_tfds("mnistt")


def test_tfds_not_prepared_says_where_the_files_go(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        data.from_tfds("mnist", data_dir=str(tmp_path), download=False)
    message = str(error.value)
    assert f"not prepared in {tmp_path}/mnist/" in message
    assert "tfds build mnist" in message and "try_gcs=True" in message


def test_tfds_not_prepared_and_offline_fails_at_once(tmp_path):
    with pytest.raises(FileNotFoundError, match="this machine cannot download it"):
        data.from_tfds("mnist", data_dir=str(tmp_path))


def test_tfds_try_gcs_is_passed_to_tfds(monkeypatch):
    calls = []
    original = tfds.builder

    def builder(name, **kwargs):
        calls.append(kwargs)
        return original(name, **{**kwargs, "try_gcs": False})  # stay offline

    monkeypatch.setattr(tfds, "builder", builder)
    with tfds.testing.mock_data(num_examples=2):
        result = data.from_tfds("mnist", try_gcs=True, download=False)
    assert calls == [{"data_dir": None, "try_gcs": True}]
    assert result.num_examples is None  # mocked TFDS does not know split sizes


def test_tfds_wrong_keys_are_named():
    with pytest.raises(
        DataError, match=r"no feature 'img'; its features are \['image', 'label'\]"
    ):
        data.from_tfds("mnist", input_key="img", download=False)
    with pytest.raises(DataError, match="is a Image, not a ClassLabel"):
        data.from_tfds("mnist", label_key="image", download=False)


def _write_records(path, examples):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for image, label in examples:
            value = tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[label.encode()])
                if isinstance(label, str)
                else None,
                int64_list=None
                if isinstance(label, str)
                else tf.train.Int64List(value=[label]),
            )
            features = {
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
                "label": value,
            }
            example = tf.train.Example(features=tf.train.Features(feature=features))
            writer.write(example.SerializeToString())


def test_tfrecord_reads_integer_labels_and_counts(tmp_path):
    png = image_bytes("PNG")
    _write_records(tmp_path / "a-0.tfrecord", [(png, 0), (png, 2)])
    _write_records(tmp_path / "a-1.tfrecord", [(png, 1)])
    result = data.from_tfrecord(str(tmp_path / "a-*.tfrecord"))
    assert result.class_names == ["0", "1", "2"]
    assert result.num_examples == 3
    assert result.input_format == "encoded_image"
    assert [int(y) for _, y in result.dataset.as_numpy_iterator()] == [0, 2, 1]


def test_tfrecord_string_labels_use_sorted_or_given_class_names(tmp_path):
    png = image_bytes("PNG")
    _write_records(tmp_path / "s.tfrecord", [(png, "dog"), (png, "cat"), (png, "dog")])
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.string),
    }
    result = data.from_tfrecord(str(tmp_path / "s.tfrecord"), spec)
    assert result.class_names == ["cat", "dog"]
    assert [int(y) for _, y in result.dataset.as_numpy_iterator()] == [1, 0, 1]
    given = data.from_tfrecord(
        str(tmp_path / "s.tfrecord"), spec, class_names=["dog", "cat"]
    )
    assert [int(y) for _, y in given.dataset.as_numpy_iterator()] == [0, 1, 0]


def test_tfrecord_errors_name_the_pattern_and_spec(tmp_path):
    with pytest.raises(DataNotFoundError, match="No TFRecord file matches"):
        data.from_tfrecord(str(tmp_path / "*.tfrecord"))
    _write_records(tmp_path / "s.tfrecord", [(b"x", "dog"), (b"y", "cat")])
    with pytest.raises(DataError, match="do not parse with the feature spec"):
        data.from_tfrecord(str(tmp_path / "s.tfrecord"))  # labels are strings
    with pytest.raises(DataError, match=r"spec has no 'label'; it has \['image'\]"):
        data.from_tfrecord(
            str(tmp_path / "s.tfrecord"),
            {"image": tf.io.FixedLenFeature([], tf.string)},
        )


def test_arrays_images_rescale_to_0_255_and_keep_integer_labels():
    images = np.full((4, 5, 6), 0.5, np.float32)  # grayscale, values in [0, 1]
    result = data.from_arrays(images, [0, 1, 1, 3], value_range=(0, 1))
    assert result.class_names == ["0", "1", "2", "3"]
    assert (result.modality, result.input_format, result.num_examples) == (
        "image",
        "pixels",
        4,
    )
    x, y = next(result.dataset.as_numpy_iterator())
    assert x.shape == (5, 6, 1) and np.allclose(x, 127.5) and y == 0


def test_arrays_texts_with_string_labels():
    result = data.from_arrays(np.array(["a", "b", "c"]), ["pos", "neg", "pos"])
    assert result.class_names == ["neg", "pos"]
    assert [(x.decode(), int(y)) for x, y in result.dataset.as_numpy_iterator()] == [
        ("a", 1),
        ("b", 0),
        ("c", 1),
    ]


def test_arrays_bad_inputs_are_errors():
    with pytest.raises(DataError, match="3 inputs and 2 labels"):
        data.from_arrays(np.zeros((3, 4, 4, 3)), [0, 1])
    with pytest.raises(DataError, match="with 1, 3 or 4 channels"):
        data.from_arrays(np.zeros((2, 4, 4, 2)), [0, 1])
    with pytest.raises(DataError, match=r"empty at indices \[1\]"):
        data.from_arrays(["a", " "], [0, 1])
    with pytest.raises(DataError, match=r"index 1 has label -1; integer labels"):
        data.from_arrays(["a", "b"], [0, -1])
