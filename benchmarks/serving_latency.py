"""Exported `serving_default` on raw bytes vs the in-memory model a user serves.

Both sides are measured in this one run, on the same batch of encoded JPEGs:

- served: the exported SavedModel, loaded back, `serving_default` on the raw
  bytes (decode, resize and scale happen inside the graph);
- in-memory: what a user would write to serve the Keras model without an
  export, `tf.function(lambda raw: model(prepare(raw)))` with `prepare` from
  `tftransfer.data.prepare_fn` on the whole batch of bytes: one graph call
  per request, like the served side.

The model is `keras.applications.MobileNetV2` (random weights, no download)
with a softmax head. Both are warmed up (traced and run) first, then take
turns (served, in-memory, served, ...) for `--repeats` rounds of `--number`
calls; the medians of the per-call times are compared. Prints `name: ratio`
lines; goal `serving_latency_ratio <= 1.1`.

    python benchmarks/serving_latency.py
"""

import argparse
import tempfile
import timeit

import keras
import numpy as np
import tensorflow as tf

import tftransfer
from tftransfer.data import prepare_fn


def _jpegs(count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [
        tf.io.encode_jpeg(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).numpy()
        for _ in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--number", type=int, default=3)
    args = parser.parse_args()

    size = (args.image_size, args.image_size)
    backbone = tftransfer.Backbone.from_keras_application(
        "MobileNetV2", weights=None, image_size=size
    )
    inputs = keras.Input((*size, 3))
    outputs = keras.layers.Dense(5, activation="softmax")(backbone.build()(inputs))
    model = keras.Model(inputs, outputs)
    class_names = [f"class_{i}" for i in range(5)]

    images = _jpegs(args.batch_size)
    prepare = prepare_fn(backbone)
    with tempfile.TemporaryDirectory() as base:
        path = tftransfer.export(
            model, base, backbone=backbone, class_names=class_names
        )
        serving = tf.saved_model.load(str(path)).signatures["serving_default"]
        raw = tf.constant(images)

        def served():
            return serving(image_bytes=raw)["probabilities"].numpy()

        predict = tf.function(lambda r: model(prepare(r), training=False))

        def in_memory():
            return predict(raw).numpy()

        functions = [served, in_memory]
        for _ in range(args.warmup):
            for function in functions:
                function()
        times = [[] for _ in functions]
        for _ in range(args.repeats):
            for index, function in enumerate(functions):
                elapsed = timeit.timeit(function, number=args.number) / args.number
                times[index].append(elapsed)
        median = [float(np.median(t)) for t in times]
        difference = np.abs(served() - in_memory()).max()

    print(f"batch_size: {args.batch_size}, image_size: {size}, jpeg: 320x240")
    print(f"rounds: {args.repeats} x {args.number} calls, medians")
    print(f"served_ms: {median[0] * 1e3:.2f}")
    print(f"in_memory_tf_function_ms: {median[1] * 1e3:.2f}")
    print(f"max_abs_difference: {difference:.2e}")
    print(f"serving_latency_ratio: {median[0] / median[1]:.3f}")


if __name__ == "__main__":
    main()
