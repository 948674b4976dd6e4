"""Recipe plug-ins: custom heads, a callable unfreeze, task kinds beyond
single-label classification, and construction that does not depend on the
order in which subclasses set themselves up."""

import keras
import numpy as np
import pytest
from data_fixtures import seeded_image_backbone, signal_images, tiny_recipe

from tftransfer import data
from tftransfer.errors import ConfigError, DataError
from tftransfer.recipes import FeatureExtraction, FineTuning


@keras.saving.register_keras_serializable(package="recipe_tests")
class TwoLayerHead(keras.layers.Layer):
    """A custom head: a hidden ReLU layer, then `units` raw outputs."""

    def __init__(self, units, hidden=8, **kwargs):
        super().__init__(**kwargs)
        self.units, self.hidden = units, hidden
        self.first = keras.layers.Dense(hidden, activation="relu")
        self.last = keras.layers.Dense(units)

    def call(self, features):
        return self.last(self.first(features))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "hidden": self.hidden}


class UnregisteredHead(keras.layers.Layer):
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(units)

    def call(self, features):
        return self.dense(features)


class _Steps(keras.callbacks.Callback):
    """Counts training steps of the recipe's phases."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1


# Construction ------------------------------------------------------------


def test_default_run_dir_covers_settings_a_subclass_adds_after_the_base():
    class Tagged(FeatureExtraction):
        def __init__(self, backbone, *, tag, **kwargs):
            super().__init__(backbone, **kwargs)
            self.settings["tag"] = tag

    backbone = seeded_image_backbone("tiny", conv_filters=4)
    first = Tagged(backbone, tag="a", strategy="default")
    assert first.run_dir != Tagged(backbone, tag="b", strategy="default").run_dir
    assert first.run_dir == Tagged(backbone, tag="a", strategy="default").run_dir
    # The fine-tuning settings, set after the base's own, are covered too.
    tuned = FineTuning(backbone, strategy="default", fine_tune_epochs=3)
    assert tuned.settings["fine_tune_epochs"] == 3
    assert tuned.run_dir != FineTuning(backbone, strategy="default").run_dir


def test_old_epochs_argument_is_refused():
    with pytest.raises(TypeError, match="epochs"):
        FeatureExtraction(seeded_image_backbone("tiny"), epochs=3)


# Heads -------------------------------------------------------------------


def test_custom_head_layer_trains_with_auto_learning_rate_and_resumes(tmp_path):
    pixels, signal = signal_images()
    train = data.from_arrays(pixels, (signal > 0.5).astype("int64"))
    steps = _Steps()
    head = TwoLayerHead(2, hidden=6)
    recipe = tiny_recipe(
        FeatureExtraction,
        tmp_path,
        head=head,
        learning_rate="auto",
        callbacks=[steps],
    )
    recipe.fit(train, train)
    # Only the learning rate is searched: a custom head regularises itself.
    assert set(recipe.tuned) == {"learning_rate"}
    assert isinstance(recipe.head.layers[0], TwoLayerHead)
    assert recipe.head.layers[0] is not head  # a copy from its config
    assert recipe.head.layers[0].hidden == 6
    probabilities = recipe.predict(train)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    features, _ = recipe.cached_features(train, "check").arrays()
    np.testing.assert_allclose(
        recipe.model.predict(pixels.astype("float32") / 255, verbose=0)[:4],
        recipe.head.predict(features, verbose=0)[:4],
        atol=1e-5,
    )
    trained = steps.count
    assert trained > 0
    again = tiny_recipe(
        FeatureExtraction,
        tmp_path,
        head=TwoLayerHead(2, hidden=6),
        learning_rate="auto",
        callbacks=[steps],
    )
    again.fit(train, train)
    assert steps.count == trained  # resumed from the finished checkpoint
    np.testing.assert_allclose(again.predict(train), probabilities, atol=1e-6)


def test_head_factory_gets_the_feature_spec_and_the_number_of_outputs(tmp_path):
    pixels, signal = signal_images()
    seen = []

    def factory(features_spec, num_outputs):
        seen.append((tuple(features_spec.shape), num_outputs))
        return keras.layers.Dense(num_outputs)

    recipe = tiny_recipe(FeatureExtraction, tmp_path, head=factory)
    recipe.fit(data.from_arrays(pixels, np.arange(48) % 3))
    assert seen == [((None, 4), 3)]
    assert recipe.predict(data.from_arrays(pixels, np.arange(48) % 3)).shape == (48, 3)
    assert "factory" in recipe.settings["head"]


def test_a_head_that_cannot_be_serialised_is_refused_when_given(tmp_path):
    with pytest.raises(ConfigError, match="register_keras_serializable"):
        tiny_recipe(FeatureExtraction, tmp_path, head=UnregisteredHead(2))


def test_a_head_of_the_wrong_width_names_the_width_needed(tmp_path):
    pixels, _ = signal_images()
    recipe = tiny_recipe(FeatureExtraction, tmp_path, head=keras.layers.Dense(5))
    with pytest.raises(ConfigError, match=r"needs \[batch, 2\]"):
        recipe.fit(data.from_arrays(pixels, np.arange(48) % 2))


def test_default_head_settings_are_refused_with_a_custom_head(tmp_path):
    with pytest.raises(ConfigError, match="kernel_regularizer"):
        tiny_recipe(
            FeatureExtraction,
            tmp_path,
            head=keras.layers.Dense(2),
            head_weight_decay=1e-3,
        )
    with pytest.raises(ConfigError, match="hidden_units"):
        tiny_recipe(
            FeatureExtraction, tmp_path, head=keras.layers.Dense(2), hidden_units=(4,)
        )
    with pytest.raises(ConfigError, match="head=None"):
        tiny_recipe(FeatureExtraction, tmp_path, head="big")
    with pytest.raises(ConfigError, match=r"dropout=0\.5 is the default head's"):
        tiny_recipe(
            FeatureExtraction, tmp_path, head=keras.layers.Dense(2), dropout=0.5
        )
    # Left at its default, dropout is no choice of the user's: accepted.
    tiny_recipe(FeatureExtraction, tmp_path, head=keras.layers.Dense(2))


def test_pooling_is_checked_when_the_recipe_is_made_with_the_new_words(tmp_path):
    for old, new in (("avg", "mean"), ("cls", "first")):
        with pytest.raises(ConfigError, match=f"Pass pooling='{new}'"):
            tiny_recipe(FineTuning, tmp_path, pooling=old)
    with pytest.raises(ConfigError, match="Expected pooling to be one of"):
        tiny_recipe(FeatureExtraction, tmp_path, pooling="median")
    assert (
        tiny_recipe(FeatureExtraction, tmp_path, pooling="max").settings["pooling"]
        == "max"
    )


# Unfreeze ----------------------------------------------------------------


def test_unfreeze_callable_chooses_what_phase_two_trains(tmp_path):
    pixels, signal = signal_images()
    train = data.from_arrays(pixels, (signal > 0.5).astype("int64"))
    given = []

    def only_the_conv_kernel(backbone_layer):
        given.append(backbone_layer)
        return [backbone_layer.get_layer("conv").kernel]

    recipe = tiny_recipe(
        FineTuning,
        tmp_path,
        head_epochs=1,
        fine_tune_epochs=1,
        fine_tune_learning_rate=1e-2,
        unfreeze=only_the_conv_kernel,
    )
    recipe.fit(train, train)
    assert given == [recipe.backbone_layer]
    conv = recipe.backbone_layer.get_layer("conv")
    assert [v.path for v in recipe.backbone_layer.trainable_weights] == [
        conv.kernel.path
    ]
    pretrained = seeded_image_backbone("tiny", conv_filters=4).build(trainable=False)
    original = pretrained.get_layer("conv")
    np.testing.assert_array_equal(conv.bias.numpy(), original.bias.numpy())
    if recipe.chosen == "fine_tuned":
        assert not np.array_equal(conv.kernel.numpy(), original.kernel.numpy())
    assert "only_the_conv_kernel" in recipe.settings["unfreeze"]


def test_unfreeze_callable_returning_layers_unfreezes_their_weights(tmp_path):
    recipe = tiny_recipe(
        FineTuning, tmp_path, unfreeze=lambda layer: [layer.get_layer("conv")]
    )
    chosen = recipe.unfreeze()
    assert {v.path for v in chosen} == {
        v.path for v in recipe.backbone_layer.get_layer("conv").weights
    }


def test_unfreeze_callable_naming_foreign_variables_is_refused(tmp_path):
    foreign = keras.Variable(np.zeros(2), name="elsewhere")
    recipe = tiny_recipe(FineTuning, tmp_path, unfreeze=lambda layer: [foreign])
    with pytest.raises(ConfigError, match="not a trainable variable of the backbone"):
        recipe.unfreeze()
    recipe = tiny_recipe(FineTuning, tmp_path, unfreeze=lambda layer: [])
    with pytest.raises(ConfigError, match="chose no backbone variable"):
        recipe.unfreeze()


# Tasks -------------------------------------------------------------------


def _multi_hot(signal):
    return np.stack([signal > 0.5, signal < 0.3, np.zeros_like(signal)], 1).astype(
        "float32"
    )


def test_multi_label_trains_sigmoid_outputs_and_reports_its_metrics(tmp_path):
    pixels, signal = signal_images(64)
    labels = _multi_hot(signal)
    names = ["bright", "dark", "never"]
    train = data.from_arrays(pixels, labels, names, task="multi_label")
    recipe = tiny_recipe(
        FeatureExtraction, tmp_path, head_epochs=20, learning_rate=3e-2
    )
    recipe.fit(train, train)
    assert recipe.task == "multi_label"
    assert recipe.class_names == names
    probabilities = recipe.predict(train)
    assert probabilities.shape == (64, 3)
    # Sigmoid outputs: independent, not a distribution over the labels.
    assert not np.allclose(probabilities.sum(axis=1), 1.0)
    assert "binary_accuracy" in recipe.history.history
    metrics = recipe.evaluate(train)
    assert metrics["task"] == "multi_label"
    assert set(metrics["per_label"]) == set(names)
    assert metrics["per_label"]["never"]["support"] == 0
    assert metrics["micro_f1"] > 0.5
    assert 0.0 <= metrics["subset_accuracy"] <= 1.0


def test_multi_label_validation_columns_follow_the_training_names(tmp_path):
    pixels, signal = signal_images(64)
    labels = _multi_hot(signal)
    train = data.from_arrays(pixels, labels, ["a", "b", "c"], task="multi_label")
    swapped = data.from_arrays(
        pixels, labels[:, [1, 0, 2]], ["b", "a", "c"], task="multi_label"
    )
    recipe = tiny_recipe(FeatureExtraction, tmp_path)
    recipe.fit(train, swapped)
    np.testing.assert_allclose(recipe.predict(swapped), recipe.predict(train))
    assert recipe.evaluate(swapped) == recipe.evaluate(train)
    other = data.from_arrays(pixels, labels, ["a", "b", "z"], task="multi_label")
    with pytest.raises(DataError, match="label or target columns"):
        recipe.evaluate(other)


def test_regression_trains_linear_outputs_and_reports_mae_rmse_r2(tmp_path):
    pixels, signal = signal_images(64)
    targets = np.stack([10 * signal, -5 * signal + 1], axis=1)
    train = data.from_arrays(pixels, targets, ["up", "down"], task="regression")
    recipe = tiny_recipe(
        FeatureExtraction,
        tmp_path,
        head_epochs=200,
        patience=None,
        learning_rate=0.1,
        dropout=0.0,
    )
    recipe.fit(train, train)
    predictions = recipe.predict(train)
    assert predictions.shape == (64, 2)
    assert predictions[:, 0].max() > 1.0 and predictions[:, 1].min() < 0.0
    assert "mae" in recipe.history.history
    metrics = recipe.evaluate(train)
    assert metrics["task"] == "regression"
    assert metrics["target_names"] == ["up", "down"]
    assert metrics["r2"] > 0.3
    assert metrics["rmse"] >= metrics["mae"] > 0


def test_regression_fine_tuning_that_hurts_keeps_the_frozen_model(tmp_path):
    pixels, signal = signal_images(64)
    train = data.from_arrays(pixels, 10 * signal, task="regression")
    recipe = tiny_recipe(
        FineTuning,
        tmp_path,
        head_epochs=10,
        fine_tune_epochs=1,
        fine_tune_learning_rate=50.0,
        backbone_lr_scale=1.0,
        clipnorm=None,
    )
    recipe.fit(train, train)
    assert recipe.chosen == "frozen"
    features, _ = recipe.cached_features(train, "check").arrays()
    np.testing.assert_allclose(
        recipe.predict(train), recipe.head.predict(features, verbose=0), atol=1e-4
    )


def test_task_setting_must_match_the_data_and_regression_has_no_smoothing(tmp_path):
    pixels, signal = signal_images()
    classes = data.from_arrays(pixels, np.arange(48) % 2)
    with pytest.raises(ConfigError, match="task='regression'"):
        tiny_recipe(FeatureExtraction, tmp_path, task="regression").fit(classes)
    with pytest.raises(ConfigError, match="Expected task to be one of"):
        tiny_recipe(FeatureExtraction, tmp_path, task="ranking")
    targets = data.from_arrays(pixels, signal, task="regression")
    with pytest.raises(ConfigError, match="label_smoothing"):
        tiny_recipe(FeatureExtraction, tmp_path, label_smoothing=0.1).fit(targets)


def test_classification_recipe_refuses_vector_labels_with_the_fix(tmp_path):
    pixels, signal = signal_images()
    import tensorflow as tf

    batches = tf.data.Dataset.from_tensor_slices(
        (pixels.astype("float32") / 255, _multi_hot(signal))
    ).batch(16)
    recipe = FeatureExtraction(
        seeded_image_backbone("tiny", conv_filters=4).build(trainable=False),
        cache_dir=tmp_path / "cache",
        run_dir=tmp_path / "run",
        strategy="default",
        verbose=0,
    )
    with pytest.raises(DataError, match="task='multi_label'"):
        recipe.fit(batches, batches)
    recipe = FeatureExtraction(
        seeded_image_backbone("tiny", conv_filters=4).build(trainable=False),
        task="multi_label",
        cache_dir=tmp_path / "cache",
        run_dir=tmp_path / "run2",
        strategy="default",
        head_epochs=2,
        verbose=0,
    )
    recipe.fit(batches, batches)
    assert recipe.class_names == ["0", "1", "2"]
    assert recipe.predict(batches).shape == (48, 3)


def test_dataset_labels_follow_the_task_not_their_integer_dtype(tmp_path):
    import tensorflow as tf

    pixels, signal = signal_images()
    inputs = pixels.astype("float32") / 255
    ages = (20 + 50 * signal).astype("int64")  # integer regression targets
    multi_hot = _multi_hot(signal).astype("int64")
    for task, labels, names in (
        ("regression", ages, ["target"]),
        ("multi_label", multi_hot, ["0", "1", "2"]),
    ):
        batches = tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(16)
        recipe = tiny_recipe(FeatureExtraction, tmp_path, task, task=task)
        recipe.fit(batches, batches)
        assert recipe.class_names == names
        cached = recipe.cached_features(batches, "train").labels()
        assert cached.dtype == np.float32
        np.testing.assert_array_equal(cached, labels.reshape(48, -1))
        assert recipe.evaluate(batches)["task"] == task
        assert recipe.predict(batches).shape == (48, len(names))
    # The ages read as classes: the cache keeps class indices apart.
    batches = tf.data.Dataset.from_tensor_slices((inputs, ages)).batch(16)
    recipe = tiny_recipe(FeatureExtraction, tmp_path, "classes", task="classification")
    recipe.fit(batches, batches)
    cached = recipe.cached_features(batches, "train").labels()
    assert cached.dtype == np.int64 and cached.shape == (48,)


def test_default_names_count_one_column_for_labels_of_one_dimension():
    from tftransfer.recipes.tasks import get_task

    assert get_task("regression").default_names(np.zeros(4)) == ["target"]
    assert get_task("multi_label").default_names(np.zeros(4)) == ["0"]
    assert get_task("multi_label").default_names(np.zeros((4, 2))) == ["0", "1"]


def test_owned_training_loop_logs_accuracy_only_for_class_indices():
    import tensorflow as tf

    from tftransfer.recipes.training_loop import OwnedLoop

    strategy = tf.distribute.get_strategy()
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    for labels, loss, logged in (
        (
            np.arange(32) % 2,
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            {"loss", "accuracy"},
        ),
        (x[:, :2] * 3, keras.losses.MeanSquaredError(), {"loss"}),
    ):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile("adam", loss)
        batches = tf.data.Dataset.from_tensor_slices((x, labels)).batch(8)
        history = OwnedLoop(model, strategy).fit(batches, epochs=1, verbose=0)
        assert set(history.history) == logged
