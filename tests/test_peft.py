"""FineTuning's parameter-efficient methods: LoRA, BitFit and head-only."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from data_fixtures import batchnorm_backbone as _backbone
from data_fixtures import batchnorm_network as _network
from data_fixtures import tiny_bert_preset, with_lora_products

from tftransfer import Backbone, ConfigError
from tftransfer.config import RecipeConfig
from tftransfer.recipes import FineTuning, peft

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"]


def _images(count=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, 8, 8, 3)).astype("float32")
    y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype("int64")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


def _recipe(tmp_path, backbone=None, **kwargs):
    """A quiet `FineTuning` of `backbone` (default: `batchnorm_backbone()`)
    at fixed rates: one head epoch, two phase-2 epochs."""
    settings = dict(
        cache_dir=tmp_path / "cache",
        run_dir=tmp_path / "run",
        strategy="default",
        head_epochs=1,
        fine_tune_epochs=2,
        fine_tune_learning_rate=3e-2,
        # Fixed head rates: no head search (not what these tests check).
        learning_rate=1e-2,
        head_weight_decay=0.0,
        verbose=0,
    )
    settings.update(kwargs)
    return FineTuning(backbone or _backbone(), **settings)


def _source_weights():
    return {w.path.split("/", 1)[1]: w.numpy() for w in _network().weights}


def _served_backbone_weights(recipe):
    return {w.path.split("/", 1)[1]: w.numpy() for w in recipe.backbone_layer.weights}


def _fit(recipe):
    recipe.fit(_images(), _images(32, seed=1))
    # The comparison with the frozen model may keep either: these tests
    # check what phase 2 trained.
    return recipe


def test_bitfit_changes_only_biases_and_norms_and_keeps_batchnorm_statistics(
    tmp_path,
):
    recipe = _fit_keeping_tuned(_recipe(tmp_path, method="bitfit"))
    source, tuned = _source_weights(), _served_backbone_weights(recipe)
    changed = sorted(k for k in source if not np.array_equal(source[k], tuned[k]))
    assert changed == ["bn/beta", "bn/gamma", "conv_a/bias", "conv_b/bias"]


def _fit_keeping_tuned(recipe):
    """Fits, then keeps the fine-tuned weights whatever the validation says."""
    recipe._keep_frozen = lambda weights, reason: None
    return _fit(recipe)


def test_lora_trains_factors_and_serves_merged_kernels_without_lora(tmp_path):
    recipe = _fit_keeping_tuned(_recipe(tmp_path, method="lora", lora_rank=2))
    assert recipe.chosen == "fine_tuned"
    # Both convolutions adapted (no attention layers: "auto" takes all).
    assert sorted(recipe.lora_factors) == [0, 6]
    a, b, scale = recipe.lora_factors[0]
    assert a.shape == (3, 3, 3, 2) and b.shape == (2, 4) and scale == 1.0
    assert np.abs(b).max() > 0
    # The served model has no LoRA left: plain kernels, no factors.
    assert not peft.lora_enabled(recipe.backbone_layer)
    assert not [w for w in recipe.model.weights if "lora" in w.path]
    source, tuned = _source_weights(), _served_backbone_weights(recipe)
    # Only the kernels changed, by exactly the factors' product.
    changed = sorted(k for k in source if not np.array_equal(source[k], tuned[k]))
    assert changed == ["conv_a/kernel", "conv_b/kernel"]
    merged = with_lora_products(
        recipe.lora_factors, [w.numpy() for w in _network().weights]
    )
    for weight, value in zip(recipe.backbone_layer.weights, merged, strict=True):
        np.testing.assert_allclose(weight.numpy(), value, atol=1e-6)


def test_lora_trains_a_small_share_of_the_parameters(tmp_path):
    recipe = _recipe(tmp_path, method="lora", lora_rank=1)
    recipe._keep_frozen = lambda weights, reason: None
    shares = []

    class Share(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            count = lambda ws: sum(int(np.prod(w.shape)) for w in ws)  # noqa: E731
            shares.append(
                count(self.model.trainable_weights) / count(self.model.weights)
            )

    recipe.callbacks = [Share()]
    _fit(recipe)
    # Phase 2: LoRA factors (3*3*3*1 + 1*4 + 3*3*4*1 + 1*6 = 73) and the
    # head (6*2 + 2 = 14) of 73 + 14 + 112 + 16 + 222 backbone weights.
    assert shares[-1] == pytest.approx((73 + 14) / (73 + 14 + 112 + 16 + 222))


def test_lora_and_bitfit_leave_batchnorm_statistics_alone(tmp_path):
    source = _source_weights()
    for method in ("lora", "bitfit"):
        recipe = _fit_keeping_tuned(_recipe(tmp_path / method, method=method))
        tuned = _served_backbone_weights(recipe)
        for key in ("bn/moving_mean", "bn/moving_variance"):
            np.testing.assert_array_equal(tuned[key], source[key])


def test_head_method_trains_the_head_only(tmp_path):
    recipe = _fit(_recipe(tmp_path, method="head"))
    assert recipe.chosen == "frozen"
    assert recipe.history is recipe.head_history
    source, tuned = _source_weights(), _served_backbone_weights(recipe)
    assert all(np.array_equal(source[k], tuned[k]) for k in source)
    assert not (tmp_path / "run" / "logs" / "fine_tune").exists()


class _Killed(Exception):
    pass


class _KillAfterFirstFineTuneEpoch(keras.callbacks.Callback):
    """Stops the process's training as a kill would, after the checkpoint
    of phase 2's first epoch is written."""

    def on_epoch_end(self, epoch, logs=None):
        if self.model.name == "fine_tuning":
            raise _Killed()


