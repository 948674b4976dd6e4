"""Δθ artifacts: save_delta stores only what fine-tuning changed; load_delta
rebuilds the model from the source backbone, checked by digest."""

import json

import keras
import numpy as np
import pytest
from data_fixtures import tiny_bert_preset
from hub_fixtures import ImageFeatureVector, save_as_hub_model

from tftransfer import ArgumentError, Backbone, ExportError, HandleError, data
from tftransfer.deltas import load_delta, save_delta
from tftransfer.recipes import FineTuning

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "plot"]


def _pixels(count=48, seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(count, 8, 8, 3), dtype="uint8")
    labels = pixels[:, :4].mean(axis=(1, 2, 3)) > pixels[:, 4:].mean(axis=(1, 2, 3))
    return data.from_arrays(pixels, labels.astype(int), class_names=["a", "b"])


def _fit(backbone, train, validation, tmp_path, **kwargs):
    recipe = FineTuning(
        backbone,
        cache_dir=tmp_path / "cache",
        run_dir=tmp_path / "run",
        strategy="default",
        head_epochs=1,
        fine_tune_epochs=1,
        fine_tune_learning_rate=3e-2,
        # Fixed head rates: no head search (not what these tests check).
        learning_rate=1e-2,
        head_weight_decay=0.0,
        verbose=0,
        **kwargs,
    )
    # Keep the fine-tuned weights whatever the validation data says.
    recipe._keep_frozen = lambda weights, reason: None
    recipe.fit(train, validation)
    return recipe


def _prepared(recipe, labeled):
    return next(iter(recipe._batches(labeled)))[0]


@pytest.mark.parametrize(
    "method, stored",
    [
        ("bitfit", {"beta", "gamma"}),
        ("full", {"kernel", "beta", "gamma"}),
    ],
)
def test_hub_delta_stores_changed_weights_and_reproduces_outputs(
    image_model_path, tmp_path, method, stored
):
    backbone = Backbone.from_hub(image_model_path, image_size=(8, 8))
    recipe = _fit(backbone, _pixels(), _pixels(16, seed=1), tmp_path, method=method)
    folder = save_delta(recipe, tmp_path / "deltas")
    assert folder == tmp_path / "deltas" / "1"
    metadata = json.loads((folder / "delta.json").read_text())
    assert {e["kind"] for e in metadata["entries"]} == {"difference"}
    assert {e["path"].rsplit("/", 1)[-1] for e in metadata["entries"]} == stored
    assert metadata["class_names"] == ["a", "b"]
    inputs = _prepared(recipe, _pixels(16, seed=2))
    loaded = load_delta(tmp_path / "deltas")
    np.testing.assert_allclose(
        loaded(inputs).numpy(), recipe.model(inputs).numpy(), atol=1e-5
    )


def test_delta_versions_and_refuses_a_mismatching_source(image_model_path, tmp_path):
    backbone = Backbone.from_hub(image_model_path, image_size=(8, 8))
    recipe = _fit(backbone, _pixels(), _pixels(16, seed=1), tmp_path, method="bitfit")
    save_delta(recipe, tmp_path / "deltas")
    assert save_delta(recipe, tmp_path / "deltas") == tmp_path / "deltas" / "2"
    with pytest.raises(ExportError, match="already exists"):
        save_delta(recipe, tmp_path / "deltas", version=1)
    assert sorted(p.name for p in (tmp_path / "deltas").iterdir()) == ["1", "2"]
    # Another source: the same SavedModel with one weight changed.
    module = ImageFeatureVector()
    module.kernel.assign_add(np.full(module.kernel.shape, 1e-3, "float32"))
    other = Backbone.from_hub(
        save_as_hub_model(module, str(tmp_path / "other")), image_size=(8, 8)
    )
    with pytest.raises(HandleError, match="does not hold the weights"):
        load_delta(tmp_path / "deltas" / "1", backbone=other)
    with pytest.raises(HandleError, match="No delta"):
        load_delta(tmp_path / "nothing")
    with pytest.raises(ArgumentError, match="remove model="):
        load_delta(tmp_path / "deltas" / "1", model=keras.Sequential())
    with pytest.raises(ArgumentError, match="Remove backbone="):
        save_delta(recipe, tmp_path / "deltas", backbone=backbone)


def test_lora_delta_holds_the_factors_and_is_small(tmp_path):
    pytest.importorskip("keras_hub")
    path = tiny_bert_preset(str(tmp_path / "bert"), VOCAB, seed=3)
    backbone = Backbone.from_keras_hub(path, seq_length=8)
    words = ["good film", "bad film", "good plot", "bad plot"] * 8
    labeled = data.from_arrays(words, [int(w.startswith("good")) for w in words])
    recipe = _fit(backbone, labeled, labeled, tmp_path, method="lora", lora_rank=2)
    folder = save_delta(recipe, tmp_path / "deltas")
    metadata = json.loads((folder / "delta.json").read_text())
    kinds = {e["path"].rsplit("/", 2)[-2]: e["kind"] for e in metadata["entries"]}
    assert kinds == {"query": "lora", "value": "lora"}
    assert len(metadata["entries"]) == 4
    backbone_bytes = sum(w.numpy().nbytes for w in recipe.backbone_layer.weights)
    assert (folder / "delta.npz").stat().st_size < 0.1 * backbone_bytes
    inputs = _prepared(recipe, labeled)
    loaded = load_delta(folder)
    np.testing.assert_allclose(
        loaded(inputs).numpy(), recipe.model(inputs).numpy(), atol=1e-5
    )
    assert not [w for w in loaded.weights if "lora" in w.path]


def _keras_model(backbone):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            backbone.build(trainable=True),
            keras.layers.Dense(2, activation="softmax", name="head"),
        ]
    )


def test_a_keras_model_delta_loads_into_a_fresh_copy(image_model_path, tmp_path):
    backbone = Backbone.from_hub(image_model_path, image_size=(8, 8))
    model = _keras_model(backbone)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(32, 8, 8, 3)).astype("float32")
    labels = (images[:, :4].mean(axis=(1, 2, 3)) > 0.5).astype(int)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=2, batch_size=16, verbose=0)
    with pytest.raises(ArgumentError, match="need backbone="):
        save_delta(model, tmp_path / "deltas")
    folder = save_delta(model, tmp_path / "deltas", backbone=backbone)
    metadata = json.loads((folder / "delta.json").read_text())
    assert metadata["kind"] == "model"
    assert {e["kind"] for e in metadata["entries"]} == {"difference"}
    assert [p.split("/", 1)[1] for p in metadata["model_weights"]] == [
        "head/kernel",
        "head/bias",
    ]
    assert not (folder / "head.keras").exists()
    with pytest.raises(ArgumentError, match="pass model="):
        load_delta(folder)
    loaded = load_delta(folder, model=_keras_model(backbone))
    np.testing.assert_allclose(loaded(images).numpy(), model(images).numpy(), atol=1e-5)
    other = keras.Sequential(
        [keras.Input((8, 8, 3)), backbone.build(), keras.layers.Dense(3)]
    )
    with pytest.raises(ArgumentError, match="is not the model"):
        load_delta(folder, model=other)
