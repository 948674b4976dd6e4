"""FineTuning's phase-2 step time vs a hand-written `model.fit`.

Both train the same model (MobileNetV3Small, random weights, 64x64 images,
linear head) with the same optimizer (DiscriminativeAdamW, warm-up + cosine
schedule, clipping) on the same data; the first epoch (tracing) is left
out and each step is timed alone (callbacks and checkpoints between steps
are not counted). Prints, from one run:
  fine_tune_step_overhead: recipe step time / hand-written step time (goal <= 1.05)

    python benchmarks/fine_tune_overhead.py [--examples 512 --epochs 4]
"""

import argparse
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from common import random_mobilenet_v3_small

from tftransfer.recipes import FineTuning, build_head
from tftransfer.recipes.heads import InferenceMode
from tftransfer.recipes.optimizers import DiscriminativeAdamW

SIZE, BATCH, CLASSES = 64, 32, 5


class StepTimes(keras.callbacks.Callback):
    """Records the wall time of every training step, per epoch."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.times.append([])

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times[-1].append(time.perf_counter() - self._start)


def data(count):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(count, SIZE, SIZE, 3)).astype("float32")
    y = rng.integers(0, CLASSES, count)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).prefetch(2)


def schedule(steps):
    warmup = steps // 10
    return keras.optimizers.schedules.CosineDecay(
        0.0, steps - warmup, warmup_target=1e-4, warmup_steps=warmup
    )


def hand_written(train, epochs):
    layer = random_mobilenet_v3_small(SIZE)
    inputs = keras.Input((SIZE, SIZE, 3))
    head = build_head(layer.output_shape[-1], CLASSES)
    # The recipe's architecture: the backbone in inference mode (BatchNorm frozen).
    model = keras.Model(inputs, head(InferenceMode(layer)(inputs)))
    optimizer = DiscriminativeAdamW(
        schedule(int(train.cardinality()) * epochs),
        backbone_variables=layer.trainable_variables,
        global_clipnorm=1.0,
    )
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    timer = StepTimes()
    model.fit(train, epochs=epochs, callbacks=[timer], verbose=0, shuffle=False)
    return timer.times


def recipe(train, epochs):
    timer = StepTimes()
    with tempfile.TemporaryDirectory() as work:
        fine_tuning = FineTuning(
            random_mobilenet_v3_small(SIZE),
            head_epochs=1,
            fine_tune_epochs=epochs,
            patience=None,
            batch_size=BATCH,
            cache_dir=f"{work}/cache",
            run_dir=f"{work}/run",
            strategy="default",
            verbose=0,
            callbacks=[timer],
        )
        fine_tuning.fit(train)
    return timer.times[1:]  # the first recorded epoch is phase 1 (head)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=4)
    arguments = parser.parse_args()
    train = data(arguments.examples)
    steps = int(train.cardinality())
    baseline = hand_written(train, arguments.epochs)
    ours = recipe(train, arguments.epochs)
    baseline_step = np.median(np.concatenate(baseline[1:]))
    our_step = np.median(np.concatenate(ours[1:]))
    print(
        f"examples: {arguments.examples}, steps/epoch: {steps}, epochs: {arguments.epochs}"
    )
    print(f"hand_written_fit_step_ms: {1000 * baseline_step:.1f}")
    print(f"fine_tuning_phase2_step_ms: {1000 * our_step:.1f}")
    print(f"fine_tune_step_overhead: {our_step / baseline_step:.3f}")
