"""`from_csv` and `from_jsonl`: labels, and bad columns, rows and bytes."""

import json

import pytest

from tftransfer import data
from tftransfer.errors import DataError, DataNotFoundError


def _write(path, content):
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def _examples(result):
    return [(x.decode(), int(y)) for x, y in result.dataset.as_numpy_iterator()]


def test_csv_string_labels_are_numbered_in_sorted_order(tmp_path):
    path = _write(
        tmp_path / "r.csv",
        'id,review,sentiment\n1,"great, really",pos\n2,awful,neg\n3,"two\nlines",pos\n',
    )
    result = data.from_csv(path, text_column="review", label_column="sentiment")
    assert result.class_names == ["neg", "pos"]
    assert _examples(result) == [("great, really", 1), ("awful", 0), ("two\nlines", 1)]
    assert (result.modality, result.input_format, result.num_examples) == (
        "text",
        "text",
        3,
    )


def test_csv_integer_labels_keep_their_value(tmp_path):
    path = _write(tmp_path / "r.csv", "text,label\na,2\nb,0\nc,2\n")
    result = data.from_csv(path)
    assert result.class_names == ["0", "1", "2"]
    assert _examples(result) == [("a", 2), ("b", 0), ("c", 2)]


def test_csv_class_names_give_the_label_order(tmp_path):
    path = _write(tmp_path / "r.csv", "text,label\na,pos\nb,neg\n")
    result = data.from_csv(path, class_names=["pos", "neg"])
    assert _examples(result) == [("a", 0), ("b", 1)]
    with pytest.raises(DataError, match=r"\['neg'\] that are not among"):
        data.from_csv(path, class_names=["pos", "neutral"])


def test_csv_missing_column_error_lists_the_columns(tmp_path):
    path = _write(tmp_path / "r.csv", "review,stars\nok,1\nbad,0\n")
    with pytest.raises(
        DataError, match=r"no column 'text'; its columns are \['review', 'stars'\]"
    ):
        data.from_csv(path)
    with pytest.raises(DataError, match="no column 'label'"):
        data.from_csv(path, text_column="review")


def test_csv_bad_rows_are_skipped_with_line_numbers(tmp_path):
    path = _write(
        tmp_path / "r.csv",
        b"text,label\ngood,pos\n   ,neg\nno label,\nbad \xff\xfe bytes,pos\nfine,neg\nshort\n",
    )
    with pytest.warns(data.SkippedInputWarning) as record:
        result = data.from_csv(path)
    messages = [str(w.message) for w in record]
    assert messages[:4] == [
        f"Skipped {path} line 3: empty text",
        f"Skipped {path} line 4: missing label",
        f"Skipped {path} line 5: bytes that are not valid utf-8 (byte 0xff at "
        "column 5); re-save the file as utf-8 or pass the file's `encoding`",
        f"Skipped {path} line 7: missing label",
    ]
    assert messages[4].startswith(f"Skipped 4 of 6 rows in {path}")
    assert _examples(result) == [("good", 1), ("fine", 0)]
    assert len(result.skipped) == 4


def test_csv_strict_makes_a_bad_row_an_error(tmp_path):
    path = _write(tmp_path / "r.csv", b"text,label\ngood,1\n\xff,0\n")
    with pytest.raises(DataError, match="line 3: bytes that are not valid utf-8"):
        data.from_csv(path, strict=True)
    assert data.from_csv(path, encoding="latin-1").num_examples == 2


