"""The `tftransfer` command refuses what cannot work before anything runs,
alone on stderr: bad recipes, alias bombs, names that leave their folder,
missing data, folders it cannot write; `predict` goes on past bad files."""

import errno
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
import types

import keras
import numpy as np
import pytest
import yaml

import tftransfer
from tftransfer import cli
from tftransfer.backbones.description import Backbone
from tftransfer.cli import run as run_module

TFTRANSFER = str(pathlib.Path(sys.executable).parent / "tftransfer")
DEBUG_HINT = "  (run with --debug for the traceback)"


def write_recipe(tmp_path, **sections) -> str:
    """A recipe file whose outputs all go under `tmp_path`."""
    texts = tmp_path / "texts"
    for name in ("sport", "tech"):
        (texts / name).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            (texts / name / f"{i}.txt").write_text(f"{name} news number {i}")
    settings = {
        "name": "demo",
        "backbone": {"handle": str(tmp_path / "no_such_backbone")},
        "data": {"format": "text_folder", "path": str(texts)},
        "export": {"base_path": str(tmp_path / "saved_models" / "demo")},
        "runs_dir": str(tmp_path / "runs"),
        "cache_dir": str(tmp_path / "cache"),
        **sections,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def command(*args, cwd=None, memory=None):
    """Runs the installed `tftransfer` command; returns the completed process."""

    def limit():
        if memory:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    # As a user starts it: conftest's TF_CPP_MIN_LOG_LEVEL left out.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [TFTRANSFER, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        preexec_fn=limit,
        timeout=300,
        check=False,
    )


def one_paragraph(err: str) -> str:
    """The text of `err`, asserting it is one `error:` paragraph and nothing else."""
    lines = err.splitlines()
    assert lines, "nothing on stderr"
    assert lines[0].startswith("error: "), err
    assert all(line.startswith("  ") for line in lines[1:]), err
    return " ".join(err.split())


def created(tmp_path) -> list[str]:
    """What the command created under `tmp_path`, besides the inputs."""
    inputs = {"recipe.yaml", "texts", "bomb.yaml", "a_file"}
    return sorted(p.name for p in tmp_path.iterdir() if p.name not in inputs)


def test_bad_recipe_stderr_is_exactly_one_error_paragraph(tmp_path):
    path = write_recipe(tmp_path, recipe={"head_epochs": "many"})
    result = command("run", path)
    assert result.returncode == 2
    message = f"{path}: 'recipe.head_epochs' must be an integer. Received: recipe.head_epochs='many' (a string)."
    assert result.stderr == cli._paragraph(message) + "\n"


def test_missing_data_path_exits_2_before_tensorflow_and_creates_nothing(tmp_path):
    missing = tmp_path / "no_such_folder"
    path = write_recipe(tmp_path, data={"format": "text_folder", "path": str(missing)})
    result = command("run", path)
    assert result.returncode == 2
    assert result.stdout == ""  # Not even the backbone step started.
    text = one_paragraph(result.stderr)
    assert (
        f"error: data.path='{missing}' does not exist. data.format 'text_folder' "
        "reads a folder holding one sub-folder of .txt files per class" in text
    )
    assert created(tmp_path) == []


def test_error_after_tensorflow_starts_is_alone_on_stderr(tmp_path):
    # TensorFlow 2.21 writes ~6 lines (oneDNN, CUDA stubs, absl) while it
    # starts, whatever TF_CPP_MIN_LOG_LEVEL says; the command hides them.
    result = command("run", write_recipe(tmp_path))
    assert result.returncode == 1
    assert "==> Backbone" in result.stdout  # TensorFlow had started.
    text = one_paragraph(result.stderr)
    assert text.startswith("error: No backbone matches handle=")
    assert result.stderr.endswith(DEBUG_HINT + "\n")
    assert "absl" not in result.stderr and "oneDNN" not in result.stderr


def test_debug_still_shows_tensorflow_logs_and_the_traceback(tmp_path):
    result = command("--debug", "run", write_recipe(tmp_path))
    assert result.returncode == 1
    assert "Traceback" in result.stderr


