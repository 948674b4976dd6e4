"""The `tftransfer` command: exit codes, error paragraphs, subcommands."""

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import yaml

import tftransfer
from tftransfer import cli
from tftransfer.cli import sources
from tftransfer.config import DataConfig
from tftransfer.errors import ConfigError, DataNotFoundError
from tftransfer.recipes import FeatureExtraction, training_loop

GOOD = """
name: demo
backbone: {handle: all-minilm-l6-v2}
data: {format: csv, path: reviews.csv}
"""


def stderr(capsys):
    """What the command wrote to stderr, with line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


def recipe(tmp_path, text=GOOD):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_check_validates_a_recipe_with_exit_code_0(tmp_path, capsys):
    assert cli.main(["run", recipe(tmp_path), "--check"]) == 0
    assert "valid" in capsys.readouterr().out


def test_bad_recipe_exits_2_with_one_paragraph(tmp_path, capsys):
    path = recipe(tmp_path, GOOD + "recipe: {head_epochs: many}\n")
    assert cli.main(["run", path]) == 2
    err = stderr(capsys)
    assert err.startswith("error: ")
    assert "'recipe.head_epochs' must be an integer" in err
    assert "Traceback" not in err


def test_bad_override_exits_2_and_suggests_the_key(tmp_path, capsys):
    assert cli.main(["run", recipe(tmp_path), "--set", "data.batchsize=8"]) == 2
    err = stderr(capsys)
    assert "Did you mean 'data.batch_size'?" in err


def test_missing_recipe_file_exits_2(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in stderr(capsys)


def test_bad_usage_exits_2(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "--help" in stderr(capsys)


def test_debug_reraises_with_the_traceback(tmp_path):
    with pytest.raises(ConfigError):
        cli.main(["--debug", "run", str(tmp_path / "missing.yaml")])


def test_failure_exits_1_with_a_hint_about_debug(tmp_path, capsys):
    assert cli.main(["predict", str(tmp_path), "x.txt"]) == 1
    err = stderr(capsys)
    assert "holds no exported model" in err
    assert "--debug" in err


def test_unknown_reader_option_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'data.options.text_column'"):
        sources.read(
            DataConfig(format="csv", path="a.csv", options={"text_colum": "x"})
        )


def test_package_paths_resolve_inside_installed_packages():
    folder = sources.resolve_path("package://yaml/nested")
    assert folder.endswith("yaml/nested")
    with pytest.raises(DataNotFoundError, match="pip install --no-deps nope_pkg"):
        sources.resolve_path("package://nope_pkg/data")


TEXTS = {
    "sport": [
        "the team won the match",
        "a late goal won the game",
        "the sports team plays a match today",
        "the team won with a goal",
        "a win for the team in the game",
        "the match was won by a goal",
        "sport news the team won",
        "the game and the goal",
    ],
    "tech": [
        "the computer software and the internet",
        "a phone with new software",
        "tech news on the internet",
        "the phone is a computer",
        "software for the phone and the computer",
        "the internet on a phone",
        "tech and software news today",
        "a computer on the internet",
    ],
}
SEQ_LENGTH = 16


def text_folder(root, texts=TEXTS):
    """A `text_folder` dataset: one sub-folder of .txt files per class."""
    for name, examples in texts.items():
        (root / name).mkdir(parents=True)
        for i, text in enumerate(examples):
            (root / name / f"{i}.txt").write_text(text)
    return root


@pytest.fixture(scope="module")
def exported(bert_paths, tmp_path_factory):
    """A tiny text classifier exported by `tftransfer.export`: its base folder
    and the fitted recipe."""
    root = tmp_path_factory.mktemp("cli_export")
    backbone = tftransfer.Backbone.from_hub_text(*bert_paths, seq_length=SEQ_LENGTH)
    recipe = FeatureExtraction(
        backbone,
        head_epochs=3,
        batch_size=4,
        cache_dir=root / "cache",
        run_dir=root / "run",
        strategy="default",
        verbose=0,
    )
    recipe.fit(tftransfer.data.from_text_folder(text_folder(root / "data")))
    tftransfer.export(recipe, root / "model")
    return root / "model", recipe


def test_predict_prints_top_classes_of_each_file(exported, tmp_path, capsys):
    base, recipe = exported
    article = tmp_path / "a.txt"
    article.write_text("a late goal")
    expected = recipe.model(
        recipe.backbone.text_preprocessor()(tf.constant(["a late goal"]))
    )[0].numpy()
    best = int(expected.argmax())
    assert cli.main(["predict", str(base), str(article), "--top-k", "1"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"{article}  {recipe.class_names[best]} {expected[best]:.3f}"


def test_predict_takes_a_folder_and_names_each_bad_file(exported, tmp_path, capsys):
    base, recipe = exported
    folder = tmp_path / "articles"
    (folder / "more").mkdir(parents=True)
    (folder / "a.txt").write_text("a late goal")
    (folder / "more" / "b.txt").write_text("new phone software")
    (folder / "notes.md").write_text("not a .txt file: left out")
    (folder / ".hidden.txt").write_text("hidden: left out")
    (folder / "broken.txt").symlink_to(tmp_path / "gone.txt")
    missing = tmp_path / "missing.txt"
    assert cli.main(["predict", str(base), str(folder), str(missing)]) == 1
    out, err = capsys.readouterr()
    classified = [line.split("  ")[0] for line in out.splitlines()]
    assert classified == [str(folder / "a.txt"), str(folder / "more" / "b.txt")]
    assert err.splitlines() == [
        f"error: {folder / 'broken.txt'}: does not exist",
        f"error: {missing}: does not exist",
        "error: 2 of 4 files could not be classified (each is named above); the "
        "others were.",
    ]


def test_evaluate_reports_accuracy_on_a_text_folder(exported, tmp_path, capsys):
    base, recipe = exported
    data = text_folder(tmp_path / "data")
    strings = [text for texts in TEXTS.values() for text in texts]
    labels = [i for i, texts in enumerate(TEXTS.values()) for _ in texts]
    tokens = recipe.backbone.text_preprocessor()(tf.constant(strings))
    predicted = np.asarray(recipe.model(tokens)).argmax(-1)
    accuracy = float(np.mean(predicted == np.asarray(labels)))
    assert cli.main(["evaluate", str(base), str(data)]) == 0
    assert f"accuracy: {accuracy:.4f}" in capsys.readouterr().out


def test_inspect_describes_signatures_and_parameters(exported, capsys):
    base, recipe = exported
    assert cli.main(["inspect", str(base / "1")]) == 0
    out = capsys.readouterr().out
    assert "signature 'serving_default'" in out
    assert "input  text: string [-1]" in out
    assert f"input  input_word_ids: int32 [-1, {SEQ_LENGTH}]" in out
    assert "output top_k_classes: string [-1, 2]" in out
    parameters = recipe.model.count_params()
    assert parameters > 0
    assert f"parameters: {parameters:,} (" in out


def run_recipe(tmp_path, bert_paths, **sections) -> str:
    """Writes a recipe file for a tiny text run; `sections` override parts."""
    preprocessor, encoder = bert_paths
    settings = {
        "name": "topics",
        "backbone": {
            "handle": encoder,
            "seq_length": SEQ_LENGTH,
            "options": {"preprocessor": preprocessor},
        },
        "data": {
            "format": "text_folder",
            "path": str(text_folder(tmp_path / "data")),
            "validation": 0.25,
            "test": 0.25,
            "batch_size": 4,
        },
        "recipe": {"head_epochs": 3, "patience": None},
        "distribute": {"strategy": "default"},
        "export": {"base_path": str(tmp_path / "saved_models" / "topics")},
        "runs_dir": str(tmp_path / "runs"),
        "cache_dir": str(tmp_path / "cache"),
        **sections,
    }
    return recipe(tmp_path, yaml.safe_dump(settings))


@pytest.mark.slow
def test_run_trains_reports_exports_and_reuses_its_cache(bert_paths, tmp_path, capsys):
    path = run_recipe(
        tmp_path,
        bert_paths,
        evaluation={"split": "validation"},
        export={
            "base_path": str(tmp_path / "saved_models" / "topics"),
            "tflite": True,
        },
    )
    assert cli.main(["run", path]) == 0
    assert "validation accuracy: " in capsys.readouterr().out
    folder = tmp_path / "runs" / "topics"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["split"] == "validation"
    assert metrics["num_examples"] == 4  # 25% of 8 examples in each of 2 classes
    # The "auto" head learning rate and weight decay, as chosen.
    assert set(metrics["tuned"]) == {"learning_rate", "head_weight_decay"}
    assert "<html" in (folder / "report.html").read_text()
    version = tmp_path / "saved_models" / "topics" / "1"
    assert (version / "saved_model.pb").is_file()
    card = json.loads((version / "model_card.json").read_text())
    assert card["class_names"] == ["sport", "tech"]
    assert card["tflite"]["validation_examples"] == 4  # the held-out split
    assert (version / "model.tflite").is_file()

    cache = feature_files(tmp_path / "cache")
    assert cli.main(["run", path]) == 0
    assert feature_files(tmp_path / "cache") == cache  # every split's from the cache
    assert (tmp_path / "saved_models" / "topics" / "2" / "saved_model.pb").is_file()

    assert cli.main(["export", str(folder)]) == 0
    assert feature_files(tmp_path / "cache") == cache
    card = json.loads(
        (tmp_path / "saved_models" / "topics" / "3" / "model_card.json").read_text()
    )
    assert card["metrics"]["split"] == "validation"  # evaluation.split honoured
    assert card["metrics"]["num_examples"] == 4
    assert card["tflite"]["validation_examples"] == 4


@pytest.mark.slow
def test_run_without_test_part_names_the_validation_split(bert_paths, tmp_path, capsys):
    path = run_recipe(tmp_path, bert_paths, export={"enabled": False})
    assert cli.main(["run", path, "--set", "data.test=null"]) == 0
    out = capsys.readouterr().out
    assert "validation accuracy: " in out
    assert "test accuracy" not in out
    metrics = json.loads((tmp_path / "runs" / "topics" / "metrics.json").read_text())
    assert metrics["split"] == "validation"


def test_backbones_marks_offline_ones(capsys):
    assert cli.main(["backbones"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("mobilenet-v2 "))
    assert line.rstrip().endswith("-")
    assert "all-minilm-l6-v2" in out


def test_python_dash_m_runs_the_command():
    result = subprocess.run(
        [sys.executable, "-m", "tftransfer", "run", "missing.yaml"],
        capture_output=True,
        text=True,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
        cwd=pathlib.Path(__file__).parent.parent,
        check=False,
    )
    assert result.returncode == 2
    assert "error: Recipe file missing.yaml does not exist" in result.stderr


@pytest.fixture(scope="module")
def finished_run(bert_paths, tmp_path_factory):
    """A finished run folder of a tiny text run (export off), and its data."""
    root = tmp_path_factory.mktemp("finished_run")
    path = run_recipe(
        root,
        bert_paths,
        export={"enabled": False, "base_path": str(root / "saved_models" / "topics")},
    )
    assert cli.main(["run", path]) == 0
    return root / "runs" / "topics", root / "data"


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of the finished run folder, to change; its export base folder."""
    folder = tmp_path / "topics"
    shutil.copytree(finished_run[0], folder)
    settings = yaml.safe_load((folder / "recipe.yaml").read_text())
    return folder, pathlib.Path(settings["export"]["base_path"])


