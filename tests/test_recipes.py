"""FeatureExtraction and FineTuning on tiny models (CPU, a few steps)."""

import dataclasses
import gc
import json
import math
import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from data_fixtures import COLORS, image_bytes, image_folder
from data_fixtures import batchnorm_backbone as _image_backbone
from data_fixtures import batchnorm_network as _backbone

from tftransfer import Backbone, ConfigError, TrainingError, data
from tftransfer.recipes import (
    FeatureExtraction,
    FineTuning,
    classification_metrics,
    fine_tune,
)
from tftransfer.recipes.feature_cache import FeatureCache
from tftransfer.recipes.optimizers import DiscriminativeAdamW
from tftransfer.recipes.training_loop import steps_per_epoch


def _images(count=64, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, 8, 8, 3)).astype("float32") + shift
    y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype("int64")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


def _pixels(count=64, seed=0):
    """`LabeledData` of `count` 8x8 images, two balanced classes."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(count, 8, 8, 3), dtype="uint8")
    return data.from_arrays(pixels, np.arange(count) % 2, class_names=["a", "b"])


class _PhaseSteps(keras.callbacks.Callback):
    """Records the learning rate of every training step, by model name."""

    def __init__(self):
        super().__init__()
        self.rates: dict[str, list[float]] = {}

    def on_train_batch_begin(self, batch, logs=None):
        rate = float(np.asarray(self.model.optimizer.learning_rate))
        self.rates.setdefault(self.model.name, []).append(rate)

    def steps(self, name: str) -> int:
        return len(self.rates.get(name, []))


def _recipe(cls, tmp_path, backbone=None, **kwargs):
    settings = dict(
        cache_dir=tmp_path / "cache",
        run_dir=tmp_path / "run",
        strategy="default",
        head_epochs=2,
        verbose=0,
    )
    settings.update(kwargs)
    return cls(backbone or _backbone(), **settings)


def _cache_entries(tmp_path):
    return sorted(
        p.relative_to(tmp_path / "cache").as_posix()
        for p in (tmp_path / "cache").glob("*/*")
    )


def test_feature_extraction_model_equals_head_on_features(tmp_path):
    recipe = _recipe(FeatureExtraction, tmp_path, hidden_units=(8,), dropout=0.2)
    history = recipe.fit(_images(), _images(seed=1))
    assert len(history.history["loss"]) == 2
    data = _images(seed=2)
    features, _ = recipe.cached_features(data, "check").arrays()
    direct = recipe.model.predict(data, verbose=0)
    np.testing.assert_allclose(
        direct, recipe.head.predict(features, verbose=0), atol=1e-6
    )
    assert direct.shape == (64, 2)


def test_feature_cache_reused_on_rerun_and_recomputed_on_changes(tmp_path):
    _recipe(FeatureExtraction, tmp_path).fit(_images())
    first = _cache_entries(tmp_path)
    assert len(first) == 2  # train, and the validation batches held out of it
    manifest = next((tmp_path / "cache").glob("*/train/manifest.json"))
    written = manifest.stat().st_mtime_ns
    _recipe(FeatureExtraction, tmp_path, run_dir=tmp_path / "run2").fit(_images())
    assert _cache_entries(tmp_path) == first
    assert manifest.stat().st_mtime_ns == written
    _recipe(FeatureExtraction, tmp_path, run_dir=tmp_path / "run3").fit(
        _images(shift=0.5)
    )
    assert len(_cache_entries(tmp_path)) == 4
    _recipe(
        FeatureExtraction, tmp_path, _backbone(seed=7), run_dir=tmp_path / "run4"
    ).fit(_images())
    assert len(_cache_entries(tmp_path)) == 6
    assert not list((tmp_path / "cache").glob("*/.train.partial-*"))


def test_streamed_features_equal_in_memory_features(tmp_path):
    recipe = _recipe(FeatureExtraction, tmp_path)
    recipe.cache = FeatureCache(tmp_path / "cache", shard_bytes=200)
    cached = recipe.cached_features(_images(), "train")
    assert len(cached.shards) > 3 and cached.num_examples == 64
    in_memory = np.concatenate([f for f, _ in cached.dataset(16)])
    streamed_batches = list(cached.dataset(16, shuffle=True, seed=1, memory_budget=0))
    streamed = np.concatenate([f for f, _ in streamed_batches])
    assert [len(f) for f, _ in streamed_batches] == [16, 16, 16, 16]
    np.testing.assert_allclose(np.sort(streamed, axis=0), np.sort(in_memory, axis=0))


def test_evaluate_returns_metrics_as_numbers(tmp_path):
    recipe = _recipe(FeatureExtraction, tmp_path, head_epochs=1)
    recipe.fit(_images(), class_names=["left", "right"])
    metrics = recipe.evaluate(_images(seed=3))
    json.dumps(metrics)
    assert metrics["num_examples"] == 64
    assert set(metrics["per_class"]) == {"left", "right"}
    assert np.sum(metrics["confusion_matrix"]) == 64
    # With two classes, top-k is capped at k=1: top-2 of 2 would always be 1.
    assert metrics["k"] == 1
    assert metrics["top_k_accuracy"] == metrics["accuracy"]


def test_classification_metrics_values():
    metrics = classification_metrics(
        [0, 1, 1, 2],
        [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]],
        top_k=2,
    )
    assert metrics["accuracy"] == 0.75
    assert metrics["top_k_accuracy"] == 1.0
    assert metrics["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert metrics["per_class"]["1"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": 2 / 3,
        "support": 2,
    }
    assert metrics["per_class"]["0"]["precision"] == 0.5


def test_unfreeze_patterns_choose_the_trainable_variables(tmp_path):
    backbone = _backbone()
    recipe = _recipe(
        FineTuning,
        tmp_path,
        backbone,
        head_epochs=1,
        fine_tune_epochs=1,
        unfreeze=["conv_b"],
    )
    recipe.fit(_images())
    trainable = sorted(v.path for v in recipe.model.trainable_variables)
    assert trainable == [
        "head/logits/bias",
        "head/logits/kernel",
        "tiny/conv_b/bias",
        "tiny/conv_b/kernel",
    ]


def test_unfrozen_subset_is_the_only_backbone_change_in_phase_two(tmp_path):
    backbone = _backbone()
    snapshot = {}

    class Snapshot(keras.callbacks.Callback):
        """The backbone's weights as each phase starts: the last is phase 2."""

        def on_train_begin(self, logs=None):
            snapshot.update({v.path: v.numpy().copy() for v in backbone.weights})

    recipe = _recipe(
        FineTuning,
        tmp_path,
        backbone,
        head_epochs=1,
        fine_tune_epochs=2,
        unfreeze=0.5,
        callbacks=[Snapshot()],
    )
    recipe.fit(_images())
    changed = {
        v.path
        for v in backbone.weights
        if not np.array_equal(snapshot[v.path], v.numpy())
    }
    # unfreeze=0.5 of the 3 layers with weights: bn and conv_b (top 2); BN statistics stay.
    assert changed == {
        "tiny/bn/gamma",
        "tiny/bn/beta",
        "tiny/conv_b/kernel",
        "tiny/conv_b/bias",
    }