def test_lora_resumes_after_a_kill_from_its_factors_checkpoint(tmp_path):
    # Rank 8: its second epoch still improves on the first (early stopping
    # would restore the first, which this test does not check).
    killed = _recipe(
        tmp_path,
        method="lora",
        lora_rank=8,
        callbacks=[_KillAfterFirstFineTuneEpoch()],
    )
    with pytest.raises(_Killed):
        _fit(killed)
    factors = peft.lora_factors(killed.backbone_layer)
    seen = []

    class Start(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if self.model.name == "fine_tuning":
                seen.append(peft.lora_factors(killed_layer()))

    resumed = _recipe(tmp_path, method="lora", lora_rank=8, callbacks=[Start()])
    killed_layer = lambda: resumed.backbone_layer  # noqa: E731
    _fit_keeping_tuned(resumed)
    # Phase 2 went on from the killed run's first epoch: its factors, one
    # more epoch, and a history of both.
    assert len(resumed.history.history["loss"]) == 2
    for position, (a, b, _) in factors.items():
        np.testing.assert_array_equal(seen[0][position][0], a)
        np.testing.assert_array_equal(seen[0][position][1], b)
        assert not np.array_equal(resumed.lora_factors[position][1], b)


def test_lora_on_bert_targets_query_and_value_by_default(tmp_path):
    pytest.importorskip("keras_hub")
    path = tiny_bert_preset(
        str(tmp_path / "bert"),
        VOCAB,
        seed=2,
        num_layers=2,
        num_heads=1,
        hidden_dim=8,
        intermediate_dim=16,
    )
    layer = Backbone.from_keras_hub(path, seq_length=8).build(trainable=True)
    chosen = peft.lora_layers(layer, layer.trainable_weights, "auto")
    paths = sorted(peft.variable_path(sub._kernel).split("/", 1)[1] for sub in chosen)
    assert [p.rsplit("/", 2)[-2] for p in paths] == ["query", "query", "value", "value"]
    factors = peft.enable_lora(chosen, 4, 8)
    assert {tuple(f.shape) for f in factors} == {(8, 1, 4), (4, 8)}
    assert len(peft.lora_factors(layer)) == 4


def test_bad_methods_and_options_raise_config_errors_naming_them(tmp_path):
    with pytest.raises(ConfigError, match="method='prefix'"):
        _recipe(tmp_path, method="prefix")
    with pytest.raises(ConfigError, match="lora_rank=0"):
        _recipe(tmp_path, method="lora", lora_rank=0)
    with pytest.raises(ConfigError, match="lora_targets='query'"):
        _recipe(tmp_path, method="lora", lora_targets="query")
    with pytest.raises(ConfigError, match="needs a tftransfer.Backbone"):
        FineTuning(_network(), method="lora", strategy="default")
    recipe = _recipe(tmp_path, method="lora", lora_targets=["attention"])
    with pytest.raises(ConfigError, match=r"conv_a/kernel"):
        _fit(recipe)


def test_recipe_file_options_select_the_method():
    config = RecipeConfig(
        kind="fine_tuning", options={"method": "lora", "lora_rank": 4}
    )
    recipe = FineTuning(_backbone(), strategy="default", **config.options)
    assert recipe.settings["method"] == "lora"
    assert recipe.settings["lora_rank"] == 4
    assert "method" in FineTuning.argument_names()


def test_auto_rank_is_4_on_convolutions_and_8_on_attention(tmp_path):
    layer = _network()
    convolutions = peft.lora_layers(layer, layer.trainable_weights, "auto")
    assert [type(t).__name__ for t in convolutions] == ["Conv2D", "Conv2D"]
    assert peft.lora_rank(convolutions, "auto") == 4
    assert peft.lora_rank(convolutions, 6) == 6
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="query")])
    assert peft.lora_rank(peft.lora_layers(dense, dense.weights, "auto"), "auto") == 8
    recipe = _fit(_recipe(tmp_path, method="lora"))
    (a, b, _), *_ = recipe.lora_factors.values()
    assert a.shape[-1] == 4 and b.shape[0] == 4
