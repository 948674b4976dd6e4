"""tensorflow_hub's own `KerasLayer` contract, held by `tftransfer.HubLayer`.

Each test ports the expectation of one test method of tensorflow_hub's
`keras_layer_test.py` (named in its docstring) to Keras 3, with
`tftransfer.HubLayer` in place of `hub.KerasLayer` and the models of
`hub_fixtures`. Where hub's test is parameterized, so is the port: models
written by hand ("SavedRaw") or from a Keras 3 model as `tftransfer.hubify`
writes them ("SavedFromKeras"). Ports adapt only what Keras 3 changes:
inputs are arrays (Keras 3 refuses Python numbers as layer inputs),
`model.losses` holds the losses of the last call, `tf.keras` is `keras`, and
saving a model uses `model.export`. Where HubLayer deliberately differs from
`hub.KerasLayer` (see README, "Migrating from `hub.KerasLayer`"), the test
checks the documented behaviour instead and says so.
"""

import json
import warnings

import hub_fixtures
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.saving.serialization_lib import SafeModeScope

import tftransfer
from tftransfer.errors import ArgumentError

SAVED = ["SavedRaw", "SavedFromKeras"]
TEN = np.array(10.0, "float32")


def _json_cycle(config):
    return json.loads(json.dumps(config))


def _saved(request, hub_dir, save, name, **kwargs):
    kind = request.param
    path = str(hub_dir / f"{name}_{kind}")
    return save(path, from_keras=kind == "SavedFromKeras", **kwargs)


@pytest.fixture(scope="module", params=SAVED)
def half_plus_one_path(request, hub_dir):
    return _saved(request, hub_dir, hub_fixtures.save_half_plus_one, "half_plus_one")


@pytest.fixture(scope="module", params=SAVED)
def batch_norm_path(request, hub_dir):
    return _saved(request, hub_dir, hub_fixtures.save_batch_norm, "batch_norm")


@pytest.fixture(scope="module", params=SAVED)
def text_2d_path(request, hub_dir):
    return _saved(request, hub_dir, hub_fixtures.save_2d_text_embedding, "text_2d")


@pytest.fixture(scope="module", params=SAVED)
def custom_attributes_path(request, hub_dir):
    scratch = str(hub_dir / f"custom_attributes_scratch_{request.param}")
    return _saved(
        request,
        hub_dir,
        hub_fixtures.save_with_custom_attributes,
        "custom_attributes",
        scratch_dir=scratch,
    )


@pytest.fixture(scope="module")
def hparams_path(hub_dir):
    return hub_fixtures.save_with_hparams(str(hub_dir / "hparams"))


@pytest.fixture(scope="module")
def dict_model_path(hub_dir):
    return hub_fixtures.save_with_dict_input_output(str(hub_dir / "dict_io"))


@pytest.fixture(scope="module")
def list_output_path(hub_dir):
    path = str(hub_dir / "obscure_list_output")
    return hub_fixtures.save_with_obscurely_shaped_list_output(path)


@pytest.fixture(scope="module")
def plus_one_path(hub_dir):
    return hub_fixtures.save_plus_one(str(hub_dir / "plus_one"))


def _batch_norm_variables(layer):
    """beta, gamma, moving mean and variance of a `batch_norm_path` layer."""
    suffixes = ("beta", "gamma", "moving_mean", "moving_variance")
    return [
        next(w for w in layer.weights if w.name.endswith(suffix)) for suffix in suffixes
    ]


# KerasTest


def test_half_plus_one_retraining_trains_only_the_trainable_kernel(
    half_plus_one_path,
):
    """hub: KerasTest.testHalfPlusOneRetraining."""
    inputs = keras.Input((1,))
    imported = tftransfer.HubLayer(half_plus_one_path, trainable=True)
    model = keras.Model(inputs, imported(inputs))
    x = np.array([[0.0], [8.0], [10.0], [12.0]], "float32")
    np.testing.assert_array_equal(model(x), [[1.0], [5.0], [6.0], [7.0]])
    np.testing.assert_array_equal(model.losses, np.float32([0.0025]))
    assert len(model.trainable_weights) == 1
    assert len(model.trainable_weights[0].shape) == 2
    assert sorted(len(w.shape) for w in model.non_trainable_weights) == [1, 2]
    trainable = {id(w) for w in model.trainable_weights}
    assert not trainable & {id(w) for w in model.non_trainable_weights}

    model.compile(keras.optimizers.SGD(0.002), "mean_squared_error")
    x_train = np.array([[9.0], [10.0], [11.0]] * 10, "float32")
    model.fit(x_train, x_train / 2 + 6, batch_size=30, epochs=10, verbose=0)
    # The frozen bias stays 1; the trainable kernel grows to almost 1.
    np.testing.assert_array_equal(model(np.array([[0.0]], "float32")), [[1.0]])
    np.testing.assert_allclose(
        model(np.array([[10.0]], "float32")), [[11.0]], atol=0, rtol=0.03
    )
    np.testing.assert_allclose(model.losses, [0.01], atol=0, rtol=0.06)


