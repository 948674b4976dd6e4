"""Defaults that transfer: learning rates chosen from the data, early
stopping to the best weights, never worse than frozen, one set of defaults."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from data_fixtures import seeded_image_backbone

from tftransfer import config, data, defaults
from tftransfer.cli import run as cli_run
from tftransfer.errors import ConfigError
from tftransfer.recipes import FeatureExtraction, FineTuning, learning_rates
from tftransfer.recipes.callbacks import TrainingState
from tftransfer.recipes.grouped_adam import GroupedAdam


def _logistic_problem(seed=0, count=512, noise=0.1):
    """Two classes split by a random hyperplane in 16-d, labels `noise`
    flipped: cross-entropy falls from ln 2 under any fitting rate."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, 16)).astype("float32")
    y = (x @ rng.normal(size=16) > 0).astype("int64")
    flip = rng.random(count) < noise
    y[flip] = 1 - y[flip]
    return x, y


def _linear_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(2)])
    model.add(keras.layers.Activation("softmax"))
    return model


def _logits_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_range_test_picks_a_rate_where_the_loss_still_falls_and_restores_weights():
    x, y = _logistic_problem()
    batches = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(512, seed=0).batch(32)
    model = _linear_model()
    before = [w.numpy().copy() for w in model.weights]

    def compile_with(schedule):
        model.compile(
            keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy"
        )

    strategy = tf.distribute.get_strategy()
    test = learning_rates.find_learning_rate(
        model,
        compile_with,
        batches,
        strategy=strategy,
        steps=80,
        min_lr=1e-6,
        max_lr=10.0,
    )
    smoothed = np.asarray(test.smoothed)
    rates = np.asarray(test.rates)
    # It climbed before the end of the sweep (Adam at rate ~1 overshoots) ...
    assert test.edge_rate < 10.0
    assert test.learning_rate == pytest.approx(test.edge_rate / 5)
    # ... and the chosen rate lies in the falling part of the curve: past
    # the plateau of rates too small to train, before the loss turns up.
    plateau = smoothed[rates < 1e-4].mean()
    falling_from = rates[np.argmax(smoothed < 0.95 * plateau)]
    lowest = np.argmin(smoothed)
    turns_up = rates[lowest + np.argmax(smoothed[lowest:] > 1.1 * smoothed[lowest])]
    assert falling_from <= test.learning_rate <= turns_up
    assert 1e-4 < test.learning_rate < 1.0
    for old, new in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(old, new.numpy())


def test_range_test_ends_at_a_loss_that_is_not_finite():
    x, y = _logistic_problem()
    batches = tf.data.Dataset.from_tensor_slices((x * 1e3, y)).batch(32)
    model = _linear_model()

    def compile_with(schedule):
        model.compile(keras.optimizers.SGD(schedule), "sparse_categorical_crossentropy")

    test = learning_rates.find_learning_rate(
        model,
        compile_with,
        batches,
        strategy=tf.distribute.get_strategy(),
        steps=50,
        min_lr=1e-3,
        max_lr=1e6,
    )
    assert len(test.losses) < 50  # stopped early
    assert test.learning_rate < 1e6 / 5
    assert all(np.isfinite(w.numpy()).all() for w in model.weights)


def test_head_search_tries_rates_then_decays_and_keeps_the_lowest_loss():
    losses = {
        (1e-3, 0.0): 0.9,
        (1e-2, 0.0): 0.4,
        (1e-1, 0.0): 0.7,
        (1e-2, 1e-4): 0.3,
        (1e-2, 1e-3): float("nan"),
    }
    rounds = []

    def train_candidates(candidates):
        rounds.append(list(candidates))
        return [losses[candidate] for candidate in candidates]

    choice = learning_rates.search_head(
        train_candidates, (1e-3, 1e-2, 1e-1), (0.0, 1e-4, 1e-3)
    )
    assert (choice.learning_rate, choice.weight_decay) == (1e-2, 1e-4)
    # Two rounds: the rates, then the decays at the best rate (none twice).
    assert rounds == [list(losses)[:3], list(losses)[3:]]


def test_grouped_adam_refuses_a_variable_in_no_group():
    heads = [keras.layers.Dense(2) for _ in range(2)]
    for head in heads:
        head.build((None, 3))
    optimizer = GroupedAdam([(heads[0].trainable_variables, 1e-3)])
    with pytest.raises(ConfigError, match="in no group"):
        optimizer.build(heads[0].trainable_variables + heads[1].trainable_variables)


def _dense_head(width: int, seed: int) -> keras.Sequential:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((width,)), keras.layers.Dense(2)])


def _heads_in_one_model(width: int, rates, seed: int):
    """Dense heads with the same initial weights, side by side in one model
    compiled with `GroupedAdam` (one rate each), as the head search does."""
    heads = [_dense_head(width, seed) for _ in rates]
    features = keras.Input((width,))
    joint = keras.Model(
        features,
        [keras.Sequential([h], name=f"c{i}")(features) for i, h in enumerate(heads)],
    )
    joint.compile(
        GroupedAdam(
            [(h.trainable_variables, r) for h, r in zip(heads, rates, strict=True)]
        ),
        [_logits_loss()] * len(heads),
    )
    return joint, heads