def test_csv_missing_file_and_no_usable_rows(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        data.from_csv(tmp_path / "nope.csv")
    path = _write(tmp_path / "r.csv", "text,label\n")
    with pytest.raises(DataError, match="no usable examples"):
        data.from_csv(path)


def test_csv_single_class_is_an_error(tmp_path):
    path = _write(tmp_path / "r.csv", "text,label\na,pos\nb,pos\n")
    with pytest.raises(DataError, match=r"has 1 class\(es\) \(\['pos'\]\)"):
        data.from_csv(path)


def test_jsonl_reads_integer_and_string_labels(tmp_path):
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": 0}]
    path = _write(tmp_path / "r.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    result = data.from_jsonl(path)
    assert result.class_names == ["0", "1"]
    assert _examples(result) == [("a", 1), ("b", 0)]

    rows = [{"body": "x", "tag": "spam"}, {"body": "y", "tag": "ham"}]
    path = _write(tmp_path / "s.jsonl", "\n".join(json.dumps(r) for r in rows))
    result = data.from_jsonl(path, text_column="body", label_column="tag")
    assert result.class_names == ["ham", "spam"]
    assert _examples(result) == [("x", 1), ("y", 0)]


def test_jsonl_bad_rows_are_skipped_with_line_numbers(tmp_path):
    lines = [
        b'{"text": "ok", "label": "a"}',
        b'{"text": "", "label": "a"}',
        b'{"text": "no label"}',
        b'{"text": "x", "label": "b"',
        b"[1, 2]",
        b'{"text": "\xff", "label": "b"}',
        b'{"text": "fine", "label": "b"}',
        b'{"text": "float", "label": 1.5}',
    ]
    path = _write(tmp_path / "r.jsonl", b"\n".join(lines))
    with pytest.warns(data.SkippedInputWarning) as record:
        result = data.from_jsonl(path)
    skipped = "\n".join(result.skipped)
    assert f"{path} line 2: empty text" in skipped
    assert f"{path} line 3: missing label" in skipped
    assert f"{path} line 4: not valid JSON" in skipped
    assert f"{path} line 5: a JSON list, not an object" in skipped
    assert f"{path} line 6: bytes that are not valid utf-8" in skipped
    assert f"{path} line 8: label 1.5 is neither an integer nor a string" in skipped
    assert "Skipped 6 of 8 rows" in str(record[-1].message)
    assert _examples(result) == [("ok", 0), ("fine", 1)]


def test_jsonl_field_in_no_object_error_lists_the_fields(tmp_path):
    path = _write(tmp_path / "r.jsonl", '{"review": "a", "label": 0}\n')
    with pytest.raises(
        DataError,
        match=r"no field 'text' in any object; the first object has \['label', 'review'\]",
    ):
        data.from_jsonl(path)


def _text_folder(root, classes):
    for name, texts in classes.items():
        (root / name).mkdir()
        for i, text in enumerate(texts):
            content = text if isinstance(text, bytes) else text.encode()
            (root / name / f"{i}.txt").write_bytes(content)
    return root


def test_text_folder_reads_one_class_per_sub_folder(tmp_path):
    root = _text_folder(tmp_path, {"sport": ["goal", "match"], "tech": ["chip"]})
    (root / ".hidden").mkdir()
    (root / "tech" / "notes.md").write_text("not read")
    result = data.from_text_folder(root)
    assert result.class_names == ["sport", "tech"]
    assert result.num_examples == 3
    assert _examples(result) == [("goal", 0), ("match", 0), ("chip", 1)]


def test_text_folder_bad_files_are_skipped_and_named(tmp_path):
    # 0x81 is valid neither in UTF-8 nor in the Windows-1252 fallback.
    root = _text_folder(tmp_path, {"a": ["fine", "  "], "b": [b"ok", b"\x81 bad"]})
    with pytest.warns(data.SkippedInputWarning) as record:
        result = data.from_text_folder(root)
    messages = [str(w.message) for w in record]
    assert messages[0] == f"Skipped {root / 'a' / '1.txt'}: empty text"
    assert messages[1] == (
        f"Skipped {root / 'b' / '1.txt'}: bytes that are neither valid utf-8 "
        "(byte 0x81 at 0) nor cp1252; re-save the file as UTF-8"
    )
    assert messages[2].startswith(f"Skipped 2 of 4 files in {root}")
    assert _examples(result) == [("fine", 0), ("ok", 1)]
    with pytest.raises(DataError, match="empty text"):
        data.from_text_folder(root, strict=True)


def test_text_folder_layout_errors_name_the_folder(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        data.from_text_folder(tmp_path / "nope")
    _text_folder(tmp_path, {"only": ["one"]})
    with pytest.raises(DataError, match="1 class folder"):
        data.from_text_folder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class holds no .txt files"):
        data.from_text_folder(tmp_path)


def test_text_folder_with_numeric_class_names_labels_by_name(tmp_path):
    root = _text_folder(tmp_path, {"1": ["poor"], "2": ["fair"], "10": ["best"]})
    result = data.from_text_folder(root)
    assert result.class_names == ["1", "10", "2"]
    assert _examples(result) == [("poor", 0), ("best", 1), ("fair", 2)]


def test_csv_numeric_string_labels_map_by_name_when_names_are_given(tmp_path):
    path = _write(tmp_path / "r.csv", "text,label\na,5\nb,4\nc,5\n")
    result = data.from_csv(path, class_names=["4", "5"])
    assert _examples(result) == [("a", 1), ("b", 0), ("c", 1)]
