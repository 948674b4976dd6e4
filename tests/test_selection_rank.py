"""`tftransfer.rank()` and `tftransfer rank`: candidates scored on frozen
features, best first, with a recommendation."""

import json

import data_fixtures
import keras
import numpy as np
import pytest
import yaml

import tftransfer
from tftransfer.backbones import Backbone
from tftransfer.cli import main
from tftransfer.selection import Candidate


def _channel_backbone(name: str, channels: list[int], dim: int | None = None):
    """An 8x8 image backbone whose features are the mean of `channels`
    (tiled to `dim` features): channel 0 carries the label of
    `signal_images`, channels 1 and 2 are noise."""

    def build(trainable):
        inputs = keras.Input((8, 8, 3))
        picked = keras.ops.take(inputs, channels, axis=-1)
        features = keras.layers.GlobalAveragePooling2D()(picked)
        if dim:
            features = keras.ops.tile(features, [1, dim // len(channels)])
        return keras.Model(inputs, features, name=name)

    return Backbone(
        name=name,
        handle=f"test://{name}",
        modality="image",
        feature_dim=(dim or len(channels)),
        builder=build,
        image_size=(8, 8),
    )


def _source_classifier(name: str, informative: bool):
    """A 3-class "source classifier": softmax of a scaled projection of the
    signal channel (informative) or of a noise channel."""

    def build(trainable):
        inputs = keras.Input((8, 8, 3))
        channel = 0 if informative else 1
        mean = keras.layers.GlobalAveragePooling2D()(inputs[..., channel : channel + 1])
        logits = keras.ops.concatenate([-40 * mean, 0 * mean, 40 * mean - 20], axis=-1)
        return keras.Model(inputs, keras.ops.softmax(logits), name=name)

    return Backbone(
        name=name,
        handle=f"test://{name}",
        modality="image",
        feature_dim=3,
        builder=build,
        image_size=(8, 8),
        value_range=(0.0, 1.0),
    )


@pytest.fixture(scope="module")
def signal_data():
    pixels, signal = data_fixtures.signal_images(count=120, seed=1)
    labels = (signal > 0.5).astype(int)
    return tftransfer.data.from_arrays(pixels, labels, ["dim", "bright"])


def test_rank_puts_the_informative_candidate_first_with_every_score(
    signal_data, tmp_path
):
    informative = Candidate(
        _channel_backbone("signal", [0, 1]),
        classifier=_source_classifier("source_signal", True),
    )
    noise = Candidate(
        _channel_backbone("noise", [1, 2]),
        classifier=_source_classifier("source_noise", False),
    )
    ranking = tftransfer.rank(
        [noise, informative], signal_data, cache_dir=tmp_path, verbose=0
    )
    assert [row.name for row in ranking.rows] == ["signal", "noise"]
    first, second = ranking.rows
    for name in ("logme", "linear_probe", "leep"):
        assert first.scores[name] > second.scores[name], name
    assert first.scores["linear_probe"] > 0.9
    assert second.scores["linear_probe"] < 0.75
    assert ranking.best is informative
    assert ranking.num_examples == 120
    assert ranking.recommendation.recipe == "feature_extraction"
    assert "0.95" in ranking.recommendation.reason
    assert first.feature_dim == 2 and first.feature_seconds > 0


def test_rank_is_deterministic_and_reuses_the_feature_cache(signal_data, tmp_path):
    candidates = [_channel_backbone("signal", [0, 1]), _channel_backbone("noise", [1])]
    first = tftransfer.rank(candidates, signal_data, cache_dir=tmp_path, verbose=0)
    cached = list(tmp_path.rglob("manifest.json"))
    again = tftransfer.rank(candidates, signal_data, cache_dir=tmp_path, verbose=0)
    assert list(tmp_path.rglob("manifest.json")) == cached
    assert [row.scores for row in again.rows] == [row.scores for row in first.rows]


def test_rank_scores_a_stratified_sample_of_the_requested_size(signal_data, tmp_path):
    ranking = tftransfer.rank(
        [_channel_backbone("signal", [0, 1])],
        signal_data,
        examples=40,
        cache_dir=tmp_path,
        verbose=0,
    )
    assert ranking.num_examples == 40
    sample = tftransfer.data.sample(signal_data, 40, seed=0)
    labels = np.array([int(y) for _, y in sample.dataset.as_numpy_iterator()])
    # The classes keep their shares of the data (within one example).
    everything = np.array([int(y) for _, y in signal_data.dataset.as_numpy_iterator()])
    assert abs(labels.mean() - everything.mean()) <= 1 / 40 + 1e-9


def test_rank_recommends_fine_tuning_when_frozen_features_fall_short(
    signal_data, tmp_path
):
    ranking = tftransfer.rank(
        [_channel_backbone("noise", [1, 2])], signal_data, cache_dir=tmp_path, verbose=0
    )
    assert ranking.rows[0].scores["leep"] is None  # no classifier
    assert ranking.recommendation.recipe == "fine_tuning"


def test_rank_scores_regression_targets(tmp_path):
    pixels, signal = data_fixtures.signal_images(count=80, seed=2)
    data = tftransfer.data.from_arrays(pixels, signal, task="regression")
    ranking = tftransfer.rank(
        [_channel_backbone("noise", [1, 2]), _channel_backbone("signal", [0])],
        data,
        cache_dir=tmp_path,
        verbose=0,
    )
    assert ranking.rows[0].name == "signal"
    assert ranking.rows[0].scores["leep"] is None  # classification only
    assert ranking.rows[0].scores["linear_probe"] > 0.8  # R^2


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"scores": ("logme",), "by": "leep"}, "computed scores"),
        ({"scores": ("logme", "magic")}, "magic"),
        ({"candidates": []}, "at least one candidate"),
        ({"candidates": ["test://a", "test://a"]}, "distinct"),
    ],
)
def test_rank_refuses_bad_arguments_before_computing(signal_data, arguments, message):
    arguments = {"candidates": [_channel_backbone("signal", [0])], **arguments}
    with pytest.raises(tftransfer.ConfigError, match=message):
        tftransfer.rank(data=signal_data, verbose=0, **arguments)


