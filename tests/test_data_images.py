"""`from_image_folder`: layouts, formats, and bad folders and files."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from data_fixtures import COLORS, image_bytes, image_folder, write

from tftransfer import data
from tftransfer.errors import DataError, DataNotFoundError


def test_image_folder_reads_every_format_and_labels_by_sorted_folder(tmp_path):
    for fmt, ext in [("JPEG", "jpg"), ("PNG", "png"), ("BMP", "bmp"), ("GIF", "gif")]:
        write(tmp_path / "cats" / f"a.{ext}", image_bytes(fmt, color=COLORS["cats"]))
        write(tmp_path / "dogs" / f"a.{ext}", image_bytes(fmt, color=COLORS["dogs"]))
    # A grayscale PNG and an image in a nested folder count too.
    write(tmp_path / "dogs" / "old" / "g.png", image_bytes("PNG", mode="L"))

    result = data.from_image_folder(tmp_path)

    assert result.class_names == ["cats", "dogs"]
    assert result.num_examples == 9
    assert (result.modality, result.input_format, result.skipped) == (
        "image",
        "file_path",
        (),
    )
    labels = [int(y) for _, y in result.dataset.as_numpy_iterator()]
    assert labels == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    for path, label in result.dataset.as_numpy_iterator():
        class_folder = os.path.relpath(path.decode(), tmp_path).split(os.sep)[0]
        assert class_folder == result.class_names[label]
        image = tf.io.decode_image(tf.io.read_file(path), channels=3).numpy()
        assert image.shape[-1] == 3


def test_image_folder_split_layout_matches_tfds_image_folder(tmp_path):
    image_folder(tmp_path / "train", {"cats": 2, "dogs": 2, "fish": 2})
    image_folder(tmp_path / "test", {"cats": 1, "fish": 1})

    train = data.from_image_folder(tmp_path, split="train")
    test = data.from_image_folder(tmp_path, split="test")

    builder = tfds.folder_dataset.ImageFolder(str(tmp_path))
    assert train.class_names == builder.info.features["label"].names
    assert test.class_names == ["cats", "dogs", "fish"]  # every split's classes
    assert [int(y) for _, y in test.dataset.as_numpy_iterator()] == [0, 2]
    assert (train.num_examples, test.num_examples) == (6, 2)


def test_image_folder_split_layout_without_split_names_the_splits(tmp_path):
    image_folder(tmp_path / "train")
    image_folder(tmp_path / "test")
    with pytest.raises(DataError, match=r"holds the splits \['test', 'train'\]"):
        data.from_image_folder(tmp_path)
    with pytest.raises(DataNotFoundError, match="no split sub-folder 'validation'"):
        data.from_image_folder(tmp_path, split="validation")


def test_image_folder_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.from_image_folder(tmp_path / "nowhere")


def test_image_folder_empty_folder_error_names_it(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path} has no class sub-folders"):
        data.from_image_folder(tmp_path)


def test_image_folder_class_without_images_error_names_the_class_folder(tmp_path):
    image_folder(tmp_path)
    (tmp_path / "fish").mkdir()
    with pytest.raises(DataError, match=f"{tmp_path / 'fish'} has no usable images"):
        data.from_image_folder(tmp_path)


def test_image_folder_class_with_only_bad_files_is_an_error(tmp_path):
    image_folder(tmp_path)
    write(tmp_path / "fish" / "notes.txt", b"not an image")
    with (
        pytest.warns(data.SkippedInputWarning),
        pytest.raises(DataError, match="fish has no usable images"),
    ):
        data.from_image_folder(tmp_path)


def test_image_folder_single_class_error_names_the_folder(tmp_path):
    image_folder(tmp_path, {"cats": 2})
    with pytest.raises(DataError, match=rf"{tmp_path} has 1 class\(es\)"):
        data.from_image_folder(tmp_path)


def _add_bad_files(root):
    jpeg = image_bytes("JPEG", size=(64, 64))
    png = image_bytes("PNG", size=(64, 64))
    return [
        write(root / "cats" / "truncated.jpg", jpeg[: len(jpeg) // 2]),
        write(root / "cats" / "truncated.png", png[: len(png) - 20]),
        write(root / "dogs" / "notes.txt", b"some notes"),
        write(root / "dogs" / ".DS_Store", b"\x00\x00\x00\x01Bud1"),
        write(root / "dogs" / "empty.png", b""),
    ]


def test_image_folder_skips_corrupt_and_non_image_files_with_warnings(tmp_path):
    image_folder(tmp_path, fmt="JPEG")
    bad = _add_bad_files(tmp_path)

    with pytest.warns(data.SkippedInputWarning) as record:
        result = data.from_image_folder(tmp_path)

    messages = [str(w.message) for w in record]
    for path in bad:
        assert any(path in m for m in messages), path
    assert f"Skipped 5 of 11 files in {tmp_path}" in messages[-1]
    assert result.num_examples == 6
    assert len(result.skipped) == 5
    assert any("truncated JPEG" in s for s in result.skipped)
    assert any("not a JPEG, PNG, BMP or GIF image" in s for s in result.skipped)
    # What is left decodes: the pipeline never meets a bad file.
    for path, _ in result.dataset.as_numpy_iterator():
        tf.io.decode_image(tf.io.read_file(path))


def test_image_folder_strict_makes_a_bad_file_an_error_naming_it(tmp_path):
    image_folder(tmp_path)
    bad = write(tmp_path / "cats" / "notes.txt", b"hello")
    with pytest.raises(DataError, match=f"{bad}: not a JPEG"):
        data.from_image_folder(tmp_path, strict=True)


def test_image_folder_default_decode_check_catches_damage_inside_a_file(tmp_path):
    image_folder(tmp_path)
    png = bytearray(image_bytes("PNG", size=(64, 64)))
    png[60:80] = bytes(20)  # the end marker survives; the pixel data does not
    damaged = write(tmp_path / "cats" / "damaged.png", bytes(png))

    # Its header looks fine; the default check decodes it.
    assert data.from_image_folder(tmp_path, verify="header").num_examples == 7
    with pytest.warns(data.SkippedInputWarning) as record:
        result = data.from_image_folder(tmp_path)
    assert "damaged.png: could not be decoded" in str(record[0].message)
    assert result.num_examples == 6
    assert result.skipped[0].startswith(damaged)
    with pytest.raises(DataError, match="verify"):
        data.from_image_folder(tmp_path, verify="full")


def test_image_folder_many_bad_files_warn_twenty_then_summarise(tmp_path):
    image_folder(tmp_path)
    for i in range(25):
        write(tmp_path / "cats" / f"bad{i:02d}.txt", b"x")
    with pytest.warns(data.SkippedInputWarning) as record:
        result = data.from_image_folder(tmp_path)
    assert len(record) == 21
    assert "(5 more not warned about one by one)" in str(record[-1].message)
    assert len(result.skipped) == 25
    assert np.sum([1 for _ in result.dataset]) == 6