def feature_files(cache: pathlib.Path) -> dict:
    """`{path: modification time}` of every file in a feature cache folder:
    a feature pass that computes features writes new files there."""
    return {str(p): p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}


@pytest.fixture
def training(monkeypatch, run_copy):
    """Counts of what ran since the test started, as a function: `train`
    (training calls) and `features` (1 if any features were computed,
    which changes the run's feature cache folder)."""
    calls = {"train": 0}
    train = training_loop.train

    def counted_train(*args, **kwargs):
        calls["train"] += 1
        return train(*args, **kwargs)

    monkeypatch.setattr(training_loop, "train", counted_train)
    settings = yaml.safe_load((run_copy[0] / "recipe.yaml").read_text())
    cache = pathlib.Path(settings["cache_dir"])
    before = feature_files(cache)
    return lambda: {**calls, "features": int(feature_files(cache) != before)}


def versions(base: pathlib.Path) -> list[str]:
    return sorted(p.name for p in base.iterdir()) if base.exists() else []


@pytest.mark.slow
def test_export_repeats_the_trained_model_without_training(run_copy, training, capsys):
    folder, base = run_copy
    before = versions(base)
    assert cli.main(["export", str(folder)]) == 0
    assert "Restoring: feature extraction" in capsys.readouterr().out
    assert training() == {"train": 0, "features": 0}
    assert len(versions(base)) == len(before) + 1


