"""FeatureExtraction (cached features) vs the Keras guide's frozen-backbone fit.

Prints, from one run:
  speedup_vs_frozen_backbone_fit: baseline time / recipe time (goal >= 5)
  recipe_vs_inference_floor: recipe time / one backbone inference pass (goal <= 1.3)
  (both also with the recipe's learning rate fixed as the baseline's: _fixed_lr)
  peak_rss_growth_ratio_10x_vs_1x: memory growth with 10x the data / 1x (goal ~1)
  peak_rss_growth_vs_features_10x: memory growth / feature bytes (well under
    held_in_memory_growth_vs_features_10x, the control's)

Timing: the backbone is MobileNetV3Small (random weights: the timing does not
depend on them) on 64x64 images (`--image-size`), the head linear, 10 head
epochs, batch 64. Four sides, each on a freshly built backbone so that each
traces its own functions: the floor (`model.predict`, one inference pass), the
guide's baseline (frozen backbone inside the model, `fit` for 10 epochs with
Adam at its default 1e-3), the recipe at its defaults (fresh cache each time;
it chooses the head's learning rate, then its weight decay, by training 6
candidate heads on a held-out part: more work than the baseline) and the
recipe doing the baseline's work (`learning_rate=1e-3,
head_weight_decay=0.0`). One warm-up round of every side is thrown away (the
process's first TensorFlow work is slow), then `--rounds` rounds take turns
(floor, baseline, recipe, fixed-rate recipe, floor, ...); medians are
compared. The smaller the images, the more the recipe's fixed costs (tracing,
logs, checkpoints) weigh against the backbone's compute.

Memory: a wide, cheap backbone (a 1x1 convolution to 4 channels, flattened:
16,384 float32 features, 64 KiB per example) so that the features are large:
`--memory-examples` (1x) and 10x that many examples, with a `memory_budget`
of 32 MiB, so that the 1x features are 3x and the 10x features (1 GiB) 30x
the budget. Each run is a fresh process; it reports its peak RSS growth
during `fit` (peak after minus peak before). A control run at 10x with a
budget above the features (held in memory) shows what holding them costs.

    python benchmarks/feature_cache.py [--examples 1024] [--image-size 64]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from common import random_mobilenet_v3_small, timed_recipe_options

from tftransfer.recipes import FeatureExtraction, build_head

BATCH, EPOCHS, CLASSES = 64, 10, 5
MEMORY_EPOCHS = 2  # the peak comes in the feature pass and the first epochs
WIDE_SIZE, WIDE_CHANNELS = 64, 4
MEMORY_BUDGET = 32 * 2**20


def images(count, size):
    """A streamed dataset of `count` random images (nothing held in memory)."""

    def example(index):
        seed = tf.stack([index, 0])
        image = tf.random.stateless_uniform((size, size, 3), seed)
        return image, index % CLASSES

    return tf.data.Dataset.range(count).map(example).batch(BATCH).prefetch(2)


def timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def floor(data, size):
    """One inference pass, as a user computes features once: `predict`."""
    backbone = random_mobilenet_v3_small(size)
    return timed(lambda: backbone.predict(data, verbose=0))


def guide(data, size):
    """The Keras guide's frozen backbone inside the model, `fit`."""
    backbone = random_mobilenet_v3_small(size)
    backbone.trainable = False
    inputs = keras.Input((size, size, 3))
    head = build_head(backbone.output_shape[-1], CLASSES)
    baseline = keras.Model(inputs, head(backbone(inputs, training=False)))
    baseline.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return timed(lambda: baseline.fit(data, epochs=EPOCHS, verbose=0))


def recipe(data, size, **options):
    with tempfile.TemporaryDirectory() as work:
        feature_extraction = FeatureExtraction(
            random_mobilenet_v3_small(size),
            **options,
            head_epochs=EPOCHS,
            **timed_recipe_options(work, BATCH),
        )
        return timed(lambda: feature_extraction.fit(data))


def recipe_fixed(data, size):
    """The recipe doing the guide's work: one head, Adam at 1e-3, no decay."""
    return recipe(data, size, learning_rate=1e-3, head_weight_decay=0.0)