def test_batchnorm_statistics_update_only_when_asked(tmp_path):
    for train_batchnorm, expect_change in ((False, False), (True, True)):
        backbone = _backbone()
        bn = backbone.get_layer("bn")
        mean = bn.moving_mean.numpy().copy()
        recipe = _recipe(
            FineTuning,
            tmp_path / str(train_batchnorm),
            backbone,
            head_epochs=1,
            fine_tune_epochs=1,
            train_batchnorm=train_batchnorm,
        )
        recipe.fit(_images())
        assert (not np.array_equal(mean, bn.moving_mean.numpy())) == expect_change


def test_discriminative_adamw_scales_backbone_rate_and_skips_bias_decay():
    backbone_kernel = keras.Variable(np.ones((2,), "float32"), name="kernel")
    head_kernel = keras.Variable(np.ones((2,), "float32"), name="kernel")
    head_bias = keras.Variable(np.ones((2,), "float32"), name="bias")
    optimizer = DiscriminativeAdamW(
        0.1,
        backbone_variables=[backbone_kernel],
        backbone_lr_scale=0.1,
        weight_decay=0.5,
    )
    variables = [backbone_kernel, head_kernel, head_bias]
    optimizer.apply([tf.zeros(2)] * 3, variables)
    # Zero gradients: only weight decay moves the kernels (lr * decay), never the bias.
    np.testing.assert_allclose(backbone_kernel.numpy(), 1 - 0.01 * 0.5)
    np.testing.assert_allclose(head_kernel.numpy(), 1 - 0.1 * 0.5)
    np.testing.assert_allclose(head_bias.numpy(), 1.0)


