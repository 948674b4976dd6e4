"""Recipes under careless or hostile use: mismatched classes, bad labels,
leftovers of killed runs, two processes on one run folder, NaN advice."""

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from data_fixtures import seeded_image_backbone

from tftransfer import DataError, TrainingError, data
from tftransfer.recipes import FeatureExtraction, FineTuning
from tftransfer.recipes.feature_cache import FeatureCache
from tftransfer.recipes.run_lock import RunLock

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _backbone():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6, name="features")], name="tiny"
    )


def _recipe(tmp_path, cls=FeatureExtraction, backbone=None, **kwargs):
    settings = dict(
        cache_dir=tmp_path / "cache",
        run_dir=tmp_path / "run",
        strategy="default",
        head_epochs=20,
        learning_rate=3e-2,
        head_weight_decay=0.0,
        verbose=0,
    )
    return cls(backbone or _backbone(), **{**settings, **kwargs})


def _coloured(count, seed, names=("a", "b", "c")):
    """`count` 8x8 images of three classes (red, green or blue ones),
    labelled in the order `names`: the class of an image is fixed, only its
    label number follows `names`."""
    rng = np.random.default_rng(seed)
    classes = np.arange(count) % 3
    pixels = rng.integers(0, 100, size=(count, 8, 8, 3))
    pixels[np.arange(count), :, :, classes] += 150
    labels = np.array([list(names).index("abc"[c]) for c in classes])
    return data.from_arrays(pixels.astype("uint8"), labels, class_names=list(names))


def _labeled_batches(x, y, batch=8):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def test_splits_with_other_class_orders_are_matched_by_name(tmp_path):
    recipe = _recipe(tmp_path, backbone=seeded_image_backbone("mean_colour"))
    recipe.fit(_coloured(60, 0), _coloured(30, 1, names=("c", "a", "b")))
    same = recipe.evaluate(_coloured(30, 2))
    reordered = recipe.evaluate(_coloured(30, 2, names=("b", "c", "a")), split="other")
    assert same["accuracy"] == reordered["accuracy"] >= 0.9
    assert reordered["confusion_matrix"] == same["confusion_matrix"]


def test_a_split_with_an_unknown_class_is_refused(tmp_path):
    recipe = _recipe(tmp_path, backbone=seeded_image_backbone("mean_colour"))
    with pytest.raises(DataError, match=r"validation data has classes .*'d'"):
        # The blue images named "d".
        unknown = dataclasses.replace(_coloured(30, 1), class_names=["a", "b", "d"])
        recipe.fit(_coloured(60, 0), unknown)


def test_labels_outside_the_classes_are_refused(tmp_path):
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.arange(32) % 2
    y[5] = 7
    recipe = _recipe(tmp_path)
    with pytest.raises(
        DataError, match=r"labels outside 0\.\.1 .*label 7 at example 5"
    ):
        recipe.fit(
            _labeled_batches(x, y),
            _labeled_batches(x, np.arange(32) % 2),
            class_names=["a", "b"],
        )


def test_partial_features_of_a_killed_process_are_removed_and_live_ones_kept(
    tmp_path,
):
    cache = FeatureCache(tmp_path)
    key_dir = tmp_path / "key"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = key_dir / f".train.partial-{dead.pid}@{host}@x1"
    live = key_dir / f".train.partial-{os.getpid()}@{host}@x2"
    elsewhere = key_dir / f".train.partial-{dead.pid}@another-host@x3"
    for folder in (stale, live, elsewhere):
        folder.mkdir(parents=True)
        (folder / "features-00000.npy").write_bytes(b"partial")
    batches = [(np.ones((4, 3), "float32"), np.zeros(4, "int64"))]
    cache.store("key", "train", batches)
    assert not stale.exists()
    assert live.exists() and elsewhere.exists()
    assert cache.lookup("key", "train").num_examples == 4


def test_second_process_on_a_run_folder_is_refused_naming_the_first(tmp_path):
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    batches = _labeled_batches(x, np.arange(32) % 2)
    with (
        RunLock(tmp_path / "run"),
        pytest.raises(
            TrainingError,
            match=rf"in use by process {os.getpid()} on .*another run_dir",
        ),
    ):
        _recipe(tmp_path).fit(batches, batches)
    # Released: the same folder trains now.
    _recipe(tmp_path, head_epochs=1).fit(batches, batches)


