"""`tftransfer predict` and `tftransfer evaluate`: use an exported model.

Both load the SavedModel with TensorFlow alone and call its
`serving_default` signature on raw inputs (encoded image bytes or text), as
TF Serving would, and read its outputs as the task its model card records
(classification, multi-label or regression).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from tftransfer.errors import ConfigError, DataError, HandleNotFoundError

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
        ConfigError: if it holds a multi-task export (`export --tasks`).
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
    card = path / "model_card.json"
    tasks = json.loads(card.read_text()).get("tasks") if card.exists() else None
    if tasks:
        raise ConfigError(
            f"{path} serves several tasks ({', '.join(tasks)}), and this "
            "command reads a single-task export. Call a task's signature "
            "(signature_name in a TF Serving request, or `saved_model_cli run "
            f"--dir {path} --tag_set serve --signature_def <task>`), or use "
            "the export of that task's run."
        )
    return path


def export_task(model_dir: str) -> str:
    """The task an export serves, as its model card records it, without
    loading it: `"classification"`, `"multi_label"` or `"regression"`
    (`"classification"` where there is no card or it does not say).

    `model_dir` is a version folder or a base folder (see `find_export`).
    """
    return _model_card(model_dir).get("task") or "classification"


def _model_card(model_dir: str) -> dict:
    """An export's `model_card.json`, read without TensorFlow; `{}` if none."""
    card = find_export(model_dir) / "model_card.json"
    return json.loads(card.read_text()) if card.exists() else {}


def export_data_reading(model_dir: str) -> tuple[str | None, dict]:
    """The data format and reader options of the run that trained an
    export, as its model card records the recipe file (`tftransfer run`
    exports); `(None, {})` where the card does not say."""
    settings = _model_card(model_dir).get("recipe_settings") or {}
    data = (settings.get("recipe_file") or {}).get("data") or {}
    return data.get("format"), dict(data.get("options") or {})


def export_names(model_dir: str) -> list[str]:
    """The class, label or target names of an export (its `labels.txt`),
    without loading it; empty where it has none."""
    labels = find_export(model_dir) / "assets" / "labels.txt"
    return labels.read_text().splitlines() if labels.exists() else []


def load_serving(model_dir: str):
    """Returns `(serving function, input name, output names, task)` of an
    export: the output names are its class, label or target names, the task
    `export_task()`'s.

    `model_dir` is a version folder or a base folder (see `find_export`).
    """
    path = find_export(model_dir)
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the TF Text ops of text models)

    serving = tf.saved_model.load(str(path)).signatures["serving_default"]
    (input_name,) = serving.structured_input_signature[1]
    return serving, input_name, export_names(str(path)), export_task(str(path))


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


def _prediction(task: str, row: dict, top_k: int) -> tuple[dict, str]:
    """One input's row of the signature's outputs as `predict` returns it,
    and as it prints it."""
    if task == "regression":
        names = [name.decode() for name in row["target_names"]]
        values = [float(value) for value in row["predictions"]]
        line = "  ".join(f"{n} {v:.4g}" for n, v in zip(names, values, strict=True))
        return {"predictions": dict(zip(names, values, strict=True))}, line
    if task == "multi_label":
        # `labels` holds the names that apply, most probable first.
        names = [name.decode() for name in row["labels"] if name]
        scores = sorted((float(p) for p in row["probabilities"]), reverse=True)
        result = {"labels": names, "scores": scores[: len(names)]}
    else:
        result = {
            "classes": [c.decode() for c in row["top_k_classes"][:top_k]],
            "scores": [float(s) for s in row["top_k_scores"][:top_k]],
        }
    names = result.get("classes", result.get("labels"))
    line = "  ".join(
        f"{n} {s:.3f}" for n, s in zip(names, result["scores"], strict=True)
    )
    return result, line or "(no label applies)"


