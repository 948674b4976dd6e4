"""Every custom Keras object tftransfer registers survives a save and a load.

One shared helper, `assert_round_trip`, checks each object the way Keras
checks its own layers: the config survives JSON and `from_config`, and a
model holding the object, saved to a `.keras` file and loaded back, computes
the same thing. `test_every_registered_object_has_a_round_trip_case` finds
the registered objects by walking the package, so a new layer, loss or
optimizer without a case here fails the suite.
"""

import importlib
import json
import pkgutil

import keras
import numpy as np
import pytest

import tftransfer
from tftransfer.backbones.layer_features import MaskedPooling
from tftransfer.recipes.attention_pooling import AttentionPooling, MaskChannel
from tftransfer.recipes.heads import (
    FeaturePooling,
    InferenceMode,
    SmoothedSparseCrossentropy,
)
from tftransfer.recipes.optimizers import DiscriminativeAdamW

RNG = np.random.default_rng(0)


def _json_cycle(config: dict) -> dict:
    return json.loads(json.dumps(config))


def assert_round_trip(obj, tmp_path, *, inputs=None, build_model=None):
    """Checks that `obj` serialises and computes the same after a reload.

    Args:
        obj: a registered layer, loss or optimizer.
        tmp_path: a folder for the `.keras` file.
        inputs: what the saved model is called on (layers and losses).
        build_model: `build_model(obj) -> keras.Model` holding `obj`, saved
            to `.keras` and loaded back; its outputs on `inputs` must match.

    Returns:
        The object rebuilt from its JSON config.
    """
    serialized = _json_cycle(keras.saving.serialize_keras_object(obj))
    assert serialized["registered_name"].startswith("tftransfer>")
    rebuilt = keras.saving.deserialize_keras_object(serialized, safe_mode=False)
    assert type(rebuilt) is type(obj)
    assert _json_cycle(rebuilt.get_config()) == _json_cycle(obj.get_config())
    if build_model is not None:
        model = build_model(obj)
        path = str(tmp_path / "model.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path, safe_mode=False)
        np.testing.assert_allclose(
            np.asarray(reloaded(inputs)), np.asarray(model(inputs)), atol=1e-6
        )
    return rebuilt


def _sequence_model(layer):
    sequence = keras.Input((5, 3))
    mask = keras.Input((5,))
    return keras.Model([sequence, mask], layer(sequence, mask=mask))


@pytest.mark.parametrize("mode", ["mean", "max", "first"])
def test_feature_pooling_round_trips(mode, tmp_path):
    sequence = RNG.normal(size=(2, 5, 3)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], "float32")
    rebuilt = assert_round_trip(
        FeaturePooling(mode),
        tmp_path,
        inputs=[sequence, mask],
        build_model=_sequence_model,
    )
    assert rebuilt.mode == mode


def test_inference_mode_round_trips_with_its_wrapped_layer(tmp_path):
    images = RNG.normal(size=(4, 3)).astype("float32")

    def model_with(layer):
        inputs = keras.Input((3,))
        return keras.Model(inputs, layer(inputs))

    wrapped = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2), keras.layers.BatchNormalization()]
    )
    rebuilt = assert_round_trip(
        InferenceMode(wrapped), tmp_path, inputs=images, build_model=model_with
    )
    assert [type(layer) for layer in rebuilt.layer.layers] == [
        keras.layers.Dense,
        keras.layers.BatchNormalization,
    ]


def test_smoothed_sparse_crossentropy_round_trips_to_the_same_loss(tmp_path):
    loss = SmoothedSparseCrossentropy(0.2)
    labels = np.array([0, 2, 1])
    probabilities = keras.ops.softmax(RNG.normal(size=(3, 3)).astype("float32"))
    rebuilt = assert_round_trip(loss, tmp_path)
    assert rebuilt.label_smoothing == 0.2
    np.testing.assert_allclose(
        float(rebuilt(labels, probabilities)), float(loss(labels, probabilities))
    )


