"""FineTuning's phase 2 vs the fine-tuning a user writes with plain Keras.

Both train MobileNetV3Small (random weights, 64x64 images) with a linear head
on the same data, the whole backbone trainable with its BatchNorm frozen:

- hand-written: what the Keras transfer-learning guide has a user write:
  `backbone(inputs, training=False)` and every `BatchNormalization` layer
  `trainable=False` (in Keras 3 that keeps it in inference mode),
  `keras.optimizers.AdamW` with warm-up + cosine decay and clipping,
  `model.fit` with a `ModelCheckpoint` (the whole model, every epoch), a
  `CSVLogger` and a `TensorBoard` logger, the files the recipe also writes;
- recipe: `FineTuning` (1 head epoch, then `--epochs` fine-tuning epochs,
  its own checkpoints, CSV and TensorBoard logs).

The two take turns (`--rounds` of hand-written then recipe, each on a fresh
model); the first epoch of each phase (tracing) is left out. Prints, from one
run, the medians over all rounds:
  fine_tune_step_overhead: recipe step time / hand-written step time
  fine_tune_epoch_overhead: the same for whole epochs, checkpoint and logs
    included (goal <= 1.05 for both)

    python benchmarks/fine_tune_overhead.py [--examples 512 --epochs 4 --rounds 3]
"""

import argparse
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from common import random_mobilenet_v3_small, timed_recipe_options

from tftransfer.recipes import FineTuning

SIZE, BATCH, CLASSES = 64, 32, 5


class StepTimes(keras.callbacks.Callback):
    """Records per epoch the wall time of every step and of the whole epoch.

    An epoch runs from its `on_epoch_begin` to the next one's (or the end of
    training), so the callbacks at its end (checkpoint, logs) count in it.
    """

    def __init__(self):
        super().__init__()
        self.times, self.epochs, self._epoch_start = [], [], None

    def _close_epoch(self):
        if self._epoch_start is not None:
            self.epochs.append(time.perf_counter() - self._epoch_start)
            self._epoch_start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._close_epoch()
        self.times.append([])
        self._epoch_start = time.perf_counter()

    def on_train_end(self, logs=None):
        self._close_epoch()

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times[-1].append(time.perf_counter() - self._start)


def data(count):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(count, SIZE, SIZE, 3)).astype("float32")
    y = rng.integers(0, CLASSES, count)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).prefetch(2)


def hand_written(train, epochs, work):
    """The user's script: plain Keras, frozen BatchNorm, checkpoint and logs."""
    backbone = random_mobilenet_v3_small(SIZE)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    inputs = keras.Input((SIZE, SIZE, 3))
    features = backbone(inputs, training=False)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, "softmax")(features))
    steps = int(train.cardinality()) * epochs
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps - steps // 10, warmup_target=1e-4, warmup_steps=steps // 10
    )
    model.compile(
        keras.optimizers.AdamW(schedule, global_clipnorm=1.0),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    timer = StepTimes()
    callbacks = [
        timer,
        keras.callbacks.ModelCheckpoint(f"{work}/model.keras"),
        keras.callbacks.CSVLogger(f"{work}/history.csv"),
        keras.callbacks.TensorBoard(f"{work}/logs", write_graph=False),
    ]
    model.fit(train, epochs=epochs, callbacks=callbacks, verbose=0, shuffle=False)
    return timer


def recipe(train, epochs, work):
    timer = StepTimes()
    fine_tuning = FineTuning(
        random_mobilenet_v3_small(SIZE),
        head_epochs=1,
        fine_tune_epochs=epochs,
        callbacks=[timer],
        **timed_recipe_options(work, BATCH),
    )
    fine_tuning.fit(train)
    return timer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    if arguments.epochs < 2:
        parser.error(
            f"--epochs must be at least 2 (received {arguments.epochs}): each "
            "side's first fine-tuning epoch traces its step and is not timed."
        )
    train = data(arguments.examples)
    steps, epochs = [[], []], [[], []]
    for _ in range(arguments.rounds):
        for index, side in enumerate((hand_written, recipe)):
            with tempfile.TemporaryDirectory() as work:
                timer = side(train, arguments.epochs, work)
            # The hand-written side's epochs are all phase 2; the recipe's
            # first recorded epoch is phase 1 (head). Drop each phase's first
            # fine-tuning epoch (tracing) too.
            first = 1 if index == 0 else 2
            steps[index].extend(np.concatenate(timer.times[first:]))
            epochs[index].extend(timer.epochs[first:])
    step = [float(np.median(s)) for s in steps]
    epoch = [float(np.median(e)) for e in epochs]
    print(
        f"examples: {arguments.examples}, steps/epoch: {int(train.cardinality())}, "
        f"epochs: {arguments.epochs}, rounds: {arguments.rounds} (interleaved), medians"
    )
    print(f"hand_written_fit_step_ms: {1000 * step[0]:.1f}")
    print(f"fine_tuning_phase2_step_ms: {1000 * step[1]:.1f}")
    print(f"hand_written_fit_epoch_s: {epoch[0]:.3f}")
    print(f"fine_tuning_phase2_epoch_s: {epoch[1]:.3f}")
    print(f"fine_tune_step_overhead: {step[1] / step[0]:.3f}")
    print(f"fine_tune_epoch_overhead: {epoch[1] / epoch[0]:.3f}")


if __name__ == "__main__":
    main()