def predict(model_dir: str, paths: Sequence[str], top_k: int = 3) -> list[dict]:
    """Runs an exported model on files (images, or text files for a text model); prints and returns results.

    A folder stands for the image files (`.jpg`, `.jpeg`, `.png`, `.bmp`,
    `.gif`), or for a text model the `.txt` files, in it and its
    sub-folders. A file that cannot be read or run is named on stderr
    (`error: FILE: why`) and the others are run.

    Each file's line shows, by the task the model card records: for a
    classifier its `top_k` classes and their probabilities; for a
    multi-label model the labels that apply (probability at or above 0.5),
    each with its probability; for a regression model each target's name
    and predicted value.

    Returns:
        One dict per file, in order: `{"file", "classes", "scores"}`
        (classification), `{"file", "labels", "scores"}` (multi-label) or
        `{"file", "predictions"}` (regression: target name to value); or
        `{"file", "error"}` for a file that could not be run.

    Example:

    >>> predict("saved_models/bbc-news-topics/1", ["article.txt", "more/"])
    article.txt  sport 0.981  business 0.009  tech 0.004
    more/a.txt  tech 0.912  business 0.051  sport 0.020
    >>> predict("saved_models/house-prices/1", ["house.jpg"])
    house.jpg  price 2.41e+05  rooms 3.8
    """
    serving, input_name, _, task = load_serving(model_dir)
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
        prediction, line = _prediction(task, row, top_k)
        result.update(prediction)
        print(f"{result['file']}  {line}")
    return results


def evaluate(model_dir: str, data) -> dict:
    """Evaluates an exported model on labelled data; prints and returns the metrics.

    The metrics are those of the task the model card records
    (`tftransfer.recipes.tasks.task_metrics`): accuracy and per-class
    P/R/F1 for a classifier, micro/macro F1 and per-label P/R/F1 for a
    multi-label model, MAE, RMSE and R² per target for a regression model.
    `data` is a `LabeledData` read for that task, whose class, label or
    target names are the model's (matched by name, so order does not
    matter; multi-label data may lack labels that none of its examples
    has).

    Raises:
        DataError: if `data` was read for another task, or has names the
            model does not know (or, for regression, lacks a target).

    Example:

    >>> evaluate("saved_models/flowers/1", from_image_folder("flowers/test"))
    accuracy: 0.9300 (macro F1 0.9281, 100 examples)
    """
    from tftransfer.recipes.tasks import get_task, task_metrics

    serving, input_name, model_names, task = load_serving(model_dir)
    if data.task != task:
        raise DataError(
            f"{data.source} was read for task={data.task!r} but the model in "
            f"{model_dir} serves task={task!r} (its model card says so). Read "
            f"the data with task={task!r}."
        )
    raw, labels = [], []
    for x, y in data.dataset.as_numpy_iterator():
        if data.input_format == "file_path":
            x = Path(x.decode()).read_bytes()
        raw.append(x)
        labels.append(y)
    labels = _in_model_order(task, np.asarray(labels), data, model_names)
    outputs = _run(serving, input_name, raw)
    served = outputs["predictions" if task == "regression" else "probabilities"]
    metrics = task_metrics(task, labels, served, model_names)
    print(get_task(task).headline(metrics))
    rows = next(
        metrics[key]
        for key in ("per_class", "per_label", "per_target")
        if key in metrics
    )
    for name, row in rows.items():
        print(
            f"  {name:20s} "
            + "  ".join(
                f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}"
                for key, value in row.items()
            )
        )
    return metrics


def _in_model_order(
    task: str, labels: np.ndarray, data, model_names: list
) -> np.ndarray:
    """`labels` of `data` (as its reader gives them for `task`) renumbered,
    or their columns reordered, to the model's output order.

    Raises:
        DataError: if `data` has names the model does not know, or lacks a
            regression target of the model.
    """
    kind = {"classification": "classes", "multi_label": "labels"}.get(task, "targets")
    unknown = sorted(set(data.class_names) - set(model_names))
    if unknown:
        raise DataError(
            f"{data.source} has {kind} {unknown} that the model does not know; "
            f"the model's {kind} are {model_names}."
        )
    absent = sorted(set(model_names) - set(data.class_names))
    if task == "regression" and absent:
        raise DataError(
            f"{data.source} lacks the model's targets {absent}; give it one "
            f"value per target: {model_names}."
        )
    position = [model_names.index(name) for name in data.class_names]
    if task == "classification":
        return np.asarray([position[label] for label in labels], np.int64)
    columns = np.zeros((len(labels), len(model_names)), np.float32)
    columns[:, position] = labels.reshape(len(labels), -1)
    return columns
