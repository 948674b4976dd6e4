"""The versioned, atomic layout: numbering, refusals, faults, a killed export."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tftransfer.errors import ExportError
from tftransfer.export import writer

REPO = Path(__file__).resolve().parents[1]


def write_version(base, version=None, overwrite=False, content="x"):
    version = writer.resolve_version(base, version, overwrite)
    with writer.atomic_version_dir(base, version, overwrite) as tmp:
        (tmp / "saved_model.pb").write_text(content)
    return version


def test_versions_count_up_from_one_and_ignore_other_entries(tmp_path):
    base = tmp_path / "model"
    assert writer.versions(base) == []
    assert [write_version(base) for _ in range(3)] == [1, 2, 3]
    (base / "notes").mkdir()
    (base / ".tmp-9-1-abcdef12").mkdir()
    assert writer.versions(base) == [1, 2, 3]
    assert write_version(base) == 4


def test_explicit_version_is_written_and_next_follows_the_highest(tmp_path):
    base = tmp_path / "model"
    assert write_version(base, version=7) == 7
    assert write_version(base) == 8


def test_existing_version_is_refused_without_overwrite(tmp_path):
    base = tmp_path / "model"
    write_version(base, content="first")
    with pytest.raises(ExportError, match="Version 1 already exists.*overwrite=True"):
        write_version(base, version=1)
    assert (base / "1" / "saved_model.pb").read_text() == "first"


def test_overwrite_replaces_only_that_version(tmp_path):
    base = tmp_path / "model"
    write_version(base, content="one")
    write_version(base, content="two")
    write_version(base, version=1, overwrite=True, content="new")
    assert (base / "1" / "saved_model.pb").read_text() == "new"
    assert (base / "2" / "saved_model.pb").read_text() == "two"
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]


@pytest.mark.parametrize("version", [0, -1, "2", 1.5, True])
def test_version_must_be_a_positive_integer(tmp_path, version):
    with pytest.raises(ExportError, match="positive integer"):
        writer.resolve_version(tmp_path, version, False)


def test_base_path_that_is_a_file_is_refused(tmp_path):
    base = tmp_path / "model"
    base.write_text("not a folder")
    with pytest.raises(ExportError, match="is a file, not a folder"):
        write_version(base)
    with pytest.raises(ExportError, match="is a file, not a folder"):
        write_version(base / "child")


def test_error_while_writing_leaves_no_partial_folder(tmp_path):
    base = tmp_path / "model"
    write_version(base)
    with (
        pytest.raises(RuntimeError, match="boom"),
        writer.atomic_version_dir(base, 2) as tmp,
    ):
        (tmp / "saved_model.pb").write_text("half")
        raise RuntimeError("boom")
    assert sorted(p.name for p in base.iterdir()) == ["1"]


@pytest.mark.parametrize(
    "code, message",
    [
        (errno.ENOSPC, "no space left on the device"),
        (errno.EACCES, "no permission to write there"),
    ],
)
def test_os_errors_say_what_went_wrong_and_keep_earlier_versions(
    tmp_path, code, message
):
    base = tmp_path / "model"
    write_version(base, content="kept")
    with (
        pytest.raises(ExportError, match=message) as raised,
        writer.atomic_version_dir(base, 2) as tmp,
    ):
        (tmp / "saved_model.pb").write_text("half")
        raise OSError(code, os.strerror(code), str(tmp / "saved_model.pb"))
    assert "Earlier versions are unchanged" in str(raised.value)
    assert sorted(p.name for p in base.iterdir()) == ["1"]
    assert (base / "1" / "saved_model.pb").read_text() == "kept"


def test_unwritable_base_folder_is_reported(tmp_path, monkeypatch):
    base = tmp_path / "model"

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(base))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(ExportError, match="no permission to write there"):
        write_version(base)


KILLED_EXPORT = textwrap.dedent(
    """
    import sys, time
    import numpy as np, keras, tensorflow as tf
    import tftransfer

    base, marker = sys.argv[1], sys.argv[2]
    inputs = keras.Input((4, 4, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(np.zeros((2, 4, 4, 3)), np.array([0, 1]), verbose=0)
    backbone = type("B", (), {"modality": "image"})()

    def prepare(raw):
        image = tf.io.decode_png(raw, channels=3)
        return tf.image.resize(image, (4, 4)) / 255.0

    kwargs = dict(backbone=backbone, class_names=["a", "b"], prepare=prepare)
    tftransfer.export(model, base, **kwargs)
    save = tf.saved_model.save

    def save_then_hang(*args, **kw):
        save(*args, **kw)
        open(marker, "w").close()
        time.sleep(600)

    tf.saved_model.save = save_then_hang
    tftransfer.export(model, base, **kwargs)
    """
)


def test_export_killed_mid_write_leaves_only_complete_versions(tmp_path):
    base, marker = tmp_path / "model", tmp_path / "written"
    script = tmp_path / "export.py"
    script.write_text(KILLED_EXPORT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(
        [sys.executable, str(script), str(base), str(marker)],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "export never reached the write"
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert writer.versions(base) == [1]
    assert (base / "1" / "saved_model.pb").is_file()
    assert (base / "1" / "model_card.json").is_file()
    leftovers = [p.name for p in base.iterdir() if p.name != "1"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-2-")
    assert write_version(base) == 2
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]