def test_nan_loss_stops_with_error_naming_step_and_learning_rate(tmp_path):
    x = np.ones((32, 8, 8, 3), "float32")
    x[20] = np.nan
    labels = np.arange(32, dtype="int64") % 2
    data = tf.data.Dataset.from_tensor_slices((x, labels)).batch(8)
    recipe = _recipe(
        FineTuning,
        tmp_path,
        head_epochs=1,
        fine_tune_epochs=1,
        patience=None,
        learning_rate=1e-3,
        head_weight_decay=0.0,
    )
    with pytest.raises(
        TrainingError,
        match=r"at epoch 1, step [1-4]\. Lower learning_rate \(it is 0\.001; try "
        r"learning_rate=0\.0001\)",
    ):
        recipe.fit(data)


def test_fine_tune_one_call_trains_both_phases(tmp_path):
    recipe = fine_tune(
        _backbone(),
        _images(),
        _images(seed=1),
        fine_tune_epochs=2,
        head_epochs=1,
        cache_dir=tmp_path / "cache",
        run_dir=tmp_path / "run",
        strategy="default",
        verbose=0,
    )
    assert len(recipe.head_history.history["loss"]) == 1
    assert len(recipe.history.history["val_loss"]) == 2
    assert recipe.evaluate(_images(seed=2))["num_examples"] == 64
    assert (tmp_path / "run" / "logs" / "fine_tune" / "history.csv").exists()
    assert list((tmp_path / "run" / "checkpoints").glob("fine_tune-*/state.npz"))


def _saved_weights_backbone(tmp_path, builds):
    """A `Backbone` whose builder loads weights from a file in its handle dir."""
    from tftransfer import Backbone

    weights = tmp_path / "weights" / "tiny.weights.h5"
    weights.parent.mkdir()
    _backbone(seed=3).save_weights(weights)

    def builder(trainable):
        builds.append(trainable)
        model = _backbone(seed=9)
        model.load_weights(weights)
        return model

    return Backbone(
        name="tiny",
        handle=str(weights.parent),
        modality="image",
        feature_dim=6,
        image_size=(8, 8),
        builder=builder,
    )


def test_backbone_loading_weights_gives_features_of_those_weights(tmp_path):
    builds = []
    recipe = _recipe(
        FeatureExtraction, tmp_path, _saved_weights_backbone(tmp_path, builds)
    )
    features, _ = recipe.cached_features(_images(), "train").arrays()
    expected = np.concatenate(
        [_backbone(seed=3)(x, training=False) for x, _ in _images()]
    )
    np.testing.assert_allclose(features, expected, atol=1e-5)


def test_rerun_reuses_features_and_checkpoint_without_building_backbone(tmp_path):
    builds = []
    backbone = _saved_weights_backbone(tmp_path, builds)
    first = _recipe(FeatureExtraction, tmp_path, backbone)
    first.fit(_images(), _images(seed=1))
    assert len(builds) == 1
    rerun = _recipe(FeatureExtraction, tmp_path, backbone)
    history = rerun.fit(_images(), _images(seed=1))
    assert len(builds) == 1  # nothing built: cached features, finished head
    assert history.history == first.history.history
    expected = first.predict(_images(seed=2))  # computes and caches "test"
    np.testing.assert_allclose(rerun.predict(_images(seed=2)), expected, atol=1e-6)
    assert len(builds) == 1
    assert rerun.model.predict(_images(seed=2), verbose=0).shape == (64, 2)
    assert len(builds) == 2  # `model` is built when read