@pytest.mark.slow
def test_export_refuses_changed_data_until_retrain(
    run_copy, finished_run, training, capsys
):
    folder, base = run_copy
    data = finished_run[1]
    before = versions(base)
    added = data / "sport" / "added.txt"
    added.write_text("a new match report")
    try:
        assert cli.main(["export", str(folder)]) == 1
        err = stderr(capsys)
        assert (
            f"error: The data at data.path='{data}' changed since the run in {folder}"
            in err
        )
        assert "Nothing was exported. Restore the data, or pass --retrain" in err
        assert training() == {"train": 0, "features": 0}
        assert versions(base) == before

        assert cli.main(["export", str(folder), "--retrain"]) == 0
        assert training()["train"] > 0
        assert len(versions(base)) == len(before) + 1
        trained = training()
        assert cli.main(["export", str(folder)]) == 0  # What --retrain trained.
        assert training() == trained
    finally:
        added.unlink()


@pytest.mark.slow
def test_export_refuses_missing_or_changed_checkpoints(run_copy, training, capsys):
    folder, base = run_copy
    before = versions(base)
    state = next((folder / "checkpoints").glob("head-*/state.npz"))
    state.unlink()
    assert cli.main(["export", str(folder)]) == 1
    err = stderr(capsys)
    assert "Checkpoints of the trained model in" in err
    assert (
        f"missing or changed since its training: {state.parent.name}/state.npz" in err
    )
    assert "Pass --retrain" in err
    assert training() == {"train": 0, "features": 0}
    assert versions(base) == before


