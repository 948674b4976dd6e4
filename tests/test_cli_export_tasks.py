"""`tftransfer export --tasks`: the models of several runs on one backbone
as one SavedModel."""

import json

import pytest
import tensorflow as tf
from test_cli import run_recipe, stderr

from tftransfer import cli


@pytest.fixture(scope="module")
def runs(bert_paths, tmp_path_factory):
    """Two finished runs on the same backbone (export off): `topics` with
    the head on cached features, `tuned` fine-tuned."""
    root = tmp_path_factory.mktemp("runs")
    for name, recipe in (
        ("topics", {"head_epochs": 2, "patience": None}),
        (
            "tuned",
            {
                "kind": "fine_tuning",
                "head_epochs": 1,
                "fine_tune_epochs": 1,
                "fine_tune_learning_rate": 1e-3,
                "options": {"method": "full"},
            },
        ),
    ):
        folder = root / name
        folder.mkdir()
        path = run_recipe(
            folder,
            bert_paths,
            name=name,
            recipe=recipe,
            export={"enabled": False},
            evaluation={"explain": False},
            runs_dir=str(root / "runs"),
        )
        assert cli.main(["run", path]) == 0
    return root


def test_export_tasks_writes_one_model_with_a_signature_per_run(runs, capsys):
    base = runs / "news"
    folders = [str(runs / "runs" / "topics"), str(runs / "runs" / "tuned")]
    code = cli.main(["export", "--tasks", *folders, "--base-path", str(base)])
    assert code == 0, stderr(capsys)
    assert "Exporting 2 tasks on one backbone" in capsys.readouterr().out
    card = json.loads((base / "1" / "model_card.json").read_text())
    assert card["task"] == "multi_task"
    assert card["tasks"]["tuned"]["method"] == "full"
    assert "accuracy" in card["tasks"]["topics"]["metrics"]
    loaded = tf.saved_model.load(str(base / "1"))
    assert set(loaded.signatures) == {"serving_default", "topics", "tuned"}
    outputs = loaded.signatures["serving_default"](text=tf.constant(["a goal"]))
    assert outputs["topics/probabilities"].shape == (1, 2)
    assert outputs["tuned/classes"].numpy()[0].decode() in {"sport", "tech"}
    # Commands that read a single-task export say what to do instead.
    assert cli.main(["predict", str(base), str(runs / "runs" / "topics")]) == 2
    assert "serves several tasks (topics, tuned)" in stderr(capsys)


def test_export_tasks_refuses_repeated_names_and_mixed_arguments(runs, capsys):
    topics = str(runs / "runs" / "topics")
    assert cli.main(["export", "--tasks", topics, topics]) == 2
    assert "given more than once" in stderr(capsys)
    assert cli.main(["export", topics, "--tasks", topics]) == 2
    assert "Give one run folder" in stderr(capsys)
    assert cli.main(["export"]) == 2
    assert cli.main(["export", topics, "--base-path", "elsewhere"]) == 2
    assert "--base-path DIR" in stderr(capsys)
    dotted = runs / "runs" / "topics.v2"
    dotted.mkdir()
    assert cli.main(["export", "--tasks", topics, str(dotted)]) == 2
    assert "'topics.v2' cannot name a task" in stderr(capsys)
