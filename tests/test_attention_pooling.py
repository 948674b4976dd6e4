"""Learned attention pooling: the layer, and `pooling="attention"` in the
recipes (cache, head search, joined model, fine-tuning, export, YAML)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tftransfer
from tftransfer import Backbone, ConfigError, config, data
from tftransfer.recipes import FeatureExtraction, FeaturePooling, FineTuning
from tftransfer.recipes.attention_pooling import AttentionPooling, MaskChannel
from tftransfer.recipes.feature_cache import FeatureCache

POSITIONS, DIM = 8, 4
SEQ_LENGTH = 24


def _sequences(seed=0, count=3, length=6, dim=5):
    rng = np.random.default_rng(seed)
    sequence = rng.normal(size=(count, length, dim)).astype("float32")
    mask = np.ones((count, length), "int32")
    mask[0, 4:] = 0
    mask[1, 2:] = 0
    return sequence, mask


def _trained_like(layer, shape, seed=1):
    """`layer` built on `shape`, every weight random (the query too, which
    starts at zero), as after training."""
    layer.build(shape)
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(size=w.shape) for w in layer.get_weights()])
    return layer


def test_untrained_attention_pooling_is_the_masked_mean():
    sequence, mask = _sequences()
    pooled = AttentionPooling(num_heads=2)(sequence, mask=mask)
    mean = FeaturePooling("mean")(sequence, mask=mask)
    np.testing.assert_allclose(pooled, mean, atol=1e-6)
    # The same through the recipes' layout: the mask as the last channel.
    packed = MaskChannel()(sequence, mask=mask)
    np.testing.assert_array_equal(packed[..., -1], mask)
    channel = AttentionPooling(mask_channel=True)(packed)
    np.testing.assert_allclose(channel, mean, atol=1e-6)


def test_attention_pooling_does_not_attend_to_padding():
    sequence, mask = _sequences()
    layer = _trained_like(AttentionPooling(num_heads=2, value_dim=3), (None, 6, 5))
    changed = np.where(mask[..., None] > 0, sequence, 1e3).astype("float32")
    np.testing.assert_allclose(
        layer(sequence, mask=mask), layer(changed, mask=mask), atol=1e-5
    )
    # The weights are not uniform any more: not the mean of the values.
    values = layer.values(sequence)
    assert not np.allclose(
        layer(sequence, mask=mask), FeaturePooling("mean")(values, mask=mask)
    )
    # No position kept: zeros, not NaN.
    empty = layer(sequence, mask=np.zeros_like(mask)).numpy()
    np.testing.assert_array_equal(empty, np.zeros((3, 3)))


def test_attention_pooling_does_not_depend_on_the_order_of_positions():
    sequence, mask = _sequences()
    layer = _trained_like(AttentionPooling(mask_channel=True), (None, 6, 6))
    packed = MaskChannel()(sequence, mask=mask).numpy()
    order = np.random.default_rng(3).permutation(6)
    np.testing.assert_allclose(layer(packed), layer(packed[:, order]), atol=1e-5)
    # Rebuilt from its config, it computes the same.
    copy = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    copy.set_weights(layer.get_weights())
    assert copy.get_config()["mask_channel"] is True
    np.testing.assert_allclose(copy(packed), layer(packed), atol=1e-6)


def _planted(count, seed):
    """Sequences of `POSITIONS` noise positions where the label is carried
    by one position's content: the position marked +3 in channel 0 holds
    +-2 (the class) in channel 1, and one marked -3 holds the opposite, so
    the mean over positions holds nothing of the label."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, POSITIONS, DIM)).astype("float32")
    y = rng.integers(0, 2, count)
    for i, sign in enumerate(4.0 * y - 2.0):
        marked, opposite = rng.choice(POSITIONS, 2, replace=False)
        x[i, marked, :2] = 3.0, sign
        x[i, opposite, :2] = -3.0, -sign
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(32)


def _planted_recipe(tmp_path, pooling, **kwargs):
    settings = {
        "head_epochs": 15,
        "learning_rate": 0.03,
        "head_weight_decay": 0.0,
        "cache_dir": tmp_path / "cache",
        "run_dir": tmp_path / f"run-{pooling}",
        "strategy": "default",
        "verbose": 0,
    }
    return FeatureExtraction(
        keras.layers.Identity(name="positions"),
        pooling=pooling,
        **{**settings, **kwargs},
    )