@pytest.mark.slow
def test_export_refuses_a_recipe_edited_since_training(run_copy, training, capsys):
    folder, base = run_copy
    settings = yaml.safe_load((folder / "recipe.yaml").read_text())
    settings["recipe"]["dropout"] = 0.5
    settings["evaluation"]["confidently_wrong"] = 3  # Not a training setting.
    (folder / "recipe.yaml").write_text(yaml.safe_dump(settings))
    assert cli.main(["export", str(folder)]) == 1
    err = stderr(capsys)
    assert "is not the recipe the model in" in err
    assert "trained with: recipe.dropout changed" in err
    assert training() == {"train": 0, "features": 0}


@pytest.mark.slow
def test_export_refuses_a_run_without_a_training_record(run_copy, training, capsys):
    folder, _ = run_copy
    (folder / "trained.json").unlink()
    assert cli.main(["export", str(folder)]) == 1
    assert "has no record of a finished training (trained.json)" in stderr(capsys)
    assert training() == {"train": 0, "features": 0}


@pytest.mark.slow
def test_export_stops_before_the_first_training_step_it_did_not_foresee(
    run_copy, training, capsys
):
    # A phase without its checkpoint, which the record does not list either:
    # the recipe would train; the command stops it before the first step.
    folder, base = run_copy
    before = versions(base)
    head = next((folder / "checkpoints").glob("head-*/"))
    shutil.rmtree(head)
    record = json.loads((folder / "trained.json").read_text())
    record["checkpoints"] = {
        name: digest
        for name, digest in record["checkpoints"].items()
        if not name.startswith(head.name + "/")
    }
    (folder / "trained.json").write_text(json.dumps(record))
    assert cli.main(["export", str(folder)]) == 1
    err = stderr(capsys)
    assert f"error: Exporting {folder} would retrain" in err
    assert "Nothing was trained or exported. Pass --retrain" in err
    assert training()["train"] == 1
    assert not (head / "state.npz").exists()
    assert versions(base) == before


def test_export_of_a_folder_that_is_not_a_run_folder_exits_2(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path)]) == 2
    assert f"error: {tmp_path} is not a run folder: it has no recipe.yaml" in stderr(
        capsys
    )


@pytest.mark.slow
def test_run_trains_reports_and_exports_a_multi_label_csv(bert_paths, tmp_path, capsys):
    rows = [
        ("text", "tags"),
        *((text, "sport") for text in TEXTS["sport"]),
        *((text, "tech|news") for text in TEXTS["tech"]),
    ]
    csv_path = tmp_path / "tags.csv"
    csv_path.write_text("".join(f"{text},{tags}\n" for text, tags in rows))
    path = run_recipe(
        tmp_path,
        bert_paths,
        data={
            "format": "csv",
            "path": str(csv_path),
            "options": {"label_column": "tags", "task": "multi_label"},
            "validation": 0.25,
            "test": 0.25,
            "batch_size": 4,
        },
    )
    assert cli.main(["run", path]) == 0
    out = capsys.readouterr().out
    assert "3 labels" in out and "task multi_label" in out
    assert "test micro F1: " in out
    folder = tmp_path / "runs" / "topics"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["task"] == "multi_label"
    assert metrics["label_names"] == ["news", "sport", "tech"]
    assert (folder / "per_label_f1.png").is_file()
    assert not (folder / "confusion_matrix.png").exists()
    card = json.loads(
        (tmp_path / "saved_models" / "topics" / "1" / "model_card.json").read_text()
    )
    outputs = card["signatures"]["serving_default"]["outputs"]
    assert set(outputs) == {"probabilities", "labels"}
    # `evaluate` reads the CSV as the run did (its label column and task).
    export_dir = str(tmp_path / "saved_models" / "topics")
    assert cli.main(["evaluate", export_dir, str(csv_path)]) == 0
    assert capsys.readouterr().out.startswith("micro F1: ")
