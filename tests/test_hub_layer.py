"""HubLayer: TF Hub SavedModels as trainable Keras 3 layers."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from hub_fixtures import IMAGE_FEATURES, IMAGE_SIZE, TEXT_SEQ_LENGTH

import tftransfer
from tftransfer.errors import ArgumentError

RNG = np.random.default_rng(42)
IMAGES = RNG.random((8, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
LABELS = np.array([0, 1] * 4)
SENTENCES = ["the man plays guitar", "the stock market fell", "a team won"]


def _classifier(layer, num_classes=2):
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    outputs = keras.layers.Dense(num_classes, activation="softmax")(layer(inputs))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def _values(variables):
    return [v.numpy().copy() for v in variables]


def test_outputs_equal_calling_the_restored_object(image_model_path):
    layer = tftransfer.HubLayer(image_model_path)
    restored = tf.saved_model.load(image_model_path)
    difference = np.abs(layer(IMAGES).numpy() - restored(IMAGES, training=False))
    assert difference.max() == 0.0
    assert layer(IMAGES).shape == (8, IMAGE_FEATURES)


def test_weights_are_the_saved_model_variables_not_copies(image_model_path):
    layer = tftransfer.HubLayer(image_model_path, trainable=True)
    kernel = next(w for w in layer.weights if "kernel" in w.name)
    kernel.assign(np.zeros(kernel.shape, "float32"))
    # A zero kernel makes every pre-BatchNorm activation 0 -> output is relu(beta).
    np.testing.assert_allclose(layer(IMAGES).numpy(), 0.0, atol=1e-6)


def test_trainable_subset_follows_the_saved_model(image_model_path):
    layer = tftransfer.HubLayer(image_model_path, trainable=True)
    trainable = sorted(w.name for w in layer.trainable_weights)
    non_trainable = sorted(w.name for w in layer.non_trainable_weights)
    assert trainable == ["beta", "gamma", "kernel"]
    assert non_trainable == ["moving_mean", "moving_variance"]
    frozen = tftransfer.HubLayer(image_model_path)
    assert frozen.trainable_weights == []
    assert len(frozen.non_trainable_weights) == 5


def test_frozen_fit_leaves_every_variable_bit_identical(image_model_path):
    layer = tftransfer.HubLayer(image_model_path)
    model = _classifier(layer)
    before = _values(layer.weights)
    head_before = _values(model.layers[-1].weights)
    model.fit(IMAGES, LABELS, epochs=2, batch_size=4, verbose=0)
    for old, new in zip(before, _values(layer.weights), strict=True):
        np.testing.assert_array_equal(old, new)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(head_before, _values(model.layers[-1].weights), strict=True)
    )


def test_trainable_fit_changes_weights_and_batchnorm_statistics(image_model_path):
    layer = tftransfer.HubLayer(image_model_path, trainable=True)
    model = _classifier(layer)
    before = {w.name: w.numpy().copy() for w in layer.weights}
    model.fit(IMAGES, LABELS, epochs=1, batch_size=4, verbose=0)
    for weight in layer.weights:
        assert not np.array_equal(before[weight.name], weight.numpy()), weight.name


def test_training_flag_reaches_the_model_only_when_trainable(image_model_path):
    restored = tf.saved_model.load(image_model_path)
    # In training mode BatchNorm uses batch moments, so outputs differ.
    training_output = restored(IMAGES, training=True).numpy()
    frozen = tftransfer.HubLayer(tf.saved_model.load(image_model_path))
    np.testing.assert_array_equal(
        frozen(IMAGES, training=True).numpy(), frozen(IMAGES, training=False).numpy()
    )
    trainable = tftransfer.HubLayer(
        tf.saved_model.load(image_model_path), trainable=True
    )
    np.testing.assert_allclose(
        trainable(IMAGES, training=True).numpy(), training_output, atol=1e-6
    )


def test_regularization_losses_are_added_while_trainable(image_model_path):
    layer = tftransfer.HubLayer(image_model_path, trainable=True)
    model = _classifier(layer)
    kernel = next(w for w in layer.weights if "kernel" in w.name).numpy()
    # Also in inference mode: fine-tuning may keep BatchNorm frozen.
    for training in (True, False):
        model(IMAGES, training=training)
        assert len(model.losses) == 1
        np.testing.assert_allclose(
            float(model.losses[0]), 1e-3 * np.sum(kernel**2), rtol=1e-5
        )
    layer.trainable = False
    model(IMAGES, training=True)
    assert model.losses == []


def test_model_without_training_argument_takes_strings(text_embedding_path):
    layer = tftransfer.HubLayer(text_embedding_path, trainable=True)
    inputs = keras.Input((), dtype="string")
    model = keras.Model(inputs, keras.layers.Dense(2)(layer(inputs)))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = _values(layer.trainable_weights)
    dataset = tf.data.Dataset.from_tensor_slices((SENTENCES, [0, 1, 0])).batch(3)
    model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    assert not np.array_equal(before[0], layer.trainable_weights[0].numpy())
    assert model.predict(tf.constant(SENTENCES), verbose=0).shape == (3, 2)


def test_bert_preprocessor_and_encoder_with_dict_inputs_and_outputs(bert_paths):
    preprocessor_path, encoder_path = bert_paths
    preprocessor = tftransfer.HubLayer(preprocessor_path)
    encoder = tftransfer.HubLayer(encoder_path, trainable=True)
    tokens = preprocessor(tf.constant(SENTENCES))
    assert sorted(tokens) == ["input_mask", "input_type_ids", "input_word_ids"]
    assert tokens["input_word_ids"].shape == (3, TEXT_SEQ_LENGTH)
    outputs = encoder(tokens)
    assert outputs["pooled_output"].shape == (3, 8)
    assert outputs["sequence_output"].shape == (3, TEXT_SEQ_LENGTH, 8)
    assert isinstance(outputs["encoder_outputs"], list | tuple)
    assert len(outputs["encoder_outputs"]) == 2

    token_inputs = {
        name: keras.Input((TEXT_SEQ_LENGTH,), dtype="int32", name=name)
        for name in tokens
    }
    pooled = tftransfer.HubLayer(encoder_path, output_key="pooled_output")
    model = keras.Model(token_inputs, keras.layers.Dense(2)(pooled(token_inputs)))
    np.testing.assert_allclose(
        pooled(tokens).numpy(), outputs["pooled_output"].numpy(), atol=1e-6
    )
    assert model.predict(dict(tokens), verbose=0).shape == (3, 2)


def test_signature_only_saved_model(signature_only_path):
    layer = tftransfer.HubLayer(signature_only_path, signature="serving_default")
    x = np.array([[1.0, 0.0, 1.0]], "float32")
    np.testing.assert_allclose(layer(x).numpy(), [[1.0, 2.0]])
    as_dict = tftransfer.HubLayer(
        signature_only_path,
        signature="serving_default",
        signature_outputs_as_dict=True,
    )
    assert sorted(as_dict({"x": x})) == ["y"]
    with pytest.raises(tftransfer.HandleError, match="no signature 'predict'"):
        tftransfer.HubLayer(signature_only_path, signature="predict")
    with pytest.raises(tftransfer.HandleError, match="signature= one of"):
        tftransfer.HubLayer(signature_only_path)


def test_load_options_are_passed_to_the_loader(image_model_path):
    options = tf.saved_model.LoadOptions(experimental_io_device="/job:localhost")
    layer = tftransfer.HubLayer(image_model_path, load_options=options)
    reference = tftransfer.HubLayer(image_model_path)
    np.testing.assert_array_equal(layer(IMAGES).numpy(), reference(IMAGES).numpy())


def test_mixed_precision_keeps_the_saved_model_in_float32(image_model_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = tftransfer.HubLayer(image_model_path)
        inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
        head = keras.layers.Dense(2, dtype="float32")
        model = keras.Model(inputs, head(layer(inputs)))
        assert model.predict(IMAGES, verbose=0).dtype == np.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_sequential_model(image_model_path):
    model = keras.Sequential(
        [
            keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3)),
            tftransfer.HubLayer(image_model_path),
            keras.layers.Dense(3),
        ]
    )
    assert model.predict(IMAGES, verbose=0).shape == (8, 3)


def test_freeze_train_unfreeze_recompile(image_model_path):
    layer = tftransfer.HubLayer(image_model_path)
    model = _classifier(layer)
    frozen_before = _values(layer.weights)
    model.fit(IMAGES, LABELS, epochs=1, verbose=0)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(frozen_before, _values(layer.weights), strict=True)
    )
    layer.trainable = True
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    assert len(model.trainable_weights) == 3 + 2
    model.fit(IMAGES, LABELS, epochs=1, verbose=0)
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(frozen_before, _values(layer.weights), strict=True)
    )


def test_variables_become_distributed_in_a_strategy_scope(image_model_path):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        layer = tftransfer.HubLayer(image_model_path, trainable=True)
        model = _classifier(layer)
    assert all(
        isinstance(w.value, tf.distribute.DistributedValues) for w in layer.weights
    )
    before = _values(layer.trainable_weights)
    model.fit(IMAGES, LABELS, epochs=1, batch_size=4, verbose=0)
    assert not np.array_equal(before[0], layer.trainable_weights[0].numpy())


def test_keras_file_round_trip_keeps_fine_tuned_weights(image_model_path, tmp_path):
    layer = tftransfer.HubLayer(image_model_path, trainable=True)
    model = _classifier(layer)
    model.fit(IMAGES, LABELS, epochs=1, verbose=0)
    expected = model.predict(IMAGES, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=False)
    np.testing.assert_allclose(reloaded.predict(IMAGES, verbose=0), expected, atol=1e-6)
    assert reloaded.layers[1].handle == image_model_path


def test_keras_file_load_is_refused_in_safe_mode(image_model_path, tmp_path):
    model = _classifier(tftransfer.HubLayer(image_model_path))
    path = str(tmp_path / "model.keras")
    model.save(path)
    with pytest.raises(Exception, match="safe_mode=False"):
        keras.saving.load_model(path)


def test_model_export_runs_with_plain_tensorflow(image_model_path, tmp_path):
    model = _classifier(tftransfer.HubLayer(image_model_path, trainable=True))
    model.fit(IMAGES, LABELS, epochs=1, verbose=0)
    export_path = str(tmp_path / "exported")
    model.export(export_path, verbose=False)
    np.save(tmp_path / "images.npy", IMAGES)
    np.save(tmp_path / "expected.npy", model.predict(IMAGES, verbose=0))
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "assert 'tftransfer' not in sys.modules\n"
        f"m = tf.saved_model.load({export_path!r})\n"
        f"x = np.load({str(tmp_path / 'images.npy')!r})\n"
        f"e = np.load({str(tmp_path / 'expected.npy')!r})\n"
        "print(float(np.abs(m.serve(x).numpy() - e).max()))\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=True,
    )
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-6


def test_wrong_dtype_states_the_expected_signature(image_model_path):
    layer = tftransfer.HubLayer(image_model_path)
    with pytest.raises(tftransfer.InputSpecError, match=r"Expected float32 tensor"):
        layer(tf.constant(IMAGES, tf.float64))


def test_wrong_shape_states_the_expected_signature(image_model_path):
    layer = tftransfer.HubLayer(image_model_path)
    with pytest.raises(tftransfer.InputSpecError, match=r"\(None, 8, 8, 3\)"):
        layer(np.zeros((2, 4, 4, 3), "float32"))


def test_wrong_keys_state_the_expected_signature(bert_paths):
    layer = tftransfer.HubLayer(bert_paths[1], output_key="pooled_output")
    with pytest.raises(tftransfer.InputSpecError, match="input_word_ids"):
        layer({"ids": tf.zeros((1, TEXT_SEQ_LENGTH), tf.int32)})


def test_unknown_output_key_lists_the_outputs(bert_paths):
    layer = tftransfer.HubLayer(bert_paths[1], output_key="cls")
    with pytest.raises(tftransfer.InputSpecError, match="pooled_output"):
        layer(
            {
                k: tf.zeros((1, 4), tf.int32)
                for k in ("input_word_ids", "input_mask", "input_type_ids")
            }
        )


def test_time_distributed_applies_the_layer_to_every_step(image_model_path):
    layer = tftransfer.HubLayer(image_model_path)
    clips = RNG.random((2, 3, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    for steps in (3, None):  # a Python loop, or tf.vectorized_map
        inputs = keras.Input((steps, IMAGE_SIZE, IMAGE_SIZE, 3))
        outputs = keras.layers.TimeDistributed(layer)(inputs)
        assert tuple(outputs.shape) == (None, steps, IMAGE_FEATURES)
        per_step = keras.Model(inputs, outputs).predict(clips, verbose=0)
        for step in range(3):
            np.testing.assert_allclose(
                per_step[:, step], layer(clips[:, step]).numpy(), atol=1e-6
            )


def test_sequential_infers_output_shapes_and_summary_shows_them(image_model_path):
    model = keras.Sequential(
        [tftransfer.HubLayer(image_model_path), keras.layers.Dense(3)]
    )
    assert model.compute_output_shape((None, IMAGE_SIZE, IMAGE_SIZE, 3)) == (None, 3)
    model.build((None, IMAGE_SIZE, IMAGE_SIZE, 3))
    lines = []
    model.summary(print_fn=lambda line, **kwargs: lines.append(line))
    hub_row = next(line for line in lines if "(HubLayer)" in line)
    assert f"(None, {IMAGE_FEATURES})" in hub_row


def test_compute_output_shape_takes_the_input_dtypes_of_the_saved_model(
    bert_paths, text_embedding_path
):
    encoder = tftransfer.HubLayer(bert_paths[1])
    keys = ("input_word_ids", "input_mask", "input_type_ids")
    shapes = encoder.compute_output_shape(
        {key: (None, TEXT_SEQ_LENGTH) for key in keys}
    )
    assert shapes["pooled_output"] == (None, 8)
    assert shapes["sequence_output"] == (None, TEXT_SEQ_LENGTH, 8)
    assert list(shapes["encoder_outputs"]) == [(None, TEXT_SEQ_LENGTH, 8)] * 2
    strings = tftransfer.HubLayer(text_embedding_path)
    assert strings.compute_output_shape((None,)) == (None, 6)


def test_compute_output_shape_of_inputs_the_model_does_not_take(image_model_path):
    layer = tftransfer.HubLayer(image_model_path)
    with pytest.raises(tftransfer.InputSpecError, match="Pass output_shape="):
        layer.compute_output_shape((None, 4, 4, 3))
    stated = tftransfer.HubLayer(image_model_path, output_shape=[IMAGE_FEATURES])
    assert stated.compute_output_shape((7, 4, 4, 3)) == (7, IMAGE_FEATURES)


def test_output_shape_survives_keras_file_and_json_round_trips(
    text_embedding_path, tmp_path
):
    inputs = keras.Input((), dtype="string")
    layer = tftransfer.HubLayer(text_embedding_path, output_shape=(6,))
    model = keras.Model(inputs, keras.layers.Dense(2)(layer(inputs)))
    sentences = tf.constant(SENTENCES)
    expected = model.predict(sentences, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=False)
    assert reloaded.layers[1].get_config()["output_shape"] == [6]
    np.testing.assert_allclose(reloaded.predict(sentences, verbose=0), expected)
    config = json.loads(json.dumps(layer.get_config()))
    assert tftransfer.HubLayer.from_config(config).get_config()["output_shape"] == [6]


@pytest.mark.parametrize(
    "output_shape",
    ["1280", [-1], [1.5], [[4], "x"]],
    ids=["string", "negative", "float", "string_in_a_nest"],
)
def test_output_shape_that_is_no_shape_is_refused(image_model_path, output_shape):
    with pytest.raises(ArgumentError, match="Expected output_shape="):
        tftransfer.HubLayer(image_model_path, output_shape=output_shape)


def test_output_shape_that_does_not_fit_the_output_is_refused(image_model_path):
    layer = tftransfer.HubLayer(image_model_path, output_shape=[IMAGE_FEATURES + 1])
    with pytest.raises(ArgumentError, match=r"not fit output_shape.*\[5\]"):
        layer(IMAGES)
    with pytest.raises(ArgumentError, match="not fit output_shape"):
        layer(keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3)))
    nested = tftransfer.HubLayer(image_model_path, output_shape=[[4], [4]])
    with pytest.raises(ArgumentError, match="not fit output_shape"):
        nested(IMAGES)


def test_resolved_object_is_the_loaded_saved_model(image_model_path):
    loaded = tf.saved_model.load(image_model_path)
    assert tftransfer.HubLayer(loaded).resolved_object is loaded
    from_path = tftransfer.HubLayer(image_model_path).resolved_object
    assert len(from_path.trainable_variables) == 3
    np.testing.assert_array_equal(
        from_path(IMAGES, training=False).numpy(), loaded(IMAGES, training=False)
    )


def test_compute_output_shape_of_a_live_object_asks_for_output_shape():
    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def __call__(self, x):
            return 2.0 * x

    layer = tftransfer.HubLayer(Doubler())
    with pytest.raises(tftransfer.InputSpecError, match="Pass output_shape="):
        layer.compute_output_shape((None, 3))
    shaped = tftransfer.HubLayer(Doubler(), output_shape=[3])
    assert shaped.compute_output_shape((None, 3)) == (None, 3)