def test_grouped_adam_trains_each_group_as_its_own_adam_would():
    x, y = _logistic_problem(noise=0.5)
    rates = (1e-3, 3e-2)

    alone = []
    for rate in rates:
        model = _dense_head(x.shape[1], seed=1)
        model.compile(keras.optimizers.Adam(rate), _logits_loss())
        model.fit(x, y, epochs=3, batch_size=32, shuffle=False, verbose=0)
        alone.append(model.get_weights())
    joint, heads = _heads_in_one_model(x.shape[1], rates, seed=1)
    joint.fit(x, [y, y], epochs=3, batch_size=32, shuffle=False, verbose=0)
    for h, weights in zip(heads, alone, strict=True):
        for got, expected in zip(h.get_weights(), weights, strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_candidates_trained_together_each_keep_their_best_epoch():
    # Validation labels are the opposite of the training labels: every
    # head's validation loss is lowest early, then rises.
    x, y = _logistic_problem(noise=0.0)
    joint, heads = _heads_in_one_model(x.shape[1], (0.01, 0.1), seed=0)
    history = []

    def validation_losses():
        losses = [float(_logits_loss()(1 - y, h.predict(x, verbose=0))) for h in heads]
        history.append((losses, [h.get_weights() for h in heads]))
        return losses

    train = tf.data.Dataset.from_tensor_slices((x, (y, y))).batch(64)
    learning_rates.train_to_best_epochs(
        joint,
        heads,
        train,
        validation_losses,
        strategy=tf.distribute.get_strategy(),
        epochs=30,
        patience=3,
    )
    assert len(history) < 30  # stopped early, once neither improved
    for index, head in enumerate(heads):
        best = min(range(len(history)), key=lambda e: history[e][0][index])
        for got, expected in zip(
            head.get_weights(), history[best][1][index], strict=True
        ):
            np.testing.assert_array_equal(got, expected)


def test_early_stopping_ends_on_the_best_weights(tmp_path):
    # Validation labels are the opposite of the training labels: the
    # validation loss is lowest after the first epoch, then rises.
    x, y = _logistic_problem(noise=0.0)
    model = _linear_model()
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(
            (logs["val_loss"], [w.numpy().copy() for w in model.weights])
        )
    )
    state = TrainingState(tmp_path, patience=3)
    history = model.fit(
        x,
        y,
        validation_data=(x, 1 - y),
        epochs=50,
        batch_size=64,
        callbacks=[record, state],
        verbose=0,
    )
    assert len(history.epoch) < 50  # stopped early
    best_loss, best_weights = min(seen, key=lambda item: item[0])
    assert best_loss < seen[-1][0]
    for expected, weight in zip(best_weights, model.weights, strict=True):
        np.testing.assert_array_equal(expected, weight.numpy())


