"""LoRA on TF Hub SavedModels (`tftransfer.recipes.hub_lora`).

Run by pytest, this file also starts itself as one of two
MultiWorkerMirroredStrategy workers: `python tests/test_hub_lora.py
<index> <ports> <SavedModel path> <out>`.
"""

import json
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from data_fixtures import with_lora_products
from hub_fixtures import BertEncoder, save_as_hub_model
from processes import finish, free_ports, join_cluster
from processes import start as start_process
from test_peft import _images
from test_peft import _recipe as peft_recipe

from tftransfer import Backbone, ConfigError, distribute
from tftransfer.deltas import load_delta, save_delta
from tftransfer.hub import HubLayer
from tftransfer.recipes import peft, training_loop
from tftransfer.recipes.heads import InferenceMode

# The weights of the image fixture's HubLayer, in its `weights` order.
WEIGHTS = ["beta", "gamma", "kernel", "moving_mean", "moving_variance"]


def _pretrained(path) -> dict:
    return {v.name: np.array(v.numpy()) for v in HubLayer(path).weights}


def _adapted_layer(path, rank=2, alpha=None, seed=0):
    """A trainable HubLayer "image" over `path` with LoRA on its kernel."""
    layer = HubLayer(path, trainable=True, name="image")
    factors = peft.enable_lora(
        peft.lora_layers(layer, layer.trainable_weights, "auto"), rank, alpha, seed
    )
    chosen = {id(v) for v in factors}
    for variable in layer.weights:
        variable.trainable = id(variable) in chosen
    return layer, factors


def _features(images, kernel, weights):
    """The image fixture's inference-mode computation with `kernel`."""
    x = tf.nn.conv2d(images, kernel, strides=1, padding="SAME")
    x = tf.nn.batch_normalization(
        x,
        weights["moving_mean"],
        weights["moving_variance"],
        weights["beta"],
        weights["gamma"],
        1e-3,
    )
    return tf.reduce_mean(tf.nn.relu(x), axis=[1, 2])


def test_factor_gradients_are_those_of_lora_on_the_kernel(image_model_path):
    layer, (a, b) = _adapted_layer(image_model_path, rank=2, alpha=4.0)
    assert [v.path for v in layer.trainable_weights] == [
        "image/kernel_lora_a",
        "image/kernel_lora_b",
    ]
    assert a.shape == (3, 3, 3, 2) and b.shape == (2, 4)
    np.testing.assert_array_equal(b.numpy(), 0.0)
    b.assign(np.random.default_rng(0).normal(size=(2, 4)))
    images = np.random.default_rng(1).normal(size=(5, 8, 8, 3)).astype("float32")
    weights = _pretrained(image_model_path)

    def loss_and_gradients(forward):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(forward() ** 2)
        return loss, tape.gradient(loss, [a.value, b.value])

    def reference():
        kernel = weights["kernel"] + 2.0 * tf.tensordot(a.value, b.value, 1)
        return _features(images, kernel, weights)

    expected_loss, expected = loss_and_gradients(reference)
    adapted = lambda: layer(images, training=False)  # noqa: E731
    for run in (lambda f: f(), tf.function(lambda f: f())):
        loss, gradients = run(lambda: loss_and_gradients(adapted))
        np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
        for gradient, want in zip(gradients, expected, strict=True):
            assert np.abs(want).max() > 0
            np.testing.assert_allclose(gradient, want, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory):
    """A BERT-style encoder (`hub_fixtures.BertEncoder`) of 10 words."""
    path = tmp_path_factory.mktemp("hub_lora") / "encoder"
    return save_as_hub_model(BertEncoder(vocab_size=10), str(path))


def test_embedding_tables_and_dict_inputs_of_a_bert_style_encoder(encoder_path):
    layer = HubLayer(encoder_path, trainable=True, output_key="pooled_output")
    targets = peft.lora_layers(layer, layer.trainable_weights, "auto")
    # No query or value kernel: "auto" takes every float matrix.
    assert [t.path.split("/", 1)[1] for t in targets] == [
        "layer_0_kernel",
        "layer_1_kernel",
        "pooler_kernel",
        "type_embeddings",
        "word_embeddings",
    ]
    chosen = peft.lora_layers(layer, layer.trainable_weights, ["embeddings"])
    factors = peft.enable_lora(chosen, 3, None, seed=1)
    for factor in factors[1::2]:
        factor.assign(np.full(factor.shape, 0.1, "float32"))
    inputs = {
        "input_word_ids": tf.constant([[2, 5, 7, 3]]),
        "input_mask": tf.constant([[1, 1, 1, 1]]),
        "input_type_ids": tf.constant([[0, 0, 1, 1]]),
    }
    with tf.GradientTape() as tape:
        pooled = layer(inputs)
    assert pooled.shape == (1, 8)
    word_a = tape.gradient(pooled, factors)[2]
    assert word_a.shape == (10, 3)
    # Only the rows of the words looked up get a gradient.
    assert sorted(np.flatnonzero(np.abs(word_a.numpy()).sum(axis=1))) == [2, 3, 5, 7]
    other = HubLayer(encoder_path, trainable=True)
    with pytest.raises(ConfigError, match=r"/pooler_kernel"):
        peft.lora_layers(other, other.trainable_weights, ["query"])
    with pytest.raises(ConfigError, match="float variable of two or more"):
        peft.lora_layers(other, other.trainable_weights[:0], "auto")


def _recipe(tmp_path, path, **kwargs):
    settings = dict(method="lora", lora_rank=2) | kwargs
    recipe = peft_recipe(tmp_path, Backbone.from_hub(path), **settings)
    # Keep the fine-tuned weights whatever the validation says.
    recipe._keep_frozen = lambda weights, reason: None
    return recipe


