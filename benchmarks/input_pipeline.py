"""Image input pipeline throughput: tftransfer.data vs Keras, same JPEGs.

For each image size (from a 12-megapixel phone photo down to 320x240),
writes a folder of JPEGs (smooth content plus sensor-like noise, quality 90,
so files are about as large as photos), then times one full pass, decoding
and resizing to 224x224 included, of:

- `keras.utils.image_dataset_from_directory(..., crop_to_aspect_ratio=True)`;
- `tftransfer.data.make_pipeline(from_image_folder(...), backbone)` (central
  crop, values converted to the backbone's range).

Both batch 32, no shuffling, no caching. Passes alternate (Keras, then
tftransfer) `--repeats` times. Two ratios are printed, medians over rounds:
wall-clock images/s (Keras pass time / tftransfer pass time), and images per
CPU-second (Keras CPU time / tftransfer CPU time, all threads), which stays
meaningful on a machine shared with other work. Listing (with tftransfer's
file checks, default `verify="decode"`, and building the pipeline) is
timed apart, once, and also with `verify="header"` (no decode check).
Prints `name: ratio` lines (Keras time / tftransfer time).

    python benchmarks/input_pipeline.py
"""

import argparse
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from tftransfer import data
from tftransfer.backbones import Backbone

BATCH = 32
TARGET = (224, 224)


def write_jpegs(root: str, count: int, height: int, width: int) -> None:
    """Writes `count` JPEGs into 4 class folders."""
    rng = np.random.default_rng(0)
    for i in range(count):
        coarse = rng.uniform(0, 255, (height // 32, width // 32, 3))
        image = tf.image.resize(coarse, (height, width), method="bicubic")
        image += 4 * rng.standard_normal((height, width, 3), dtype=np.float32)
        image = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
        folder = os.path.join(root, f"class_{i % 4}")
        os.makedirs(folder, exist_ok=True)
        tf.io.write_file(
            os.path.join(folder, f"{i:05d}.jpg"), tf.io.encode_jpeg(image, quality=90)
        )


def one_pass(dataset: tf.data.Dataset) -> tuple[float, float]:
    """Returns the wall-clock and the CPU seconds (all threads) of one pass."""
    wall, cpu = time.perf_counter(), time.process_time()
    for images, _ in dataset:
        images.shape  # noqa: B018 (the batch is materialised by iteration)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--megapixels",
        type=float,
        default=1200,
        help="pixels written per size, in millions (96 photos of 12 MP), so "
        "that every pass is long enough to time; at most --max-images images",
    )
    parser.add_argument("--max-images", type=int, default=512)
    parser.add_argument("--sizes", default="4032x3024,2048x1536,1024x768,320x240")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    backbone = Backbone(
        name="input_pipeline_benchmark",
        handle="benchmark",
        modality="image",
        feature_dim=3,
        builder=lambda trainable: keras.layers.GlobalAveragePooling2D(),
        image_size=TARGET,
    )
    print(
        f"JPEGs -> {TARGET[0]}x{TARGET[1]}, batch {BATCH}, {os.cpu_count()} CPUs, "
        f"{args.repeats} rounds"
    )
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.split("x"))
        count = min(args.max_images, round(args.megapixels * 1e6 / (width * height)))
        root = tempfile.mkdtemp(prefix=f"input_pipeline_{size}_")
        write_jpegs(root, count, height, width)

        start = time.perf_counter()
        keras_ds = keras.utils.image_dataset_from_directory(
            root,
            image_size=TARGET,
            batch_size=BATCH,
            shuffle=False,
            crop_to_aspect_ratio=True,
            verbose=False,
        )
        keras_list = time.perf_counter() - start
        start = time.perf_counter()
        ours = data.make_pipeline(
            data.from_image_folder(root), backbone, BATCH, cache=False
        )
        ours_list = time.perf_counter() - start
        start = time.perf_counter()
        data.make_pipeline(
            data.from_image_folder(root, verify="header"), backbone, BATCH, cache=False
        )
        header_list = time.perf_counter() - start

        keras_times, our_times = [], []
        for _ in range(args.repeats):
            keras_times.append(one_pass(keras_ds))
            our_times.append(one_pass(ours))
        keras_times, our_times = np.array(keras_times), np.array(our_times)
        wall = float(np.median(keras_times[:, 0] / our_times[:, 0]))
        cpu = float(np.median(keras_times[:, 1] / our_times[:, 1]))
        print(
            f"{size} ({count} images): best keras {count / keras_times[:, 0].min():.0f} img/s, "
            f"best tftransfer {count / our_times[:, 0].min():.0f} img/s; CPU "
            f"per image: keras {keras_times[:, 1].min() / count * 1e3:.2f} "
            f"ms, tftransfer {our_times[:, 1].min() / count * 1e3:.2f} ms "
            f"(listing: keras {keras_list * 1e3:.0f} ms, tftransfer "
            f"{ours_list * 1e3:.0f} ms, {header_list * 1e3:.0f} ms with "
            "verify='header')"
        )
        print(f"input_pipeline_{size}_listing: {keras_list / ours_list:.2f}")
        print(f"input_pipeline_{size}: {wall:.2f}")
        print(f"input_pipeline_{size}_per_cpu_second: {cpu:.2f}")
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
