"""Several tasks on one backbone as one SavedModel: export_tasks and
verify_tasks."""

import json

import numpy as np
import pytest
import tensorflow as tf
from data_fixtures import tiny_bert_preset

from tftransfer import Backbone, ExportError, data, export
from tftransfer.recipes import FeatureExtraction, FineTuning

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "plot"]
WORDS = ["good film", "bad film", "good plot", "bad plot"] * 8
EXAMPLES = ["good film", "bad plot", "film good good", "plot"]


def _labeled(label_of):
    return data.from_arrays(WORDS, [label_of(w) for w in WORDS])


def _fit(cls, backbone, labeled, folder, **kwargs):
    recipe = cls(
        backbone,
        cache_dir=folder / "cache",
        run_dir=folder,
        strategy="default",
        head_epochs=1,
        learning_rate=1e-2,
        head_weight_decay=0.0,
        verbose=0,
        **kwargs,
    )
    if cls is FineTuning:
        # Keep the fine-tuned weights whatever the validation data says.
        recipe._keep_frozen = lambda weights, reason: None
    recipe.fit(labeled, labeled)
    return recipe


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """Four text tasks on one tiny BERT: frozen features (mean and first
    token pooling), LoRA, BitFit."""
    pytest.importorskip("keras_hub")
    root = tmp_path_factory.mktemp("tasks")
    preset = tiny_bert_preset(str(root / "bert"), VOCAB, seed=3)
    backbone = Backbone.from_keras_hub(preset, seq_length=8)
    tuning = dict(fine_tune_epochs=1, fine_tune_learning_rate=3e-2)
    return {
        "sentiment": _fit(
            FeatureExtraction,
            backbone,
            _labeled(lambda w: int(w.startswith("good"))),
            root / "sentiment",
        ),
        "subject": _fit(
            FineTuning,
            backbone,
            _labeled(lambda w: int(w.endswith("plot"))),
            root / "subject",
            method="lora",
            lora_rank=2,
            **tuning,
        ),
        "opening": _fit(
            FeatureExtraction,
            backbone,
            _labeled(lambda w: int(w.startswith("good"))),
            root / "opening",
            pooling="first",
        ),
        "both": _fit(
            FineTuning,
            backbone,
            _labeled(lambda w: int(w == "good plot")),
            root / "both",
            method="bitfit",
            **tuning,
        ),
    }


def _variable_bytes(version) -> int:
    reader = tf.train.load_checkpoint(str(version / "variables" / "variables"))
    shapes = reader.get_variable_to_shape_map()
    return sum(
        4 * int(np.prod(shape))
        for name, shape in shapes.items()
        if name.endswith(".ATTRIBUTES/VARIABLE_VALUE") and "OPTIMIZER" not in name
    )


def _prepared(recipe):
    return export.ServingArchive(recipe).prepare(tf.constant(EXAMPLES))


def test_each_task_signature_and_the_default_match_their_recipes(tasks, tmp_path):
    path = export.export_tasks(tasks, tmp_path / "news")
    assert path == tmp_path / "news" / "1"
    card = json.loads((path / "model_card.json").read_text())
    assert card["task"] == "multi_task"
    assert {name: t["method"] for name, t in card["tasks"].items()} == {
        "sentiment": "head",
        "subject": "lora",
        "opening": "head",
        "both": "bitfit",
    }
    assert card["tasks"]["sentiment"]["shares_backbone_pass"]
    assert card["tasks"]["subject"]["changed_weights"] == 4  # query and value
    assert card["tasks"]["both"]["changed_weights"] > 0
    assert sorted(card["signatures"]) == [
        "both",
        "opening",
        "sentiment",
        "serving_default",
        "subject",
    ]
    loaded = tf.saved_model.load(str(path))
    raw = tf.constant(EXAMPLES)
    combined = loaded.signatures["serving_default"](text=raw)
    for name, recipe in tasks.items():
        expected = recipe.model(_prepared(recipe)).numpy()
        own = loaded.signatures[name](text=raw)
        np.testing.assert_allclose(own["probabilities"], expected, atol=1e-5)
        np.testing.assert_allclose(
            combined[f"{name}/probabilities"], expected, atol=1e-5
        )
        assert [c.decode() for c in own["classes"].numpy()] == [
            recipe.class_names[i] for i in expected.argmax(-1)
        ]
    # A fresh TensorFlow-only process agrees.
    report = export.verify_tasks(path, EXAMPLES, tasks, print_signatures=False)
    assert report.max_abs_difference <= 1e-5
    assert "tftransfer" not in report.imported
    # tensorflow_text (for the tokenizer's ops) imports keras itself.
    assert report.imported == ["keras", "tensorflow_text"]


def test_the_backbone_is_stored_once(tasks, tmp_path):
    single = export(tasks["subject"], tmp_path / "single")
    multi = export.export_tasks(tasks, tmp_path / "multi")
    backbone_bytes = sum(
        w.numpy().nbytes for w in tasks["subject"].backbone_layer.weights
    )
    # Four tasks: one backbone, four small heads, LoRA factors and biases.
    assert _variable_bytes(multi) <= 1.1 * _variable_bytes(single)
    assert _variable_bytes(multi) < 1.5 * backbone_bytes


def test_tasks_of_different_backbones_or_bad_names_are_refused(tasks, tmp_path):
    other = Backbone.from_keras_hub(tasks["subject"].backbone.handle, seq_length=6)
    recipe = _fit(
        FeatureExtraction,
        other,
        _labeled(lambda w: int(w.startswith("good"))),
        tmp_path / "other",
    )
    with pytest.raises(ExportError, match="different backbones"):
        export.export_tasks({"a": tasks["sentiment"], "b": recipe}, tmp_path / "x")
    with pytest.raises(ExportError, match="cannot name a signature"):
        export.export_tasks({"serving_default": recipe}, tmp_path / "x")
    with pytest.raises(ExportError, match="not fitted"):
        export.export_tasks({"a": FeatureExtraction(other)}, tmp_path / "x")
    with pytest.raises(ExportError, match="verify_tasks"):
        export.verify(export.export_tasks({"a": recipe}, tmp_path / "y"), EXAMPLES)
    assert not (tmp_path / "x").exists()


def test_hub_tasks_that_changed_the_backbone_keep_their_own_weights(
    image_model_path, tmp_path
):
    backbone = Backbone.from_hub(image_model_path, image_size=(8, 8))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(48, 8, 8, 3), dtype="uint8")
    labels = pixels[:, :4].mean(axis=(1, 2, 3)) > pixels[:, 4:].mean(axis=(1, 2, 3))
    labeled = data.from_arrays(pixels, labels.astype(int), class_names=["a", "b"])
    hub_tasks = {
        "frozen": _fit(FeatureExtraction, backbone, labeled, tmp_path / "frozen"),
        "bitfit": _fit(
            FineTuning,
            backbone,
            labeled,
            tmp_path / "bitfit",
            method="bitfit",
            fine_tune_epochs=1,
            fine_tune_learning_rate=3e-2,
        ),
    }
    path = export.export_tasks(hub_tasks, tmp_path / "images")
    card = json.loads((path / "model_card.json").read_text())
    assert card["tasks"]["bitfit"]["changed_weights"] > 0
    encoded = [tf.io.encode_png(image).numpy() for image in pixels[:4]]
    report = export.verify_tasks(path, encoded, hub_tasks, print_signatures=False)
    assert report.max_abs_difference <= 1e-5