def test_regularization_loss_follows_trainable_when_toggled(half_plus_one_path):
    """hub: KerasTest.testRegularizationLoss.

    Keras 3 collects losses during a call, so the model is called after each
    toggle; a frozen layer adds no loss term (hub reported a zero).
    """
    inputs = keras.Input((1,))
    imported = tftransfer.HubLayer(half_plus_one_path)
    model = keras.Model(inputs, imported(inputs))
    x = np.array([[1.0]], "float32")
    for trainable, losses in [(False, []), (True, np.float32([0.0025]))] * 2:
        imported.trainable = trainable
        model(x)
        np.testing.assert_array_equal(model.losses, losses)


def test_batch_norm_retraining_learns_then_runs_in_inference_mode(batch_norm_path):
    """hub: KerasTest.testBatchNormRetraining."""
    inputs = keras.Input((1,))
    imported = tftransfer.HubLayer(batch_norm_path, trainable=True)
    beta, _, mean, _ = _batch_norm_variables(imported)
    model = keras.Model(inputs, imported(inputs))
    model.compile(keras.optimizers.SGD(0.1), "mean_squared_error")
    # Batch mean 12: the layer learns x -> 2x for these batch statistics.
    x = np.array([[11.0], [12.0], [13.0]], "float32")
    model.fit(x, 2 * x, batch_size=3, epochs=100, verbose=0)
    np.testing.assert_allclose(mean.numpy(), [12.0], rtol=1e-5)
    np.testing.assert_allclose(beta.numpy(), [24.0], rtol=1e-5)
    np.testing.assert_allclose(model(x), 2 * x, rtol=1e-5)
    # Inference uses the moving statistics, whatever the batch, and
    # updates nothing.
    other = np.array([[10.0], [20.0], [30.0]], "float32")
    for _ in range(100):
        np.testing.assert_allclose(model(other), 2 * other, rtol=1e-5)
    np.testing.assert_allclose(mean.numpy(), [12.0], rtol=1e-5)
    np.testing.assert_allclose(beta.numpy(), [24.0], rtol=1e-5)


def test_batch_norm_freezing_leaves_all_four_variables_unchanged(batch_norm_path):
    """hub: KerasTest.testBatchNormFreezing."""
    inputs = keras.Input((1,))
    imported = tftransfer.HubLayer(batch_norm_path)
    variables = _batch_norm_variables(imported)
    initial = [[0.0], [1.0], [0.0], [1.0]]
    for variable, value in zip(variables, initial, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)
    dense = keras.layers.Dense(
        1, use_bias=False, kernel_initializer=keras.initializers.Constant(1.5)
    )
    model = keras.Model(inputs, dense(imported(inputs)))
    model.compile(keras.optimizers.SGD(0.1), "mean_squared_error")
    x = np.array([[1.0], [2.0], [3.0]], "float32")
    model.fit(x, 2 * x, batch_size=3, epochs=20, verbose=0)
    for variable, value in zip(variables, initial, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)
    np.testing.assert_allclose(model(x), 2 * x, rtol=1e-5)


def test_resolved_object_has_the_saved_model_attributes(custom_attributes_path):
    """hub: KerasTest.testCustomAttributes."""
    imported = tftransfer.HubLayer(custom_attributes_path)
    expected = imported.resolved_object.sample_output.numpy()
    asset_path = imported.resolved_object.sample_input.asset_path.numpy()
    with open(asset_path) as f:
        inputs = tf.constant([[f.read()]], tf.string)
    np.testing.assert_array_equal(imported(inputs).numpy(), expected)