def compare(count, size, rounds):
    data = images(count, size)
    sides = (floor, guide, recipe, recipe_fixed)
    for side in sides:  # warm-up round, thrown away
        side(data, size)
    times = [[] for _ in sides]
    for _ in range(rounds):
        for index, side in enumerate(sides):
            times[index].append(side(data, size))
    inference, baseline, total, fixed = (float(np.median(t)) for t in times)
    print(f"examples: {count}, image size: {size}, head epochs: {EPOCHS}")
    print(f"rounds: {rounds} (interleaved, after a warm-up round), medians")
    print(f"inference_pass_s: {inference:.2f}")
    print(f"frozen_backbone_fit_s: {baseline:.2f}")
    print(f"recipe_total_s (defaults): {total:.2f}")
    print(f"recipe_fixed_lr_total_s: {fixed:.2f}")
    print(f"speedup_vs_frozen_backbone_fit: {baseline / total:.2f}")
    print(f"recipe_vs_inference_floor: {total / inference:.2f}")
    print(f"speedup_vs_frozen_backbone_fit_fixed_lr: {baseline / fixed:.2f}")
    print(f"recipe_vs_inference_floor_fixed_lr: {fixed / inference:.2f}")


def wide_backbone():
    """A cheap backbone with many features (16,384 float32 per example)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((WIDE_SIZE, WIDE_SIZE, 3))
    outputs = keras.layers.Flatten()(keras.layers.Conv2D(WIDE_CHANNELS, 1)(inputs))
    return keras.Model(inputs, outputs)


def high_water_mb():
    """This process's peak RSS so far, in MiB.

    Linux's `VmHWM`, which starts afresh at `exec`; `ru_maxrss` would keep
    the peak of the parent that forked this process (the timing part's).
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(count, budget):
    """Runs the recipe on `count` examples in this process; prints RSS growth."""
    data = images(count, WIDE_SIZE)
    with tempfile.TemporaryDirectory() as work:
        feature_extraction = FeatureExtraction(
            wide_backbone(),
            head_epochs=MEMORY_EPOCHS,
            memory_budget=budget,
            **timed_recipe_options(work, BATCH),
        )
        before = high_water_mb()
        feature_extraction.fit(data)
        after = high_water_mb()
    print(json.dumps({"peak_before_mb": before, "peak_after_mb": after}))


def run_peak_memory(examples, budget):
    command = [sys.executable, __file__, "--peak-memory", str(examples)]
    output = subprocess.run(
        [*command, "--memory-budget", str(budget)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    ).stdout
    peaks = json.loads(output.strip().splitlines()[-1])
    return peaks["peak_after_mb"], peaks["peak_after_mb"] - peaks["peak_before_mb"]


def measure_memory(count):
    per_example = WIDE_SIZE * WIDE_SIZE * WIDE_CHANNELS * 4
    features_1x, features_10x = (n * per_example / 2**20 for n in (count, 10 * count))
    peak_1x, growth_1x = run_peak_memory(count, MEMORY_BUDGET)
    peak_10x, growth_10x = run_peak_memory(10 * count, MEMORY_BUDGET)
    _, growth_held = run_peak_memory(10 * count, 2**40)
    print(
        f"memory_budget_mb: {MEMORY_BUDGET / 2**20:.0f}, features_mb 1x: "
        f"{features_1x:.0f} ({count} examples x 16,384 float32), 10x: "
        f"{features_10x:.0f}"
    )
    print(f"peak_rss_mb_1x: {peak_1x:.0f}, growth during fit: {growth_1x:.0f}")
    print(f"peak_rss_mb_10x: {peak_10x:.0f}, growth during fit: {growth_10x:.0f}")
    print(f"held_in_memory_control_growth_mb_10x: {growth_held:.0f}")
    print(f"peak_rss_ratio_10x_vs_1x: {peak_10x / peak_1x:.2f}")
    print(f"peak_rss_growth_ratio_10x_vs_1x: {growth_10x / growth_1x:.2f}")
    print(f"peak_rss_growth_vs_features_10x: {growth_10x / features_10x:.2f}")
    print(f"held_in_memory_growth_vs_features_10x: {growth_held / features_10x:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-examples", type=int, default=1600)
    parser.add_argument("--peak-memory", type=int, default=None)
    parser.add_argument("--memory-budget", type=int, default=MEMORY_BUDGET)
    arguments = parser.parse_args()
    if arguments.peak_memory:
        peak_memory(arguments.peak_memory, arguments.memory_budget)
    else:
        compare(arguments.examples, arguments.image_size, arguments.rounds)
        measure_memory(arguments.memory_examples)