def _served(recipe) -> dict:
    return {v.name: np.array(v.numpy()) for v in recipe.backbone_layer.weights}


def test_recipe_trains_the_factors_and_serves_the_merged_kernel(
    image_model_path, tmp_path
):
    recipe = _recipe(tmp_path, image_model_path)
    recipe.fit(_images(), _images(32, seed=1))
    assert recipe.chosen == "fine_tuned"
    (position,) = recipe.lora_factors
    a, b, scale = recipe.lora_factors[position]
    assert position == WEIGHTS.index("kernel")
    assert a.shape == (3, 3, 3, 2) and b.shape == (2, 4) and scale == 1.0
    assert np.abs(b).max() > 0
    # The served backbone is a plain HubLayer: no factors, the product merged.
    assert isinstance(recipe.backbone_layer, HubLayer)
    assert not peft.lora_enabled(recipe.backbone_layer)
    assert not [w for w in recipe.model.weights if "lora" in w.path]
    pretrained, served = _pretrained(image_model_path), _served(recipe)
    merged = with_lora_products(recipe.lora_factors, list(pretrained.values()))
    assert list(served) == WEIGHTS
    for name, value in zip(WEIGHTS, merged, strict=True):
        np.testing.assert_allclose(served[name], value, atol=1e-6)
    changed = [n for n in WEIGHTS if not np.array_equal(served[n], pretrained[n])]
    assert changed == ["kernel"]  # BatchNorm statistics and the rest untouched
    # The served model computes the fixture with the merged kernel.
    images = next(iter(_images(8, seed=2)))[0]
    features = InferenceMode(recipe.backbone_layer)(images)
    expected = _features(images, merged[WEIGHTS.index("kernel")], served)
    np.testing.assert_allclose(features, expected, atol=1e-5)
    # The delta holds the factors, and reproduces the model on the source.
    folder = save_delta(recipe, tmp_path / "deltas")
    entries = json.loads((folder / "delta.json").read_text())["entries"]
    assert [e["kind"] for e in entries if e["path"].endswith("kernel")] == ["lora"]
    np.testing.assert_allclose(
        load_delta(folder)(images), recipe.model(images), atol=1e-5
    )


def _trained_weights(strategy, path):
    """Two epochs of SGD of a LoRA-adapted image HubLayer (BatchNorm in
    inference mode) and a linear head from fixed weights, under
    `strategy`, on a global batch of 16; its weights by path."""
    with strategy.scope():
        layer, _ = _adapted_layer(path)
        images = keras.Input((8, 8, 3))
        head = keras.layers.Dense(2, name="head")
        model = keras.Model(images, head(InferenceMode(layer)(images)))
        model.compile(
            keras.optimizers.SGD(0.5),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    rng = np.random.default_rng(3)
    for weight in model.weights:
        if "lora_b" in weight.path or "head" in weight.path:
            weight.assign(rng.normal(0, 0.5, weight.shape))
    training_loop.train(model, _images(32), strategy=strategy, epochs=2, verbose=0)
    return {w.path: np.array(w.numpy()) for w in model.weights}


def test_mirrored_two_cpus_matches_one_device(image_model_path):
    assert len(tf.config.list_logical_devices("CPU")) >= 2, "needs 2 logical CPUs"
    one = _trained_weights(tf.distribute.get_strategy(), image_model_path)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    two = _trained_weights(mirrored, image_model_path)
    assert list(one) == list(two)
    for key in one:
        np.testing.assert_allclose(one[key], two[key], atol=1e-5, err_msg=key)
    # The factors trained (a starts from the same values in every layer).
    _, (initial_a, _) = _adapted_layer(image_model_path)
    assert np.abs(one["image/kernel_lora_a"] - initial_a.numpy()).max() > 1e-3


class _Killed(Exception):
    pass


class _KillAfterFirstFineTuneEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if self.model.name == "fine_tuning":
            raise _Killed()


def test_resumes_after_a_kill_from_the_factors_checkpoint(image_model_path, tmp_path):
    killed = _recipe(
        tmp_path, image_model_path, callbacks=[_KillAfterFirstFineTuneEpoch()]
    )
    with pytest.raises(_Killed):
        killed.fit(_images(), _images(32, seed=1))
    factors = peft.lora_factors(killed.backbone_layer)
    seen = []

    class Start(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if self.model.name == "fine_tuning":
                seen.append(peft.lora_factors(resumed.backbone_layer))

    resumed = _recipe(tmp_path, image_model_path, callbacks=[Start()])
    resumed.fit(_images(), _images(32, seed=1))
    assert len(resumed.history.history["loss"]) == 2
    (position,) = factors
    for start, end in zip(seen[0][position][:2], factors[position][:2], strict=True):
        np.testing.assert_array_equal(start, end)
    assert not np.array_equal(resumed.lora_factors[position][1], factors[position][1])


def test_two_workers_match_one_device(image_model_path, tmp_path):
    ports = ",".join(map(str, free_ports(2)))
    finish(
        [
            start_process(__file__, i, ports, image_model_path, tmp_path)
            for i in range(2)
        ]
    )
    one = _trained_weights(tf.distribute.get_strategy(), image_model_path)
    for index in range(2):
        trained = np.load(tmp_path / f"worker{index}.npz")
        assert sorted(trained.files) == sorted(one)
        for key in one:
            np.testing.assert_allclose(trained[key], one[key], atol=1e-5, err_msg=key)


def _worker(index, ports, path, out_dir):
    join_cluster(index, ports)
    strategy = distribute.resolve_strategy("auto")
    assert isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    np.savez(f"{out_dir}/worker{index}.npz", **_trained_weights(strategy, path))


if __name__ == "__main__":
    _worker(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