def test_predict_returns_probabilities_in_data_order(tmp_path):
    recipe = _recipe(FeatureExtraction, tmp_path, head_epochs=1)
    recipe.fit(_images())
    probabilities = recipe.predict(_images(seed=2))
    np.testing.assert_allclose(
        probabilities, recipe.model.predict(_images(seed=2), verbose=0), atol=1e-6
    )
    tuned = _recipe(FineTuning, tmp_path / "ft", head_epochs=1, fine_tune_epochs=1)
    tuned.fit(_images())
    np.testing.assert_allclose(
        tuned.predict(_images(seed=2)),
        tuned.model.predict(_images(seed=2), verbose=0),
        atol=1e-6,
    )


def test_fine_tuning_schedule_spans_every_step_of_split_data(tmp_path):
    # split() filters its source; its parts used to have an unknown
    # cardinality (-2), so the schedule counted 1 step per epoch and the
    # learning rate reached 0 after `fine_tune_epochs` steps.
    train, validation, _ = data.split(_pixels(), validation=0.25)
    assert train.num_examples == 48
    steps = _PhaseSteps()
    recipe = _recipe(
        FineTuning,
        tmp_path,
        _image_backbone(),
        head_epochs=1,
        fine_tune_epochs=2,
        batch_size=8,
        patience=None,
        callbacks=[steps],
    )
    recipe.fit(train, validation)
    steps_per_epoch = 48 // 8
    rates = steps.rates["fine_tuning"]
    assert len(rates) == 2 * steps_per_epoch
    assert rates[len(rates) // 2] > 0.0
    assert min(rates[1:]) > 0.0  # step 0 is the start of the warm-up
    schedule = recipe.model.optimizer.get_config()["learning_rate"]["config"]
    # Keras' CosineDecay warms up for `warmup_steps`, then decays over
    # `decay_steps`: together, every step of the phase.
    assert schedule["warmup_steps"] + schedule["decay_steps"] == 2 * steps_per_epoch


def test_steps_per_epoch_counts_unknown_cardinality_and_refuses_infinite():
    batches = tf.data.Dataset.range(10).filter(lambda i: i % 2 == 0).batch(2)
    assert int(batches.cardinality()) == tf.data.UNKNOWN_CARDINALITY
    assert steps_per_epoch(batches) == 3
    with pytest.raises(ConfigError, match="repeats forever"):
        steps_per_epoch(batches.repeat())


def test_changed_settings_train_again_in_the_same_run_dir(tmp_path):
    # The checkpoint folders are keyed by the settings (not the epochs): a
    # changed setting used to find the old, finished run and not train.
    def fit(**settings) -> _PhaseSteps:
        steps = _PhaseSteps()
        settings = {
            "head_epochs": 1,
            "fine_tune_epochs": 1,
            "patience": None,
            **settings,
        }
        recipe = _recipe(FineTuning, tmp_path, callbacks=[steps], **settings)
        recipe.fit(_images(), _images(seed=1))
        return steps

    def trained(steps: _PhaseSteps) -> tuple[bool, int]:
        # The head runs a whole epoch per step call: only whether it trained.
        return steps.steps("head") > 0, steps.steps("fine_tuning")

    assert trained(fit()) == (True, 4)
    assert trained(fit()) == (False, 0)  # the same settings: finished
    # Phase-2 settings leave the trained head (phase 1) alone.
    changed = fit(fine_tune_learning_rate=1e-3)
    assert trained(changed) == (False, 4)
    assert changed.rates["fine_tuning"][-1] > 1e-4  # the new rate, not restored
    # More epochs resume the run: only the new epoch trains.
    assert trained(fit(fine_tune_learning_rate=1e-3, fine_tune_epochs=2)) == (False, 4)
    assert trained(fit(dropout=0.5)) == (True, 4)


def test_default_run_dir_covers_every_setting():
    def run_dir(**settings):
        return FineTuning(_backbone(), strategy="default", **settings).run_dir

    assert run_dir(fine_tune_learning_rate=1e-3) != run_dir()
    assert run_dir(unfreeze=0.5) != run_dir()
    assert run_dir() == run_dir()


def test_unfreeze_fraction_reaches_into_nested_models(tmp_path):
    # `Backbone.build()` wraps the application in a model whose one weighted
    # layer is the whole network: a fraction used to unfreeze all of it.
    backbone = Backbone.from_keras_application(
        "MobileNetV2", weights=None, image_size=(32, 32)
    )
    recipe = _recipe(FineTuning, tmp_path, backbone, unfreeze=0.3)
    chosen = {id(v) for v in recipe.unfreeze()}
    layer = recipe.backbone_layer
    (application,) = [sub for sub in layer.layers if isinstance(sub, keras.Model)]
    weighted = [sub for sub in application.layers if sub.weights]
    top = weighted[-math.ceil(0.3 * len(weighted)) :]
    assert len(weighted) > 100
    assert chosen == {id(v) for sub in top for v in sub.trainable_weights}
    assert {id(v) for v in layer.trainable_weights} == chosen


def _fine_tune_steps(tmp_path, train) -> tuple[int, int]:
    """Training steps of (phase 1, phase 2) in one epoch each, batch 16."""
    steps = _PhaseSteps()
    recipe = _recipe(
        FineTuning,
        tmp_path,
        _image_backbone(),
        head_epochs=1,
        fine_tune_epochs=1,
        batch_size=16,
        patience=None,
        callbacks=[steps],
    )
    recipe.fit(train, _pixels(8, seed=1))
    return int(recipe.head.optimizer.iterations), steps.steps("fine_tuning")


def test_training_drops_the_last_partial_batch_but_keeps_one(tmp_path):
    # 40 examples, batches of 16: 2 full steps, the 8 left over are dropped
    # (every step has the same shape, as TPUs need), in both phases.
    assert _fine_tune_steps(tmp_path / "40", _pixels(40)) == (2, 2)
    # Less than one batch: that one smaller batch trains.
    assert _fine_tune_steps(tmp_path / "10", _pixels(10)) == (1, 1)
    # Of unknown size, the partial batch is dropped: a clear error, not 0 steps.
    unknown = dataclasses.replace(_pixels(10), num_examples=None)
    with pytest.raises(ConfigError, match="fewer examples than one global batch"):
        _fine_tune_steps(tmp_path / "unknown", unknown)


def test_replaced_image_file_computes_new_features(tmp_path):
    # Image folders are keyed by their paths and, since this test, by each
    # file's size and modification time: a replaced image was not noticed.
    folder = image_folder(tmp_path / "images")

    def features():
        recipe = _recipe(FeatureExtraction, tmp_path, _image_backbone())
        cached = recipe.cached_features(data.from_image_folder(folder), "train")
        return cached.directory, cached.arrays()[0]

    first_dir, first = features()
    assert features()[0] == first_dir  # unchanged files: the cache is reused
    image = os.path.join(folder, "cats", "0.png")
    before = os.stat(image)
    with open(image, "wb") as f:
        f.write(image_bytes("PNG", (24, 32), COLORS["fish"]))
    assert os.stat(image).st_size == before.st_size  # same name, same size
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    second_dir, second = features()
    assert second_dir != first_dir
    assert not np.allclose(first, second)


def test_private_features_of_non_chief_workers_are_removed(tmp_path, monkeypatch):
    # Non-chief workers (write=False) keep features in a temporary folder;
    # it used to be left behind.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    cache = FeatureCache(tmp_path / "cache")
    batches = [(np.ones((4, 3), "float32"), np.arange(4))]
    cached = cache.store("key", "train", batches, write=False)
    assert cached.num_examples == 4 and not (tmp_path / "cache").exists()
    assert list((tmp_path / "tmp").iterdir())
    del cached
    gc.collect()
    assert not list((tmp_path / "tmp").iterdir())

    def failing():
        yield batches[0]
        raise RuntimeError("feature pass failed")

    with pytest.raises(RuntimeError, match="feature pass failed"):
        cache.store("key", "train", failing(), write=False)
    assert not list((tmp_path / "tmp").iterdir())


def test_fine_tuning_with_cached_features_still_builds_the_backbone(
    image_model_path, tmp_path
):
    """A rerun finds phase 1's features cached; phase 2 must still unfreeze."""
    backbone = Backbone.from_hub(image_model_path)
    for run in ("first", "second"):
        recipe = _recipe(
            FineTuning,
            tmp_path,
            backbone=backbone,
            run_dir=tmp_path / run,
            head_epochs=1,
            fine_tune_epochs=1,
        )
        recipe.fit(_images())
        assert len(recipe.history.history["loss"]) == 1
    assert {w.name for w in recipe.unfreeze()} == {"kernel", "gamma", "beta"}