def test_lock_of_a_killed_process_is_released(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from tftransfer.recipes.run_lock import RunLock; "
            "lock = RunLock(sys.argv[1]); lock.__enter__(); "
            "print('locked', flush=True); "
            "time.sleep(120)",
            str(tmp_path / "run"),
        ],
        env={**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == b"locked"
        with pytest.raises(TrainingError, match=f"process {holder.pid} "):
            RunLock(tmp_path / "run").__enter__()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.time() + 10
    while True:
        try:
            with RunLock(tmp_path / "run"):
                break
        except TrainingError:
            assert time.time() < deadline
            time.sleep(0.1)


def test_unwritable_run_folder_fails_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    recipe = _recipe(tmp_path, run_dir=blocker / "run")
    x = np.zeros((16, 4), "float32")
    with pytest.raises(TrainingError, match="Cannot write to the run folder"):
        recipe.fit(_labeled_batches(x, np.arange(16) % 2))
    assert not (tmp_path / "cache").exists()  # no feature pass ran


def test_diverging_fine_tuning_keeps_the_frozen_model_and_advises(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    batches = _labeled_batches(x, np.arange(64) % 2, batch=16)
    recipe = _recipe(
        tmp_path,
        FineTuning,
        head_epochs=1,
        fine_tune_epochs=1,
        fine_tune_learning_rate=1e30,
        backbone_lr_scale=1.0,
        clipnorm=None,
        warmup_fraction=0.0,
        verbose=2,
    )
    recipe.fit(batches, batches)
    assert recipe.chosen == "frozen"
    assert (
        "Lower fine_tune_learning_rate (it is 1e+30; try "
        "fine_tune_learning_rate=1e+29)" in capsys.readouterr().out
    )


class _Interrupt(keras.callbacks.Callback):
    """Stops the process's training (as a kill would) after `epoch` of the
    phase whose model is `model_name`, once its checkpoint is written."""

    def __init__(self, model_name, epoch):
        super().__init__()
        self.model_name, self.epoch = model_name, epoch

    def on_epoch_end(self, epoch, logs=None):
        if self.model.name == self.model_name and epoch == self.epoch:
            raise KeyboardInterrupt


def _shuffled_batches(count, seed, batch=8):
    """Prepared batches that reshuffle on every pass, as users write them."""
    pixels = _coloured(count, seed)
    x = np.stack([x for x, _ in pixels.dataset.as_numpy_iterator()]) / 255.0
    y = np.array([y for _, y in pixels.dataset.as_numpy_iterator()])
    return (
        tf.data.Dataset.from_tensor_slices((x.astype("float32"), y))
        .shuffle(count, seed=seed)
        .batch(batch)
    )


@pytest.mark.parametrize(
    "phase, inputs, steps_per_execution",
    [
        ("head", "labeled", 1),
        ("fine_tuning", "labeled", 1),
        ("fine_tuning", "batches", 1),
        ("fine_tuning", "labeled", 4),
    ],
)
def test_resumed_run_ends_on_the_weights_of_an_uninterrupted_one(
    tmp_path, phase, inputs, steps_per_execution
):
    """Shuffled data, dropout, "auto" rates, a backbone with weights:
    kill-and-resume equals no kill, also when an execution runs several
    steps (6 steps an epoch: 3 run per execution)."""

    def fit(run, callbacks=()):
        recipe = FineTuning(
            seeded_image_backbone("conv_features", conv_filters=4),
            cache_dir=tmp_path / "cache",
            run_dir=tmp_path / run,
            strategy="default",
            head_epochs=4,
            fine_tune_epochs=3,
            patience=None,
            batch_size=8,
            steps_per_execution=steps_per_execution,
            callbacks=list(callbacks),
            verbose=0,
        )
        if inputs == "labeled":
            recipe.fit(_coloured(48, 0), _coloured(24, 1))
        else:
            recipe.fit(
                _shuffled_batches(48, 0),
                _shuffled_batches(24, 1),
                class_names=["a", "b", "c"],
            )
        return recipe

    expected = fit("uninterrupted")
    with pytest.raises(KeyboardInterrupt):
        fit("resumed", [_Interrupt("head" if phase == "head" else "fine_tuning", 1)])
    resumed = fit("resumed")
    assert resumed.tuned == expected.tuned
    assert resumed.chosen == expected.chosen
    if expected.chosen == "fine_tuned":
        assert int(resumed.model.optimizer.iterations) == 3 * 6  # epochs x steps
    for ours, theirs in zip(
        resumed.model.variables, expected.model.variables, strict=True
    ):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)


def test_held_out_batches_are_the_same_examples_on_every_pass(tmp_path):
    recipe = _recipe(tmp_path)
    x = np.random.default_rng(0).normal(size=(200, 4)).astype("float32")
    batches = tf.data.Dataset.from_tensor_slices((x, np.arange(200) % 2))
    train, held_out = recipe.hold_out(batches.shuffle(200, seed=1).batch(16))

    def rows(dataset):
        return {tuple(r) for b, _ in dataset.as_numpy_iterator() for r in b.round(5)}

    assert rows(held_out) == rows(held_out)  # a reshuffled second pass
    assert not rows(held_out) & rows(train)
    assert len(rows(held_out)) + len(rows(train)) == 200
    assert 5 <= len(rows(held_out)) <= 40  # about a tenth


def test_head_search_where_every_rate_fails_blames_the_inputs(tmp_path):
    x = np.full((64, 4), 1e30, "float32")
    batches = _labeled_batches(x, np.arange(64) % 2, batch=16)
    recipe = _recipe(tmp_path, learning_rate="auto", head_epochs=2)
    with pytest.raises(TrainingError, match="Every head learning rate tried"):
        recipe.fit(batches, batches)


def test_evaluate_refuses_labels_outside_the_classes(tmp_path):
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.arange(32) % 2
    recipe = _recipe(tmp_path, head_epochs=1)
    recipe.fit(_labeled_batches(x, y), _labeled_batches(x, y), class_names=["a", "b"])
    with pytest.raises(DataError, match=r"test data has 1 labels outside 0\.\.1"):
        recipe.evaluate(_labeled_batches(x, np.where(np.arange(32) == 3, 9, y)))


def test_second_fit_of_a_fine_tuned_plain_layer_is_refused(tmp_path):
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    batches = _labeled_batches(x, np.arange(32) % 2)
    recipe = _recipe(tmp_path, FineTuning, head_epochs=1, fine_tune_epochs=1)
    recipe.fit(batches, batches)
    with pytest.raises(ValueError, match="cannot reload its pretrained weights"):
        recipe.fit(batches, batches)
