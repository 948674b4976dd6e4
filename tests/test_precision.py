"""The backbone pass's precision: the hardware's candidate, the guard, the cache."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tftransfer import data, precision
from tftransfer.backbones import Backbone
from tftransfer.errors import ConfigError
from tftransfer.precision import local_policy as real_local_policy  # conftest
from tftransfer.recipes import FeatureExtraction, FineTuning


@pytest.fixture
def bfloat16_cpu(monkeypatch):
    """This machine runs bfloat16 fast (conftest turns it off for other
    tests)."""
    monkeypatch.setattr(precision, "local_policy", lambda: "mixed_bfloat16")


def _backbone(offset: float = 0.0) -> Backbone:
    """A small image backbone, the same weights at every build; with an
    `offset`, its features lose everything below bfloat16's spacing at
    `offset`."""

    def builder(trainable):
        keras.utils.set_random_seed(4)
        return keras.Sequential(
            [
                keras.Input((8, 8, 3)),
                keras.layers.Conv2D(8, 3, activation="relu"),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(6),
                keras.layers.Lambda(lambda x: (x + offset) - offset),
            ]
        )

    return Backbone(
        name=f"tiny-{offset:g}",
        handle=f"test://tiny-{offset:g}",
        modality="image",
        feature_dim=6,
        image_size=(8, 8),
        builder=builder,
    )


def _images(count=96, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    images = (
        rng.uniform(0, 255, (count, 8, 8, 3))
        * (0.3 + 0.7 * labels)[:, None, None, None]
    )
    return data.from_arrays(images.astype(np.uint8), labels)


def _recipe(kind, tmp_path, backbone, **options):
    return kind(
        backbone,
        batch_size=16,
        head_epochs=2,
        cache_dir=tmp_path / "cache",
        run_dir=tmp_path / "run",
        **{"verbose": 0, **options},
    )


def _float32_features(recipe, labeled):
    return np.concatenate(
        [
            recipe._pass_function("float32")(x).numpy()
            for x, _ in recipe._batches(labeled)
        ]
    )


def _manifest_precision(recipe, split="train"):
    (manifest,) = (recipe.cache.directory).glob(f"*/{split}/manifest.json")
    return json.loads(manifest.read_text())["precision"]


def test_candidate_is_the_hardware_reduced_precision_for_auto(monkeypatch):
    strategy = tf.distribute.get_strategy()
    assert precision.candidate_policy("auto", strategy) == "float32"
    monkeypatch.setattr(precision, "local_policy", lambda: "mixed_float16")
    assert precision.candidate_policy("auto", strategy) == "mixed_float16"
    assert precision.candidate_policy("float32", strategy) == "float32"
    assert precision.candidate_policy("mixed_float16", strategy) == "mixed_float16"
    tpu = object.__new__(tf.distribute.TPUStrategy)
    assert precision.candidate_policy("auto", tpu) == "mixed_bfloat16"


@pytest.mark.skipif(
    bool(tf.config.list_physical_devices("GPU")), reason="reads the CPU only"
)
def test_local_policy_reads_the_cpu_flags(monkeypatch, tmp_path):
    flags = {
        "avx512_bf16": "mixed_bfloat16",
        "amx_bf16": "mixed_bfloat16",
        "avx2": "float32",
    }
    for flag, expected in flags.items():
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flag}\n")
        monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
        precision._cpu_has_bfloat16_units.cache_clear()
        assert real_local_policy() == expected
    precision._cpu_has_bfloat16_units.cache_clear()


def test_unknown_precision_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="precision='bf16'.*'float32'"):
        FeatureExtraction(_backbone(), precision="bf16")


def test_feature_drift_is_the_largest_cosine_distance():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    assert precision.feature_drift(a, a * 3) == pytest.approx(0.0)
    assert precision.feature_drift(a, a[:, ::-1]) == pytest.approx(1.0)
    assert precision.feature_drift(a, np.full_like(a, np.nan)) == float("inf")
    assert precision.feature_drift(a, np.zeros_like(a)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "reduced_seconds, full_seconds, drift_scale, expected, reason",
    [
        ([2.0, 0.5], [1.0, 1.0], 0.0, "mixed_bfloat16", "2.00x"),
        ([2.0, 1.0], [1.0, 1.05], 0.0, "float32", "less than 1.1x"),
        ([2.0, 0.5], [1.0, 1.0], 1.0, "float32", "drift"),
        ([2.0], [1.0], 0.0, "float32", "one batch"),
        # The later batches' total decides, not the fastest one.
        ([2.0, 0.5, 1.5], [1.0, 1.0, 1.0], 0.0, "float32", "1.00x"),
    ],
)
def test_guarded_choice(reduced_seconds, full_seconds, drift_scale, expected, reason):
    full = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    reduced = full + drift_scale * np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    choice = precision.guarded_choice(
        "mixed_bfloat16", [reduced], reduced_seconds, [full], full_seconds
    )
    assert choice.policy == expected
    assert reason in choice.reason


def test_auto_falls_back_to_float32_when_features_drift(tmp_path, bfloat16_cpu):
    labeled = _images()
    recipe = _recipe(FeatureExtraction, tmp_path, _backbone(offset=512.0))
    features, _ = recipe.cached_features(labeled, "train").arrays()
    choice = recipe.precision_choice
    assert choice.policy == "float32"
    assert choice.drift > precision.DRIFT_TOLERANCE
    assert "drift" in choice.reason
    assert _manifest_precision(recipe) == "float32"
    # float32's features (bfloat16 would have lost them below its spacing).
    np.testing.assert_allclose(features, _float32_features(recipe, labeled), atol=1e-4)


def test_auto_keeps_bfloat16_features_within_tolerance_and_caches_it(
    tmp_path, bfloat16_cpu, monkeypatch
):
    # Timings on a shared machine decide nothing here: any speed will do.
    monkeypatch.setattr(precision, "SPEED_MARGIN", 0.0)
    labeled = _images()
    recipe = _recipe(FeatureExtraction, tmp_path, _backbone())
    recipe.fit(labeled, _images(32, seed=1))
    assert recipe.precision_choice.policy == "mixed_bfloat16"
    assert recipe.precision_choice.drift <= precision.DRIFT_TOLERANCE
    assert _manifest_precision(recipe) == "mixed_bfloat16"
    features, _ = recipe.cached_features(labeled, "train").arrays()
    reference = _float32_features(recipe, labeled)
    assert precision.feature_drift(reference, features) <= precision.DRIFT_TOLERANCE
    # Row by row the same features, to bfloat16's precision (8 bits).
    scale = np.abs(reference).max(axis=1, keepdims=True)
    assert np.abs(features - reference).max() <= 2**-6 * scale.max()
    assert np.abs(features - reference).max() > 0  # computed in bfloat16
    # The model computes in float32 (it is what export serves).
    assert {layer.compute_dtype for layer in recipe.model._flatten_layers()} == {
        "float32"
    }
    # A rerun reads the cache, and its later passes keep its precision.
    rerun = _recipe(FeatureExtraction, tmp_path, _backbone())
    rerun.fit(labeled, _images(32, seed=1))
    assert rerun.precision_choice is None
    assert rerun._pass_policy == "mixed_bfloat16"
    # float32 asked for is another cache entry.
    explicit = _recipe(FeatureExtraction, tmp_path, _backbone(), precision="float32")
    assert explicit._feature_key(labeled) != recipe._feature_key(labeled)


def test_fine_tuning_trains_in_the_pass_precision_and_serves_float32(
    tmp_path, bfloat16_cpu, monkeypatch
):
    monkeypatch.setattr(precision, "SPEED_MARGIN", 0.0)
    recipe = _recipe(
        FineTuning,
        tmp_path,
        _backbone(),
        fine_tune_epochs=2,
        fine_tune_learning_rate=1e-2,
    )
    trained_policies, trained = [], []
    train_phase, serve = recipe._train_phase, recipe._serve_in_float32

    def recorded(phase, model, *args, **kwargs):
        if phase == "fine_tune":
            trained_policies.append(recipe.backbone_layer.dtype_policy.name)
        return train_phase(phase, model, *args, **kwargs)

    def served_from():
        layer = recipe.backbone_layer
        trained.extend((v.path, v.numpy(), v.trainable) for v in layer.weights)
        serve()

    monkeypatch.setattr(recipe, "_train_phase", recorded)
    monkeypatch.setattr(recipe, "_serve_in_float32", served_from)
    recipe.fit(_images(), _images(32, seed=1))
    assert trained_policies == ["mixed_bfloat16"]
    assert recipe.backbone_layer.dtype_policy.name == "float32"
    # The float32 layer holds the trained weights, variable by variable.
    served = recipe.backbone_layer.weights
    assert len(served) == len(trained)
    for variable, (path, value, trainable) in zip(served, trained, strict=True):
        assert variable.path.split("/")[-1] == path.split("/")[-1]
        np.testing.assert_array_equal(variable.numpy(), value)
        assert variable.trainable == trainable
    outputs = recipe.predict(_images(32, seed=1))
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, atol=1e-5)


def test_float16_fine_tuning_scales_the_loss(tmp_path):
    recipe = _recipe(
        FineTuning,
        tmp_path,
        _backbone(),
        precision="mixed_float16",
        fine_tune_epochs=1,
        fine_tune_learning_rate=1e-3,
    )
    optimizers = []
    compile_model = recipe._compile

    def recorded(model, optimizer, *args, **kwargs):
        optimizers.append(optimizer)
        return compile_model(model, optimizer, *args, **kwargs)

    recipe._compile = recorded
    recipe.fit(_images(), _images(32, seed=1))
    assert isinstance(optimizers[-1], keras.optimizers.LossScaleOptimizer)
    assert np.isfinite(recipe.history.history["loss"]).all()


def test_guard_reads_a_reshuffling_dataset_once(tmp_path, bfloat16_cpu):
    # Image i has every pixel i, so its pooled feature names it: each
    # example must be cached exactly once, whatever the shuffle's order.
    count = 96
    images = np.broadcast_to(
        np.arange(count, dtype=np.float32)[:, None, None, None], (count, 8, 8, 3)
    )
    batches = (
        tf.data.Dataset.from_tensor_slices((images, np.arange(count) % 2))
        .shuffle(count, seed=1)
        .batch(16)
    )

    def builder(trainable):
        return keras.Sequential(
            [keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D()]
        )

    backbone = Backbone(
        name="mean", handle="test://mean", modality="image", feature_dim=3,
        image_size=(8, 8), builder=builder,
    )  # fmt: skip
    recipe = _recipe(FeatureExtraction, tmp_path, backbone)
    features, labels = recipe.cached_features(batches, "train").arrays()
    assert recipe.precision_choice is not None  # the guard ran
    np.testing.assert_array_equal(np.sort(features[:, 0]), np.arange(count))
    np.testing.assert_array_equal(labels, features[:, 0].astype(int) % 2)


def test_tf_hub_backbones_compute_in_float32_without_a_probe(
    tmp_path, bfloat16_cpu, image_model_path, capsys
):
    backbone = Backbone.from_hub(image_model_path)
    recipe = _recipe(FeatureExtraction, tmp_path, backbone, verbose=2)
    recipe.cached_features(_images(), "train")
    assert recipe._pass_policy == "float32"
    assert recipe.precision_choice is None
    assert not recipe._pass_layers  # no second copy was loaded
    assert "TF Hub SavedModel computes in the dtypes" in capsys.readouterr().out
    assert _manifest_precision(recipe) == "float32"