@pytest.mark.parametrize(
    "output_shape",
    [None, {"sigma": (2,), "delta": (1,)}],
    ids=["NoOutputShapes", "WithOutputShapes"],
)
def test_dict_inputs_and_outputs_in_a_functional_model(dict_model_path, output_shape):
    """hub: KerasTest.testInputOutputDict."""
    x_in, y_in = keras.Input((1,), name="x"), keras.Input((1,), name="y")
    dict_in = {"x": x_in, "y": y_in}
    kwargs = {"arguments": {"return_dict": True}}  # For the SavedModel.
    if output_shape is not None:
        kwargs["output_shape"] = output_shape
    imported = tftransfer.HubLayer(dict_model_path, **kwargs)
    dict_out = imported(dict_in)
    delta_out, sigma_out = dict_out["delta"], dict_out["sigma"]
    concat_out = keras.layers.concatenate([delta_out, sigma_out])
    model = keras.Model(dict_in, [delta_out, sigma_out, concat_out])
    x = np.array([[11.0], [22.0], [33.0]], "float32")
    y = np.array([[1.0], [2.0], [3.0]], "float32")
    delta, sigma, concat = (t.numpy() for t in model({"x": x, "y": y}))
    np.testing.assert_allclose(delta, [[10.0], [20.0], [30.0]])
    np.testing.assert_allclose(sigma, [[12.0, 13.0], [24.0, 26.0], [36.0, 39.0]])
    np.testing.assert_allclose(
        concat, [[10.0, 12.0, 13.0], [20.0, 24.0, 26.0], [30.0, 36.0, 39.0]]
    )
    config = imported.get_config()
    new_layer = tftransfer.HubLayer.from_config(_json_cycle(config))
    expected = None if output_shape is None else {"sigma": [2], "delta": [1]}
    assert new_layer.get_config()["output_shape"] == expected


@pytest.mark.parametrize(
    "output_shape",
    [None, [[1], [2, 2], [3, 3, 3]]],
    ids=["NoOutputShapes", "WithOutputShapes"],
)
def test_output_shape_of_a_list_output(list_output_path, output_shape):
    """hub: KerasTest.testOutputShapeList.

    Also checks what hub's test leaves to graph mode: `output_shape` becomes
    the static shape of the symbolic outputs, which the model's traces
    cannot tell.
    """
    inputs = keras.Input((1,))
    kwargs = {} if output_shape is None else {"output_shape": output_shape}
    imported = tftransfer.HubLayer(list_output_path, **kwargs)
    outputs = imported(inputs)
    if output_shape is None:
        expected_shapes = [(None, None), (None,) * 3, (None,) * 4]
    else:
        expected_shapes = [(None, 1), (None, 2, 2), (None, 3, 3, 3)]
    assert [tuple(t.shape) for t in outputs] == expected_shapes
    model = keras.Model(inputs, outputs)
    single, double, triple = (
        t.numpy() for t in model(np.array([[1.0], [10.0]], "float32"))
    )
    np.testing.assert_allclose(single, [[1.0], [10.0]])
    for i, values in [(2, double), (3, triple)]:
        expected = np.broadcast_to(
            i * np.array([1.0, 10.0]).reshape(2, *[1] * i), (2, *[i] * i)
        )
        np.testing.assert_allclose(values, expected)
    config = imported.get_config()
    new_layer = tftransfer.HubLayer.from_config(_json_cycle(config))
    assert new_layer.get_config()["output_shape"] == output_shape


def test_compute_output_shape(half_plus_one_path):
    """hub: KerasTest.testComputeOutputShape."""
    layer = tftransfer.HubLayer(half_plus_one_path)
    assert layer.compute_output_shape((10, 1)) == (10, 1)
    layer.get_config()


def test_compute_output_shape_for_string_inputs(text_2d_path):
    """hub: KerasTest.testComputeOutputShapeDifferentDtypes.

    hub needs `output_shape` here; HubLayer also finds the shape by tracing
    with the string dtype of the SavedModel's input signature.
    """
    for output_shape in [(2,), None]:
        layer = tftransfer.HubLayer(text_2d_path, output_shape=output_shape)
        assert layer.compute_output_shape((None, 1)) == (None, 2)
        assert layer.compute_output_shape((3, 1)) == (3, 2)