def test_learned_pooling_is_not_a_candidate():
    with pytest.raises(tftransfer.ConfigError, match="learned with the head"):
        Candidate("all-minilm-l6-v2", features="sequence_output", pooling="attention")


def test_ranking_saves_json_and_chart(signal_data, tmp_path):
    ranking = tftransfer.rank(
        [_channel_backbone("signal", [0, 1]), _channel_backbone("noise", [1, 2])],
        signal_data,
        scores=("logme", "linear_probe"),
        cache_dir=tmp_path / "cache",
        verbose=0,
    )
    path = ranking.save(tmp_path / "run")
    saved = json.loads(path.read_text())
    assert [row["name"] for row in saved["rows"]] == ["signal", "noise"]
    assert saved["recommendation"]["candidate"]["name"] == "signal"
    assert (tmp_path / "run" / "rank.png").read_bytes()[:4] == b"\x89PNG"
    lines = ranking.table().splitlines()
    assert lines[0].split()[:4] == ["#", "candidate", "logme", "linear_probe"]
    assert lines[1].split()[:2] == ["1", "signal"]


def test_cli_rank_writes_the_table_and_best_trains_the_top_candidate(
    image_model_path, tmp_path, capsys
):
    folder = data_fixtures.image_folder(
        tmp_path / "images", counts={"cats": 8, "dogs": 8}
    )
    recipe = {
        "name": "ranked",
        "backbone": {"handle": "best"},
        "data": {"format": "image_folder", "path": folder, "batch_size": 4},
        "recipe": {"head_epochs": 2, "learning_rate": 0.01},
        "export": {"enabled": False},
        "runs_dir": str(tmp_path / "runs"),
        "cache_dir": str(tmp_path / "cache"),
        "rank": {
            "candidates": [
                {"handle": image_model_path, "name": "hub-image"},
                {
                    "handle": image_model_path,
                    "options": {"value_range": [0, 255]},
                    "name": "hub-image-255",
                },
            ],
            "scores": ["logme", "linear_probe"],
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    # `backbone: best` refuses to run before `tftransfer rank` wrote rank.json.
    assert main(["run", str(path)]) == 2
    assert "tftransfer rank" in capsys.readouterr().err
    assert main(["rank", str(path)]) == 0
    output = capsys.readouterr().out
    assert "hub-image" in output and "backbone.handle=best" in output
    saved = json.loads((tmp_path / "runs" / "ranked" / "rank.json").read_text())
    assert {row["name"] for row in saved["rows"]} == {"hub-image", "hub-image-255"}
    assert (tmp_path / "runs" / "ranked" / "rank.png").exists()
    assert main(["run", str(path)]) == 0
    record = (tmp_path / "runs" / "ranked").iterdir()
    assert any(item.name == "report.html" for item in record)


def test_rank_refuses_an_order_its_estimator_cannot_give(signal_data, tmp_path):
    pixels, signal = data_fixtures.signal_images(count=40, seed=2)
    targets = tftransfer.data.from_arrays(pixels, signal, task="regression")
    with pytest.raises(tftransfer.ConfigError, match="does not score 'regression'"):
        tftransfer.rank(
            [_channel_backbone("signal", [0])],
            targets,
            by="h_score",
            scores=("logme", "h_score"),
            verbose=0,
        )
    # LEEP orders nothing without source classifiers.
    with pytest.raises(tftransfer.ConfigError, match="classifier"):
        tftransfer.rank(
            [_channel_backbone("signal", [0])],
            signal_data,
            by="leep",
            cache_dir=tmp_path,
            verbose=0,
        )


def test_best_refuses_backbone_settings_it_would_ignore(tmp_path, capsys):
    recipe = {
        "name": "ranked",
        "backbone": {"handle": "best", "seq_length": 64},
        "data": {"format": "csv", "path": str(tmp_path / "missing.csv")},
        "runs_dir": str(tmp_path / "runs"),
    }
    (tmp_path / "data.csv").write_text("text,label\na,x\nb,y\n")
    recipe["data"]["path"] = str(tmp_path / "data.csv")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path)]) == 2
    assert "backbone.seq_length would be ignored" in capsys.readouterr().err