def test_attention_learns_where_the_label_is_carried_by_one_position(tmp_path):
    train, validation = _planted(256, 0), _planted(128, 1)
    accuracy = {}
    for pooling in ("mean", "attention"):
        recipe = _planted_recipe(tmp_path, pooling)
        recipe.fit(train, validation)
        accuracy[pooling] = recipe.evaluate(validation, split="validation")["accuracy"]
    # Measured: mean 0.49, attention 0.99 (max 0.50, first 0.52).
    assert accuracy["mean"] <= 0.65
    assert accuracy["attention"] >= 0.95
    # The joined model (backbone, masked sequence, head) predicts what the
    # head does on the cached sequences.
    x = np.concatenate([x for x, _ in validation])
    np.testing.assert_allclose(
        recipe.model.predict(x, verbose=0),
        recipe.predict(validation, split="validation"),
        atol=1e-5,
    )
    assert recipe.head.layers[0].name == "attention_pooling"


def test_attention_caches_sequences_and_a_second_fit_reuses_them(tmp_path):
    train = _planted(64, 0)
    first = _planted_recipe(tmp_path, "attention", head_epochs=1)
    first.fit(train)
    (manifest,) = (tmp_path / "cache").glob("*/train/manifest.json")
    assert json.loads(manifest.read_text())["feature_shape"] == [POSITIONS, DIM + 1]
    features, _ = first.cache.lookup(manifest.parent.parent.name, "train").arrays()
    np.testing.assert_array_equal(features[..., -1], 1.0)  # No padding.
    # Another head (a user's, on the pooled [batch, dim]) on the same
    # features: no backbone pass, they come from the cache.
    custom = keras.layers.Dense(2, name="custom")
    second = _planted_recipe(tmp_path, "attention", head_epochs=1, head=custom)
    second.fit(train)
    assert second._pass_functions == {}
    pooling, dense = second.head.layers[:2]
    assert (pooling.name, dense.name) == ("attention_pooling", "custom")
    assert tuple(dense.kernel.shape) == (DIM, 2)
    # Mean-pooled features of the same data are cached apart.
    _planted_recipe(tmp_path, "mean", head_epochs=1).fit(train)
    shapes = sorted(
        json.loads(path.read_text())["feature_shape"]
        for path in (tmp_path / "cache").glob("*/train/manifest.json")
    )
    assert shapes == [[DIM], [POSITIONS, DIM + 1]]


def test_sequence_features_stream_from_disk_like_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(5, 3, 2)).astype("float32"), np.arange(5))] * 3
    cache = FeatureCache(tmp_path, shard_bytes=100)
    stored = cache.store("key", "train", batches)
    assert stored.feature_shape == (3, 2) and len(stored.shards) > 1
    assert stored.nbytes == 15 * 3 * 2 * 4
    streamed = stored.dataset(4, memory_budget=0)
    assert streamed.element_spec[0].shape.as_list() == [None, 3, 2]
    in_memory = stored.dataset(4)
    for (a, la), (b, lb) in zip(streamed, in_memory, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)


def test_a_manifest_with_only_feature_dim_is_still_read(tmp_path):
    features = np.arange(12, dtype="float32").reshape(4, 3)
    stored = FeatureCache(tmp_path).store("key", "train", [(features, [0, 1, 0, 1])])
    path = stored.directory / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["feature_dim"] = manifest.pop("feature_shape")[0]
    path.write_text(json.dumps(manifest))
    old = FeatureCache(tmp_path).lookup("key", "train")
    assert old.feature_shape == (3,) and old.nbytes == features.nbytes
    np.testing.assert_array_equal(old.arrays()[0], features)
    streamed = next(iter(old.dataset(4, memory_budget=0)))[0]
    np.testing.assert_array_equal(streamed, features)


def test_attention_on_a_vector_output_is_a_config_error(tmp_path):
    vectors = keras.layers.Dense(3, name="vectors")
    recipe = FeatureExtraction(
        vectors,
        pooling="attention",
        cache_dir=tmp_path / "cache",
        run_dir=tmp_path / "run",
        strategy="default",
        verbose=0,
    )
    train = tf.data.Dataset.from_tensor_slices(
        (np.ones((8, 4), "float32"), np.arange(8) % 2)
    ).batch(4)
    with pytest.raises(ConfigError, match="'vectors'.*shape \\(None, 3\\).*features="):
        recipe.fit(train)


def test_backbones_refuse_attention_which_the_recipes_learn():
    with pytest.raises(ConfigError, match="one of \\('mean', 'max'\\)"):
        tftransfer.backbone("keras:MobileNetV2", pooling="attention", weights=None)
    with pytest.raises(ConfigError, match="AttentionPooling"):
        FeaturePooling("attention")