def test_discriminative_adamw_round_trips_and_steps_the_same(tmp_path):
    optimizer = DiscriminativeAdamW(
        3e-3, backbone_lr_scale=0.25, weight_decay=1e-2, global_clipnorm=1.0
    )
    rebuilt = assert_round_trip(optimizer, tmp_path)
    assert (rebuilt.backbone_lr_scale, rebuilt.decoupled_weight_decay) == (0.25, 1e-2)
    start = RNG.normal(size=(3,)).astype("float32")
    gradient = RNG.normal(size=(3,)).astype("float32")
    stepped = []
    for candidate in (optimizer, rebuilt):
        variable = keras.Variable(start, name="kernel")
        candidate.apply_gradients([(gradient, variable)])
        stepped.append(variable.numpy())
    np.testing.assert_allclose(stepped[0], stepped[1], atol=1e-7)


def test_hub_layer_round_trips_in_a_keras_file(image_model_path, tmp_path):
    images = RNG.uniform(size=(2, 8, 8, 3)).astype("float32")

    def model_with(layer):
        inputs = keras.Input((8, 8, 3))
        return keras.Model(inputs, layer(inputs))

    rebuilt = assert_round_trip(
        tftransfer.HubLayer(image_model_path),
        tmp_path,
        inputs=images,
        build_model=model_with,
    )
    assert rebuilt.handle == image_model_path


# The test above for each registered name; a new registered object without a
# case here fails `test_every_registered_object_has_a_round_trip_case`.
def test_attention_pooling_round_trips(tmp_path):
    sequence = RNG.normal(size=(2, 5, 3)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], "float32")

    def trained_model(layer):
        model = _sequence_model(layer)
        # Every weight random (the query starts at zero: the mean).
        model.set_weights([RNG.normal(size=w.shape) for w in model.get_weights()])
        return model

    rebuilt = assert_round_trip(
        AttentionPooling(num_heads=2, key_dim=4, value_dim=2),
        tmp_path,
        inputs=[sequence, mask],
        build_model=trained_model,
    )
    assert (rebuilt.num_heads, rebuilt.key_dim, rebuilt.value_dim) == (2, 4, 2)


def test_mask_channel_round_trips(tmp_path):
    sequence = RNG.normal(size=(2, 5, 3)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], "float32")
    assert_round_trip(
        MaskChannel(), tmp_path, inputs=[sequence, mask], build_model=_sequence_model
    )


@pytest.mark.parametrize("mode", ["mean", "max", "first"])
def test_masked_pooling_round_trips(mode, tmp_path):
    sequence = RNG.normal(size=(2, 5, 3)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], "float32")
    rebuilt = assert_round_trip(
        MaskedPooling(mode),
        tmp_path,
        inputs=[sequence, mask],
        build_model=_sequence_model,
    )
    assert rebuilt.mode == mode


ROUND_TRIP_CASES = {
    "tftransfer>AttentionPooling": test_attention_pooling_round_trips,
    "tftransfer>MaskChannel": test_mask_channel_round_trips,
    "tftransfer>MaskedPooling": test_masked_pooling_round_trips,
    "tftransfer>FeaturePooling": test_feature_pooling_round_trips,
    "tftransfer>InferenceMode": test_inference_mode_round_trips_with_its_wrapped_layer,
    "tftransfer>SmoothedSparseCrossentropy": (
        test_smoothed_sparse_crossentropy_round_trips_to_the_same_loss
    ),
    "tftransfer>DiscriminativeAdamW": (
        test_discriminative_adamw_round_trips_and_steps_the_same
    ),
    "tftransfer>HubLayer": test_hub_layer_round_trips_in_a_keras_file,
}


def test_every_registered_object_has_a_round_trip_case():
    for module in pkgutil.walk_packages(tftransfer.__path__, "tftransfer."):
        if not module.name.rpartition(".")[2].startswith("_"):  # scripts
            importlib.import_module(module.name)
    registered = {
        name
        for name in keras.saving.get_custom_objects()
        if name.startswith("tftransfer>")
    }
    assert registered, "no tftransfer object is registered"
    assert sorted(registered - set(ROUND_TRIP_CASES)) == []
