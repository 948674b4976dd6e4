"""FeatureExtraction (cached features) vs the Keras guide's frozen-backbone fit.

Prints, from one run:
  speedup_vs_frozen_backbone_fit: baseline time / recipe time (goal >= 5)
  recipe_vs_inference_floor: recipe time / one backbone inference pass (goal <= 1.3)
  peak_rss_ratio_10x_vs_1x: peak memory with 10x the data / with 1x (goal ~1, flat)

The backbone is MobileNetV3Small (random weights: the timing does not depend
on them) on 64x64 images (`--image-size`), the head linear, 10 head epochs,
batch 64. The smaller the images, the more the recipe's fixed costs (tracing,
logs, checkpoints) weigh against the backbone's compute.

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
import tensorflow as tf
from common import random_mobilenet_v3_small

from tftransfer.recipes import FeatureExtraction, build_head

BATCH, EPOCHS, CLASSES = 64, 10, 5


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


def compare(count, size):
    data = images(count, size)
    model_backbone = random_mobilenet_v3_small(size)
    inference = timed(lambda: model_backbone.predict(data, verbose=0))

    model_backbone.trainable = False
    inputs = keras.Input((size, size, 3))
    head = build_head(model_backbone.output_shape[-1], CLASSES)
    baseline = keras.Model(inputs, head(model_backbone(inputs, training=False)))
    baseline.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    guide = timed(lambda: baseline.fit(data, epochs=EPOCHS, verbose=0))

    with tempfile.TemporaryDirectory() as work:
        recipe = FeatureExtraction(
            random_mobilenet_v3_small(size),
            head_epochs=EPOCHS,
            patience=None,
            batch_size=BATCH,
            cache_dir=f"{work}/cache",
            run_dir=f"{work}/run",
            strategy="default",
            verbose=0,
        )
        total = timed(lambda: recipe.fit(data))
    print(f"examples: {count}, image size: {size}, head epochs: {EPOCHS}")
    print(f"inference_pass_s: {inference:.2f}")
    print(f"frozen_backbone_fit_s: {guide:.2f}")
    print(f"recipe_total_s: {total:.2f}")
    print(f"speedup_vs_frozen_backbone_fit: {guide / total:.2f}")
    print(f"recipe_vs_inference_floor: {total / inference:.2f}")


def peak_memory(count, size):
    """Runs the recipe on `count` examples in this process; prints peak RSS."""
    with tempfile.TemporaryDirectory() as work:
        recipe = FeatureExtraction(
            random_mobilenet_v3_small(size),
            head_epochs=EPOCHS,
            patience=None,
            batch_size=BATCH,
            memory_budget=0,
            cache_dir=f"{work}/cache",
            run_dir=f"{work}/run",
            strategy="default",
            verbose=0,
        )
        recipe.fit(images(count, size))
    print(
        json.dumps(
            {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        )
    )


def measure_memory(count, size):
    peaks = []
    for examples in (count, 10 * count):
        command = [sys.executable, __file__, "--peak-memory", str(examples)]
        output = subprocess.run(
            [*command, "--image-size", str(size)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        ).stdout
        peaks.append(json.loads(output.strip().splitlines()[-1])["peak_rss_mb"])
    print(f"peak_rss_mb_1x ({count} examples): {peaks[0]:.0f}")
    print(f"peak_rss_mb_10x ({10 * count} examples): {peaks[1]:.0f}")
    print(f"peak_rss_ratio_10x_vs_1x: {peaks[1] / peaks[0]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--peak-memory", type=int, default=None)
    arguments = parser.parse_args()
    if arguments.peak_memory:
        peak_memory(arguments.peak_memory, arguments.image_size)
    else:
        compare(arguments.examples, arguments.image_size)
        measure_memory(arguments.examples, arguments.image_size)
