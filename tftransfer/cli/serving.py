"""`tftransfer predict` and `tftransfer evaluate`: use an exported model.

Both load the SavedModel with TensorFlow alone and call its
`serving_default` signature on raw inputs (encoded image bytes or text), as
TF Serving would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from tftransfer.errors import DataError, HandleNotFoundError

BATCH = 64


def load_serving(model_dir: str):
    """Returns `(serving function, input name, class names)` of an export.

    `model_dir` is a version folder (`saved_models/name/1`) or a base folder,
    whose highest version is used.
    """
    import tensorflow as tf

    path = Path(model_dir)
    if path.is_dir() and not (path / "saved_model.pb").exists():
        versions = sorted(
            (int(p.name) for p in path.iterdir() if p.name.isdigit()), reverse=True
        )
        if versions:
            path = path / str(versions[0])
    if not (path / "saved_model.pb").exists():
        raise HandleNotFoundError(
            f"{model_dir} holds no exported model (no saved_model.pb, and no "
            "numbered version folder). Pass a folder written by `tftransfer run` "
            "or `tftransfer export`, such as saved_models/<name>/1."
        )
    import tensorflow_text  # noqa: F401  (registers the TF Text ops of text models)

    serving = tf.saved_model.load(str(path)).signatures["serving_default"]
    (input_name,) = serving.structured_input_signature[1]
    labels = path / "assets" / "labels.txt"
    class_names = labels.read_text().splitlines() if labels.exists() else []
    return serving, input_name, class_names


def _batches(items: Sequence, size: int = BATCH) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _run(serving, input_name: str, raw: Sequence) -> dict[str, np.ndarray]:
    import tensorflow as tf

    outputs: dict[str, list] = {}
    for batch in _batches(list(raw)):
        result = serving(**{input_name: tf.constant(batch)})
        for key, value in result.items():
            outputs.setdefault(key, []).append(value.numpy())
    return {key: np.concatenate(values) for key, values in outputs.items()}


def _read_input(path: str, input_name: str) -> bytes | str:
    if not os.path.isfile(path):
        raise DataError(f"Input file {path} does not exist.")
    data = Path(path).read_bytes()
    return data.decode("utf-8", "replace") if input_name == "text" else data


def predict(model_dir: str, files: Sequence[str], top_k: int = 3) -> list[dict]:
    """Classifies files (images, or text files for a text model); prints and returns results.

    Example:

    >>> predict("saved_models/bbc-news-topics/1", ["article.txt"])
    article.txt  sport 0.981  business 0.009  tech 0.004
    """
    serving, input_name, _ = load_serving(model_dir)
    outputs = _run(serving, input_name, [_read_input(f, input_name) for f in files])
    results = []
    for i, path in enumerate(files):
        classes = [c.decode() for c in outputs["top_k_classes"][i][:top_k]]
        scores = [float(s) for s in outputs["top_k_scores"][i][:top_k]]
        results.append({"file": path, "classes": classes, "scores": scores})
        print(
            f"{path}  "
            + "  ".join(f"{c} {s:.3f}" for c, s in zip(classes, scores, strict=True))
        )
    return results


def evaluate(model_dir: str, data) -> dict:
    """Evaluates an exported model on labelled data; prints and returns the metrics.

    `data` is a `LabeledData` whose class names are those the model was
    trained on (matched by name, so order does not matter).

    Example:

    >>> evaluate("saved_models/flowers/1", from_image_folder("flowers/test"))
    """
    from tftransfer.recipes.metrics import classification_metrics

    serving, input_name, model_classes = load_serving(model_dir)
    raw, labels = [], []
    for x, y in data.dataset.as_numpy_iterator():
        if data.input_format == "file_path":
            x = Path(x.decode()).read_bytes()
        raw.append(x)
        labels.append(int(y))
    outputs = _run(serving, input_name, raw)
    missing = sorted(set(data.class_names) - set(model_classes))
    if missing:
        raise DataError(
            f"{data.source} has classes {missing} that the model does not know; "
            f"the model's classes are {model_classes}."
        )
    remapped = [model_classes.index(data.class_names[y]) for y in labels]
    metrics = classification_metrics(remapped, outputs["probabilities"], model_classes)
    print(
        f"accuracy: {metrics['accuracy']:.4f}  macro F1: {metrics['macro_f1']:.4f}  ({metrics['num_examples']} examples)"
    )
    for name, row in metrics["per_class"].items():
        print(
            f"  {name:20s} precision {row['precision']:.3f}  recall {row['recall']:.3f}  f1 {row['f1']:.3f}  support {row['support']}"
        )
    return metrics