def _colour_images(count, seed):
    """Two classes that differ in their mean colour: easy for frozen features."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    pixels = rng.integers(0, 128, size=(count, 8, 8, 3)).astype("float32")
    pixels[labels == 1, ..., 0] += 100
    return data.from_arrays(pixels.astype("uint8"), labels, class_names=["a", "b"])


def test_default_head_learning_rate_is_chosen_and_recorded(tmp_path, capsys):
    recipe = FeatureExtraction(
        seeded_image_backbone("tiny", conv_filters=8),
        run_dir=tmp_path / "run",
        cache_dir=tmp_path / "cache",
        strategy="default",
        head_epochs=30,
        verbose=2,
    )
    recipe.fit(_colour_images(64, 0), _colour_images(32, 1))
    assert recipe.tuned["learning_rate"] in defaults.HEAD_LEARNING_RATES
    assert recipe.tuned["head_weight_decay"] in defaults.HEAD_WEIGHT_DECAYS
    assert "chosen by validation loss" in capsys.readouterr().out
    assert recipe.evaluate(_colour_images(32, 2))["accuracy"] >= 0.9
    # The choice is kept in the run folder: a rerun does not search again.
    (saved,) = (tmp_path / "run" / "checkpoints").glob("head-search-*.json")
    assert json.loads(saved.read_text())["chosen"] == [
        recipe.tuned["learning_rate"],
        recipe.tuned["head_weight_decay"],
    ]


@pytest.mark.parametrize("memory_budget", [2**30, 1], ids=["in_memory", "streamed"])
def test_weight_decay_alone_is_searched_at_a_fixed_rate(tmp_path, memory_budget):
    # A fixed rate: a first round of one candidate (the first decay), then
    # the others. Streamed features are scored through the distributed
    # step (as under a strategy), in-memory ones by one call on the arrays.
    recipe = FeatureExtraction(
        seeded_image_backbone("tiny", conv_filters=8),
        run_dir=tmp_path / "run",
        cache_dir=tmp_path / "cache",
        learning_rate=1e-2,
        head_epochs=5,
        memory_budget=memory_budget,
        verbose=0,
    )
    rounds = []
    search = learning_rates.search_head

    def recorded(train_candidates, *args):
        def counted(candidates):
            rounds.append(len(candidates))
            return train_candidates(candidates)

        return search(counted, *args)

    learning_rates.search_head = recorded
    try:
        recipe.fit(_colour_images(64, 0), _colour_images(32, 1))
    finally:
        learning_rates.search_head = search
    assert rounds == [1, len(defaults.HEAD_WEIGHT_DECAYS) - 1]
    assert set(recipe.tuned) == {"head_weight_decay"}
    assert recipe.tuned["head_weight_decay"] in defaults.HEAD_WEIGHT_DECAYS
    # The path the search scored the candidates by.
    assert (recipe._validation_arrays() is None) == (memory_budget == 1)


def test_fit_without_validation_holds_out_part_of_the_training_data(tmp_path, capsys):
    recipe = FeatureExtraction(
        seeded_image_backbone("tiny", conv_filters=8),
        run_dir=tmp_path / "run",
        cache_dir=tmp_path / "cache",
        strategy="default",
        head_epochs=3,
        learning_rate=1e-2,
        head_weight_decay=0.0,
        verbose=2,
    )
    recipe.fit(_colour_images(60, 0))
    assert "holding out 6 of the 60 training examples" in capsys.readouterr().out
    assert "val_loss" in recipe.history.history
    # 54 examples train: one full batch of 32 an epoch (the rest is dropped).
    assert int(recipe.head.optimizer.iterations) == 3


def test_fine_tuning_that_hurts_keeps_and_exports_the_frozen_model(tmp_path):
    backbone = seeded_image_backbone("tiny", conv_filters=8)
    train, validation = _colour_images(64, 0), _colour_images(32, 1)
    recipe = FineTuning(
        backbone,
        run_dir=tmp_path / "run",
        cache_dir=tmp_path / "cache",
        strategy="default",
        head_epochs=20,
        fine_tune_epochs=2,
        # A rate that wrecks the backbone: fine-tuning must not be kept.
        fine_tune_learning_rate=50.0,
        backbone_lr_scale=1.0,
        clipnorm=None,
        verbose=0,
    )
    recipe.fit(train, validation)
    assert recipe.chosen == "frozen"
    assert recipe.choices["chosen"] == "frozen"
    # The kept model is the frozen one: pretrained backbone, phase-1 head.
    pretrained = backbone.build(trainable=False)
    test = _colour_images(16, 2)
    features, _ = recipe.cached_features(test, "check").arrays()
    expected = recipe.head.predict(features, verbose=0)
    np.testing.assert_allclose(recipe.predict(test), expected, atol=1e-5)
    for weight, original in zip(
        recipe.backbone_layer.weights, pretrained.weights, strict=True
    ):
        np.testing.assert_array_equal(weight.numpy(), original.numpy())


def test_fine_tuning_that_helps_is_kept(tmp_path):
    recipe = FineTuning(
        seeded_image_backbone("tiny", conv_filters=8),
        run_dir=tmp_path / "run",
        cache_dir=tmp_path / "cache",
        strategy="default",
        head_epochs=2,
        learning_rate=1e-3,
        head_weight_decay=0.0,
        fine_tune_epochs=4,
        verbose=0,
    )
    recipe.fit(_colour_images(64, 0), _colour_images(32, 1))
    assert recipe.chosen == "fine_tuned"
    # Within the range test: from 1e-6 to a fifth of its last rate, 0.1.
    assert 1e-6 <= recipe.tuned["fine_tune_learning_rate"] <= 0.1 / 5


def test_python_yaml_and_cli_share_one_set_of_defaults(tmp_path):
    backbone = seeded_image_backbone("tiny", conv_filters=8)
    recipe_file = config.loads(
        "name: t\nbackbone: {handle: tiny}\n"
        "data: {format: csv, path: a.csv}\nrecipe: {kind: fine_tuning}\n"
    )
    from_yaml = cli_run.build_recipe(recipe_file, backbone, tmp_path / "run")
    from_python = FineTuning(backbone, run_dir=from_yaml.run_dir)
    python_settings = from_python.settings
    assert from_yaml.settings == python_settings
    assert python_settings["learning_rate"] == defaults.AUTO
    assert python_settings["fine_tune_learning_rate"] == defaults.AUTO
    assert python_settings["head_epochs"] == defaults.HEAD_EPOCHS
    assert python_settings["fine_tune_epochs"] == defaults.FINE_TUNE_EPOCHS
    assert python_settings["dropout"] == defaults.DROPOUT


def test_learning_rates_refuse_words_other_than_auto():
    with pytest.raises(ValueError, match="learning_rate='auto'"):
        FeatureExtraction(
            seeded_image_backbone("tiny", conv_filters=8), learning_rate="fast"
        )
    with pytest.raises(ValueError, match="fine_tune_learning_rate='auto'"):
        FineTuning(
            seeded_image_backbone("tiny", conv_filters=8), fine_tune_learning_rate=0
        )