def test_a_recipe_file_sets_attention_pooling_as_a_recipe_option(tmp_path):
    text = (
        "name: demo\nbackbone: {handle: small-bert-small}\n"
        "data: {format: csv, path: reviews.csv}\n"
        "recipe:\n  kind: fine_tuning\n"
        "  options: {features: sequence_output, pooling: attention}\n"
    )
    loaded = config.loads(text)
    arguments = {
        cls.kind: cls.argument_names() for cls in (FeatureExtraction, FineTuning)
    }
    config.check_recipe_options(loaded, arguments)
    options = config.recipe_arguments(loaded)
    assert options["pooling"] == "attention"
    options.update(cache_dir=tmp_path / "cache", strategy="default", verbose=0)
    recipe = FineTuning(keras.layers.Identity(), **options)
    assert recipe.settings["pooling"] == "attention"
    with pytest.raises(ConfigError, match="Expected pooling to be one of"):
        FineTuning(keras.layers.Identity(), pooling="attentive", verbose=0)


def test_text_attention_pads_bucketed_sequences_and_exports(bert_paths, tmp_path):
    words = ["the", "a", "guitar", "plays", "market", "fell", "news", "sport"]
    rng = np.random.default_rng(2)
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 20))) for _ in range(40)]
    labeled = data.from_arrays(texts, [int("guitar" in t) for t in texts])
    backbone = Backbone.from_hub_text(*bert_paths, seq_length=SEQ_LENGTH)
    recipe = FeatureExtraction(
        backbone,
        features="sequence_output",
        pooling="attention",
        head_epochs=2,
        learning_rate=0.01,
        head_weight_decay=0.0,
        batch_size=8,
        cache_dir=tmp_path / "cache",
        run_dir=tmp_path / "run",
        strategy="default",
        verbose=0,
    )
    recipe.fit(labeled, labeled)
    cached, _ = recipe.cached_features(labeled, "train").arrays()
    # Padded to seq_length, the mask channel is the tokens' input_mask, and
    # the values are those of a pass over the batches padded to seq_length.
    padded = recipe._batches(labeled)
    mask = np.concatenate([x["input_mask"] for x, _ in padded])
    assert cached.shape == (40, SEQ_LENGTH, 8 + 1)
    assert mask.sum(axis=1).min() < SEQ_LENGTH / 2  # Some batches were cut.
    np.testing.assert_array_equal(cached[..., -1], mask)
    expected = np.concatenate(
        [recipe._pass_function("float32")(x).numpy() for x, _ in padded]
    )
    np.testing.assert_allclose(cached, expected, atol=1e-5)
    # The joined model on prepared tokens predicts what the head does.
    joined = np.concatenate([recipe.model(x).numpy() for x, _ in padded])
    np.testing.assert_allclose(joined, recipe.predict(labeled), atol=1e-5)
    # Exported, it serves raw text as the model computes it.
    path = tftransfer.export(recipe, tmp_path / "topics")
    # It passed the TF Serving op check (export raises otherwise), unaided.
    card = json.loads((path / "model_card.json").read_text())
    assert card["serving_ops"]["allowed_by_override"] == []
    served = tf.saved_model.load(str(path)).signatures["serving_default"](
        text=tf.constant(texts[:4])
    )["probabilities"]
    np.testing.assert_allclose(served.numpy(), joined[:4], atol=1e-5)


class _PhaseEnds(keras.callbacks.Callback):
    """The attention query and the backbone's kernel at the end of every
    training phase, by model name."""

    def __init__(self):
        super().__init__()
        self.weights = {}

    def on_train_end(self, logs=None):
        self.weights[self.model.name] = {
            name: np.array(weight.numpy())
            for weight in self.model.weights
            for name in ("attention_pooling/query", "mix/kernel")
            if weight.path.endswith(name)
        }


def test_fine_tuning_trains_attention_pooling_with_head_then_backbone(tmp_path):
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential(
        [keras.Input((POSITIONS, DIM)), keras.layers.Dense(DIM, name="mix")],
        name="positions",
    )
    pretrained = backbone.get_layer("mix").kernel.numpy().copy()
    ends = _PhaseEnds()
    recipe = FineTuning(
        backbone,
        pooling="attention",
        head_epochs=2,
        fine_tune_epochs=1,
        learning_rate=0.03,
        head_weight_decay=0.0,
        fine_tune_learning_rate=1e-3,
        cache_dir=tmp_path / "cache",
        run_dir=tmp_path / "run",
        strategy="default",
        verbose=0,
        callbacks=[ends],
    )
    recipe.fit(_planted(128, 0), _planted(64, 1))
    head, tuned = ends.weights["head"], ends.weights["fine_tuning"]
    # Phase 1 moved the query from zero, the backbone frozen; phase 2 moved
    # both on.
    assert list(head) == ["attention_pooling/query"]
    assert np.abs(head["attention_pooling/query"]).max() > 0
    query = tuned["attention_pooling/query"]
    assert not np.allclose(query, head["attention_pooling/query"])
    assert not np.allclose(tuned["mix/kernel"], pretrained)
    metrics = recipe.evaluate(_planted(64, 1), split="validation")
    assert metrics["accuracy"] >= 0.6