def test_trainable_layer_under_mixed_precision_trains_and_saves(text_2d_path, tmp_path):
    """hub: KerasTest.testResaveWithMixedPrecision.

    The float32 SavedModel trains under the mixed_float16 policy, and the
    consumer model is saved (Keras 3: `model.export`) and serves the same.
    """
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((1,), dtype="string")
        imported = tftransfer.HubLayer(text_2d_path, trainable=True)
        model = keras.Model(inputs, imported(inputs))
        model.compile(keras.optimizers.SGD(0.002, momentum=0.001), "mean_squared_error")
        x = tf.constant([["a"], ["aa"], ["aaa"]])
        y = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], "float32")
        (kernel,) = imported.trainable_weights
        before = kernel.numpy().copy()
        model.fit(tf.data.Dataset.from_tensors((x, y)), shuffle=False, verbose=0)
        model.export(str(tmp_path / "resaved"), verbose=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert kernel.dtype == "float32"
    assert not np.array_equal(before, kernel.numpy())
    reloaded = tf.saved_model.load(str(tmp_path / "resaved"))
    np.testing.assert_allclose(
        reloaded.serve(x), model.predict(x, verbose=0), rtol=1e-6
    )


def test_get_config_from_config_json_round_trip(half_plus_one_path):
    """hub: KerasTest.testGetConfigFromConfig."""
    layer = tftransfer.HubLayer(half_plus_one_path)
    x = np.array([[10.0]], "float32")
    new_layer = tftransfer.HubLayer.from_config(_json_cycle(layer.get_config()))
    np.testing.assert_array_equal(new_layer(x), layer(x))


def test_get_config_from_config_keeps_arguments(hparams_path):
    """hub: KerasTest.testGetConfigFromConfigWithHParams."""
    layer = tftransfer.HubLayer(hparams_path, arguments={"a": 10.0})  # b stays 0.
    x = np.array([[1.0], [2.0], [3.0]], "float32")
    np.testing.assert_array_equal(layer(x), [[10.0], [20.0], [30.0]])
    new_layer = tftransfer.HubLayer.from_config(_json_cycle(layer.get_config()))
    np.testing.assert_array_equal(new_layer(x), [[10.0], [20.0], [30.0]])


def test_sequential_to_json_and_back(half_plus_one_path):
    """hub: KerasTest.testSaveModelConfig.

    Keras 3 deserializes in safe mode by default, which a HubLayer refuses
    (its SavedModel may run any op): the user opts out, as here.
    """
    model = keras.Sequential([tftransfer.HubLayer(half_plus_one_path)])
    x = np.array([[10.0]], "float32")
    result = model(x)
    with SafeModeScope(safe_mode=False):
        new_model = keras.models.model_from_json(model.to_json())
    np.testing.assert_array_equal(new_model(x), result)


# KerasLayerTest


def test_load_with_defaults(plus_one_path):
    """hub: KerasLayerTest.test_load_with_defaults."""
    layer = tftransfer.HubLayer(plus_one_path)
    assert layer(TEN).numpy() == 11.0


@pytest.mark.parametrize(
    ("signature", "output_key", "as_dict"),
    [
        (None, None, False),
        ("serving_default", None, True),
        ("serving_default", "output_0", False),
    ],
)
def test_call_or_signature_with_output_key_or_as_dict(
    plus_one_path, signature, output_key, as_dict
):
    """hub: KerasLayerTest.test_load_callable_saved_model_v2_with_signature."""
    layer = tftransfer.HubLayer(
        plus_one_path,
        signature=signature,
        output_key=output_key,
        signature_outputs_as_dict=as_dict,
    )
    output = layer(TEN)
    if as_dict:
        assert isinstance(output, dict)
        assert output["output_0"].numpy() == 11.0
    else:
        assert output.numpy() == 11.0


def test_signature_is_called_instead_of_a_different_call(hub_dir):
    """hub: KerasLayerTest.test_load_callable_keras_default_saved_model_v2_with_signature."""
    path = hub_fixtures.save_plus_one_with_keras_default_call(
        str(hub_dir / "plus_one_keras_default")
    )
    layer = tftransfer.HubLayer(
        path, signature="plus_one", signature_outputs_as_dict=True
    )
    output = layer(TEN)
    assert isinstance(output, dict)
    assert output["output_0"].numpy() == 11.0


@pytest.mark.parametrize(
    ("signature", "output_key", "as_dict"),
    [
        (None, None, False),
        ("serving_default", None, True),
        ("serving_default", "output_0", False),
    ],
)
def test_get_config_round_trip_keeps_signature_and_outputs(
    plus_one_path, signature, output_key, as_dict
):
    """hub: KerasLayerTest.test_keras_layer_get_config."""
    layer = tftransfer.HubLayer(
        plus_one_path,
        signature=signature,
        output_key=output_key,
        signature_outputs_as_dict=as_dict,
    )
    new_layer = tftransfer.HubLayer.from_config(_json_cycle(layer.get_config()))
    outputs, new_outputs = layer(TEN), new_layer(TEN)
    assert tf.nest.map_structure(float, outputs) == tf.nest.map_structure(
        float, new_outputs
    )


def test_signature_without_output_key_returns_its_only_output(plus_one_path, hub_dir):
    """hub: KerasLayerTest.test_keras_layer_fails_if_signature_output_not_specified.

    A documented difference: hub refuses a signature without `output_key` or
    `signature_outputs_as_dict`; HubLayer returns the signature's "default"
    or only output, and refuses only when that is ambiguous.
    """
    layer = tftransfer.HubLayer(plus_one_path, signature="serving_default")
    assert layer(TEN).numpy() == 11.0
    path = hub_fixtures.save_with_two_output_signature(str(hub_dir / "two_outputs"))
    ambiguous = tftransfer.HubLayer(path, signature="serving_default")
    with pytest.raises(tftransfer.InputSpecError, match="output_key"):
        ambiguous(TEN)


def test_signature_outputs_as_dict_without_signature_is_refused(plus_one_path):
    """hub: KerasLayerTest.test_keras_layer_fails_if_with_outputs_as_dict_but_no_signature."""
    with pytest.raises(ArgumentError, match="signature_outputs_as_dict=True"):
        tftransfer.HubLayer(plus_one_path, signature_outputs_as_dict=True)


def test_tags_are_refused(plus_one_path):
    """hub: KerasLayerTest.test_keras_layer_fails_if_saved_model_v2_with_tags."""
    with pytest.raises(ValueError, match="tags"):
        tftransfer.HubLayer(plus_one_path, signature=None, tags=["train"])


def test_output_key_with_signature_outputs_as_dict_is_refused(plus_one_path):
    """hub: KerasLayerTest.test_keras_layer_fails_if_setting_both_output_key_and_as_dict."""
    with pytest.raises(ArgumentError, match="at most one of output_key"):
        tftransfer.HubLayer(
            plus_one_path,
            signature="serving_default",
            signature_outputs_as_dict=True,
            output_key="output_0",
        )


def test_output_key_on_a_non_dict_output_is_refused(plus_one_path):
    """hub: KerasLayerTest.test_keras_layer_fails_if_output_is_not_dict."""
    layer = tftransfer.HubLayer(plus_one_path, output_key="output_0")
    with pytest.raises(ArgumentError, match="output_key='output_0'.*Leave out"):
        layer(TEN)


class _Pair(keras.layers.Layer):
    """A layer holding two sublayers, in order (as a model holds its layers)."""

    def __init__(self, first, second):
        super().__init__()
        self.first, self.second = first, second


def test_trainable_signature_is_refused(plus_one_path):
    """hub: KerasLayerTest.test_keras_layer_fails_if_signature_trainable.

    Refused when the layer is made. Made trainable later (directly or
    through its model), it warns and stays frozen, so no signature variable
    is trained, while the rest of the model is unfrozen as asked.
    """
    kwargs = {"signature": "serving_default", "signature_outputs_as_dict": True}
    with pytest.raises(ArgumentError, match=r"trainable=True"):
        tftransfer.HubLayer(plus_one_path, trainable=True, **kwargs)
    layer = tftransfer.HubLayer(plus_one_path, **kwargs)
    with pytest.warns(UserWarning, match=r"signature 'serving_default' stays frozen"):
        layer.trainable = True
    assert not layer.trainable
    dense = keras.layers.Dense(1)
    holder = _Pair(layer, dense)  # the hub layer first, then another layer
    holder.trainable = False
    with pytest.warns(UserWarning, match="stays frozen"):
        holder.trainable = True
    assert dense.trainable  # unfreezing went on past the hub layer
    assert not layer.trainable
    assert layer.trainable_weights == []


def test_trainable_layer_without_trainable_variables_warns_once(hparams_path):
    """hub: KerasLayerTest.test_keras_layer_logs_if_training_zero_variables."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer = tftransfer.HubLayer(hparams_path, trainable=True)
        layer(np.array([[10.0]], "float32"))
        layer(np.array([[10.0]], "float32"))
        layer.trainable = False
        layer.trainable = True
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "no trainable variables" in messages[0]