def test_alias_bomb_exits_2_in_well_under_a_second_and_little_memory(tmp_path):
    lines = [
        "name: demo",
        "backbone: {handle: h}",
        "data: {format: csv, path: a.csv}",
        "recipe:",
        "  options:",
        "    l0: &l0 [" + ", ".join(['"lol"'] * 10) + "]",
    ]
    for level in range(1, 9):
        lines.append(
            f"    l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 10) + "]"
        )
    lines.append("  head_epochs: *l8")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    # 512 MiB of address space: before the fix this needed gigabytes.
    result = command("run", str(bomb), memory=512 * 2**20)
    seconds = time.perf_counter() - start
    assert result.returncode == 2, result.stderr
    text = one_paragraph(result.stderr)
    assert text.startswith(f"error: {bomb} is refused at line 10, column 9: ")
    assert "more than 100,000 values, counting each alias (*name)" in text
    assert seconds < 5  # Python's start-up included; the refusal takes ms.


@pytest.mark.parametrize(
    "name", ["../escape", "../../tmp/escape", "/tmp/absolute", "sub/dir", ".."]
)
def test_name_that_leaves_its_folder_exits_2_and_writes_nothing(tmp_path, capsys, name):
    path = write_recipe(tmp_path)
    assert cli.main(["run", path, "--set", f"name={name}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "'name' must be one folder name: letters, digits, '_', '-' and '.'" in err
    assert f"Received: name='{name}'" in err
    assert created(tmp_path) == []
    assert not pathlib.Path("/tmp/escape").exists()


def test_bad_recipe_options_exit_2_on_check_and_before_the_data_is_read(
    tmp_path, capsys
):
    path = write_recipe(tmp_path, recipe={"options": {"epochs": 5}})
    assert cli.main(["run", path, "--check"]) == 2
    assert "Set recipe.head_epochs instead" in " ".join(capsys.readouterr().err.split())
    path = write_recipe(tmp_path, recipe={"options": {"hiden_units": [4]}})
    assert cli.main(["run", path, "--check"]) == 2
    assert "Did you mean 'recipe.options.hidden_units'?" in " ".join(
        capsys.readouterr().err.split()
    )
    path = write_recipe(
        tmp_path, recipe={"kind": "feature_extraction", "options": {"unfreeze": 0.5}}
    )
    assert cli.main(["run", path]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # No data read, no backbone loaded.
    assert "'unfreeze' is an option of kind 'fine_tuning'" in " ".join(err.split())


def test_unwritable_run_folder_exits_2_before_anything_runs(tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    path = write_recipe(tmp_path, runs_dir=str(tmp_path / "a_file" / "runs"))
    assert cli.main(["run", path]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert " ".join(err.split()) == (
        f"error: runs_dir: cannot create {tmp_path}/a_file/runs/demo: "
        f"{tmp_path}/a_file is a file, not a folder. Set runs_dir to a folder you "
        "can write to."
    )
    assert created(tmp_path) == []


def test_read_only_run_folder_exits_2(tmp_path, capsys, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(run_module.tempfile, "TemporaryFile", read_only)
    assert cli.main(["run", write_recipe(tmp_path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err == (
        f"error: runs_dir: cannot write to {tmp_path} (Read-only file system), "
        f"where {tmp_path}/runs/demo goes. Set runs_dir to a folder you can write to."
    )
    assert created(tmp_path) == []


def test_full_disk_exits_2_naming_the_free_space(tmp_path, capsys, monkeypatch):
    usage = types.SimpleNamespace(total=2**40, used=2**40 - 2**20, free=2**20)
    monkeypatch.setattr(run_module.shutil, "disk_usage", lambda path: usage)
    assert cli.main(["run", write_recipe(tmp_path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith(
        f"error: runs_dir: the disk holding {tmp_path}, where {tmp_path}/runs/demo "
        "goes, has 1.0 MiB free; at least 64 MiB are needed"
    )
    assert created(tmp_path) == []


def test_unwritable_export_folder_exits_2(tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    path = write_recipe(tmp_path, export={"base_path": str(tmp_path / "a_file" / "m")})
    assert cli.main(["run", path]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith(f"error: export.base_path: cannot create {tmp_path}/a_file/m")
    assert created(tmp_path) == []


def test_missing_package_data_exits_2(tmp_path, capsys):
    path = write_recipe(
        tmp_path, data={"format": "text_folder", "path": "package://nope_pkg/data"}
    )
    assert cli.main(["run", path]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "data.path: Data path package://nope_pkg/data names the Python package" in err
    )
    assert created(tmp_path) == []


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"format": "csv", "path": "{tmp}/texts"}, "is not a file. data.format 'csv'"),
        ({"format": "jsonl", "path": "{tmp}/x.jsonl"}, "does not exist"),
        ({"format": "tfrecord", "path": "{tmp}/*.tfrecord"}, "matches no file"),
        ({"format": "image_folder", "path": "{tmp}/recipe.yaml"}, "is not a folder"),
    ],
)
def test_each_format_checks_its_kind_of_path(tmp_path, capsys, data, problem):
    data = {**data, "path": data["path"].format(tmp=tmp_path)}
    assert cli.main(["run", write_recipe(tmp_path, data=data)]) == 2
    assert problem in " ".join(capsys.readouterr().err.split())


CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def image_export(image_model_path, tmp_path_factory):
    """An exported 8x8 image classifier (untrained head) and its base folder."""
    backbone = Backbone.from_hub(image_model_path, image_size=(8, 8))
    inputs = keras.Input((8, 8, 3))
    features = backbone.build(trainable=False)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(features))
    recipe = types.SimpleNamespace(
        model=model,
        backbone=backbone,
        class_names=CLASSES,
        metrics={"accuracy": 0.5},
        settings={"head_epochs": 1},
    )
    base = tmp_path_factory.mktemp("exports") / "pets"
    tftransfer.export(recipe, base, top_k=2)
    return base


def png(path, seed):
    import tensorflow as tf

    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(pixels).numpy())


def test_predict_goes_past_a_corrupt_image_and_names_it(image_export, tmp_path, capsys):
    folder = tmp_path / "photos"
    png(folder / "a.png", 0)
    png(folder / "nested" / "b.png", 1)
    (folder / "c.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.md").write_text("not an image")
    extra = tmp_path / "d.png"
    png(extra, 2)
    assert cli.main(["predict", str(image_export), str(folder), str(extra)]) == 1
    out, err = capsys.readouterr()
    classified = [line.split("  ")[0] for line in out.splitlines()]
    assert classified == [
        str(folder / "a.png"),
        str(folder / "nested" / "b.png"),
        str(extra),
    ]
    lines = err.splitlines()
    assert lines[0] == (
        f"error: {folder / 'c.jpg'}: the model cannot classify it: Unknown image "
        "file format. One of JPEG, JPEG XL, PNG, GIF, BMP, WebP required."
    )
    assert lines[1:] == [
        "error: 1 of 4 files could not be classified (each is named above); the "
        "others were."
    ]


def test_predict_on_an_empty_folder_names_it(image_export, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["predict", str(image_export), str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'empty'}: is a folder with no .jpg, .jpeg" in err


def test_tensorflow_start_up_logs_are_shown_when_the_import_fails(tmp_path):
    # A `tensorflow` package that writes to fd 2 and fails to import.
    fake = tmp_path / "fake" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import os\nos.write(2, b'runtime says why\\n')\nraise ImportError('broken')\n"
    )
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from tftransfer import cli; "
        "cli._start_tensorflow(debug=False)"
    )
    with tempfile.TemporaryDirectory() as cwd:
        result = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "fake")],
            capture_output=True,
            text=True,
            cwd=cwd,
            check=False,
        )
    assert result.stderr.startswith("runtime says why\n")
    assert "ImportError: broken" in result.stderr


def test_an_error_paragraph_is_capped_and_keeps_paths_whole():
    long_path = "/tmp/pytest-of-root/" + "a-b-" * 40 + "run"
    text = cli._paragraph(f"cannot write to {long_path}: " + "x " * 10_000)
    assert len(text) < 2200
    assert f"{long_path}:" in text.split()  # Not broken at its hyphens.
    assert text.endswith("(18,200 more characters; --debug shows them)")
