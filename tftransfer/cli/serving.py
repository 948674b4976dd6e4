"""`tftransfer predict` and `tftransfer evaluate`: use an exported model.

Both load the SavedModel with TensorFlow alone and call its
`serving_default` signature on raw inputs (encoded image bytes or text), as
TF Serving would.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from tftransfer.errors import DataError, HandleNotFoundError

BATCH = 64
# The files a folder given to `predict` stands for, by the model's input.
SUFFIXES = {
    "image_bytes": (".jpg", ".jpeg", ".png", ".bmp", ".gif"),
    "text": (".txt",),
}


def find_export(model_dir: str) -> Path:
    """The version folder of an export, without loading it.

    `model_dir` is a version folder (`saved_models/name/1`) or a base folder,
    whose highest version is used.

    Raises:
        HandleNotFoundError: if `model_dir` holds no exported model.
    """
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
    return path


def load_serving(model_dir: str):
    """Returns `(serving function, input name, class names)` of an export.

    `model_dir` is a version folder or a base folder (see `find_export`).
    """
    path = find_export(model_dir)
    import tensorflow as tf
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


def _input_files(paths: Sequence[str], suffixes: tuple[str, ...]) -> Iterator[str]:
    """`paths`, each folder replaced by the files with `suffixes` in it and
    its sub-folders (sorted; hidden ones left out). A folder without such
    files stays, to be named as an error."""
    for path in paths:
        if not os.path.isdir(path):
            yield path
            continue
        found = []
        for root, folders, names in os.walk(path):
            folders[:] = sorted(f for f in folders if not f.startswith("."))
            found.extend(
                os.path.join(root, name)
                for name in sorted(names)
                if name.lower().endswith(suffixes) and not name.startswith(".")
            )
        yield from found or [path]


def _read_input(path: str, input_name: str, suffixes: tuple[str, ...]) -> bytes | str:
    """The raw input of one file, as the model's signature takes it.

    Raises:
        DataError: naming why the file cannot be read.
    """
    if os.path.isdir(path):
        raise DataError(f"is a folder with no {', '.join(suffixes)} files")
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError("does not exist") from None
    except OSError as error:
        raise DataError(f"cannot be read ({error.strerror or error})") from None
    return data.decode("utf-8", "replace") if input_name == "text" else data


def _classify(serving, input_name: str, raw: Sequence) -> Iterator[dict | str]:
    """Yields, for each input, its row of the signature's outputs, or why the
    model could not classify it. Batches whose call fails are run again one
    input at a time, so that one bad input spoils only itself."""
    import tensorflow as tf

    for batch in _batches(list(raw)):
        try:
            outputs = _run(serving, input_name, batch)
        except tf.errors.OpError as error:
            if len(batch) == 1:
                yield _reason(error)
            else:
                for item in batch:
                    yield from _classify(serving, input_name, [item])
            continue
        for i in range(len(batch)):
            yield {key: value[i] for key, value in outputs.items()}


def _reason(error) -> str:
    """The line of a TensorFlow error that says what went wrong, not where
    ("Unknown image file format. ...", not "Graph execution error:")."""
    lines = [
        line
        for line in error.message.splitlines()
        if line.strip() and not line[0].isspace()
    ]
    where = ("Graph execution error", "Detected at node", "<stack traces")
    said = [line for line in lines if not line.startswith(where)]
    return (said or lines or [type(error).__name__])[-1][:200]


def predict(model_dir: str, paths: Sequence[str], top_k: int = 3) -> list[dict]:
    """Classifies files (images, or text files for a text model); prints and returns results.

    A folder stands for the image files (`.jpg`, `.jpeg`, `.png`, `.bmp`,
    `.gif`), or for a text model the `.txt` files, in it and its
    sub-folders. A file that cannot be read or classified is named on
    stderr (`error: FILE: why`) and the others are classified.

    Returns:
        One dict per file, in order: `{"file", "classes", "scores"}`, or
        `{"file", "error"}` for a file that could not be classified.

    Example:

    >>> predict("saved_models/bbc-news-topics/1", ["article.txt", "more/"])
    article.txt  sport 0.981  business 0.009  tech 0.004
    more/a.txt  tech 0.912  business 0.051  sport 0.020
    """
    serving, input_name, _ = load_serving(model_dir)
    suffixes = SUFFIXES.get(input_name, ())
    results, readable, raw = [], [], []
    for path in _input_files(paths, suffixes):
        try:
            raw.append(_read_input(path, input_name, suffixes))
        except DataError as error:
            results.append({"file": path, "error": str(error)})
            print(f"error: {path}: {error}", file=sys.stderr)
            continue
        readable.append(len(results))
        results.append({"file": path})
    for index, row in zip(readable, _classify(serving, input_name, raw), strict=True):
        result = results[index]
        if isinstance(row, str):
            result["error"] = f"the model cannot classify it: {row}"
            print(f"error: {result['file']}: {result['error']}", file=sys.stderr)
            continue
        result["classes"] = [c.decode() for c in row["top_k_classes"][:top_k]]
        result["scores"] = [float(s) for s in row["top_k_scores"][:top_k]]
        print(
            f"{result['file']}  "
            + "  ".join(
                f"{c} {s:.3f}"
                for c, s in zip(result["classes"], result["scores"], strict=True)
            )
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
