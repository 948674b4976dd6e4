"""The run report: plots, per-class metrics, confident mistakes, one HTML page.

`write_report()` turns what a run produced (its metrics as numbers, its
training history, and the test predictions) into files a person reads:
`metrics.json`, a per-class (per-label, per-target) CSV,
`training_curves.png`, a picture of the errors, the worst predictions
(image thumbnails or text snippets) and `report.html`, which shows all of
it in one self-contained page. Given an `explainer` (see `write_report()`),
a classifier's most confidently wrong and typical correct predictions come
with their attributions: heat maps over the images, words shaded by how
much they carried the prediction. Each task has its own numbers and picture:

| task | numbers | picture |
| --- | --- | --- |
| classification | accuracy, top-k, macro F1, per-class P/R/F1 | `confusion_matrix.png` |
| multi_label | micro/macro F1, subset accuracy, per-label P/R/F1 | `per_label_f1.png` |
| regression | MAE, RMSE, R², per target | `predicted_vs_true.png` |

The numbers come from `tftransfer.recipes.tasks.task_metrics`; this module
only presents them. Plots need `matplotlib` (`pip install
tftransfer[report]`).
"""

from __future__ import annotations

import csv
import html
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tftransfer.errors import ConfigError

SNIPPET_CHARS = 300
THUMBNAIL_SIZE = 96
# Top words or regions listed beside each explained example.
TOP_PARTS = 5


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise ConfigError(
            "The run report's plots need matplotlib. Install it with "
            "`pip install 'tftransfer[report]'` (or `pip install matplotlib`)."
        ) from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, figure, path: str | os.PathLike) -> Path:
    """Writes `figure` to the PNG `path` and closes it."""
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def plot_training_curves(
    history: Mapping[str, Sequence[float]], path: str | os.PathLike
) -> Path:
    """Plots the loss and the task's metric per epoch, train and
    validation, to a PNG.

    Args:
        history: `keras.callbacks.History.history`: lists per epoch under
            `loss` and `val_loss`, and the task's metric (`accuracy`,
            `binary_accuracy` or `mae`) and its `val_` twin (missing ones
            are left out).
        path: The PNG file to write.

    Returns:
        The path written.

    Example:

    >>> plot_training_curves(recipe.history.history, "runs/x/training_curves.png")
    """
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    # The task's metric beside the loss: accuracy, binary_accuracy, mae.
    task_metric = next(
        (k for k in history if k != "loss" and not k.startswith("val_")), "accuracy"
    )
    for axis, metric in zip(axes, ("loss", task_metric), strict=True):
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            values = history.get(key) or []
            if values:
                epochs = range(1, len(values) + 1)
                axis.plot(epochs, values, marker="o", label=label)
        axis.set_title(metric)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend()
    return _save(plt, figure, path)


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | os.PathLike
) -> Path:
    """Plots a confusion matrix (rows: true class, columns: predicted) to a PNG.

    Cells show counts; colours show each row's share, so classes of
    different sizes compare.

    Example:

    >>> plot_confusion_matrix(metrics["confusion_matrix"],
    ...                       metrics["class_names"], "confusion_matrix.png")
    """
    plt = _pyplot()
    counts = np.asarray(matrix, dtype=np.int64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.6 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = range(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if len(class_names) <= 30:
        for (row, column), count in np.ndenumerate(counts):
            colour = "white" if shares[row, column] > 0.5 else "black"
            axis.text(column, row, str(count), ha="center", va="center", color=colour)
    return _save(plt, figure, path)


def plot_per_label_f1(
    per_label: Mapping[str, Mapping[str, float]], path: str | os.PathLike
) -> Path:
    """Plots each label's F1 (multi-label) as horizontal bars, to a PNG.

    Example:

    >>> plot_per_label_f1(metrics["per_label"], "per_label_f1.png")
    """
    plt = _pyplot()
    names = list(per_label)
    scores = [per_label[name]["f1"] for name in names]
    figure, axis = plt.subplots(figsize=(6, max(2.5, 0.35 * len(names) + 1)))
    axis.barh(range(len(names)), scores, color="tab:blue")
    axis.set_yticks(range(len(names)), names)
    axis.invert_yaxis()
    axis.set_xlim(0.0, 1.0)
    axis.set_xlabel("F1 at threshold 0.5")
    axis.grid(alpha=0.3, axis="x")
    return _save(plt, figure, path)


def plot_scores(
    names: Sequence[str],
    scores: Mapping[str, Sequence[float | None]],
    path: str | os.PathLike,
    *,
    title: str = "",
) -> Path:
    """Plots several scores of the same items as horizontal bars, one panel
    per score, items in the given order (top first), to a PNG.

    Each panel has its own scale (scores such as LogME and a probe accuracy
    are not comparable); a missing score (`None`) leaves its bar out.

    Args:
        names: The items, for example ranked candidates.
        scores: `{score name: one value (or None) per item}`.
        path: The PNG file to write.
        title: The figure's title.

    Example:

    >>> plot_scores(["a", "b"], {"logme": [1.2, 0.4]}, "rank.png")
    """
    plt = _pyplot()
    height = max(2.5, 0.35 * len(names) + 1.2)
    figure, axes = plt.subplots(
        1, len(scores), figsize=(3.2 * len(scores) + 2.5, height), sharey=True
    )
    axes = np.atleast_1d(axes)
    positions = np.arange(len(names))
    for axis, (score, values) in zip(axes, scores.items(), strict=True):
        shown = [np.nan if value is None else value for value in values]
        bars = axis.barh(positions, shown, color="tab:blue")
        axis.bar_label(bars, fmt="%.3f", padding=2, fontsize=8)
        axis.margins(x=0.25)
        axis.set_title(score)
        axis.grid(alpha=0.3, axis="x")
        axis.axvline(0.0, color="grey", linewidth=0.8)
    axes[0].set_yticks(positions, names)
    axes[0].invert_yaxis()
    if title:
        figure.suptitle(title)
    return _save(plt, figure, path)


def plot_predicted_vs_true(
    targets: np.ndarray,
    predictions: np.ndarray,
    target_names: Sequence[str],
    path: str | os.PathLike,
) -> Path:
    """Plots predicted against true values (regression), one colour per
    target, with the diagonal of perfect predictions, to a PNG.

    Example:

    >>> plot_predicted_vs_true(y, recipe.predict(test), ["price"], "scatter.png")
    """
    plt = _pyplot()
    targets = np.asarray(targets, np.float64).reshape(len(targets), -1)
    predictions = np.asarray(predictions, np.float64).reshape(len(targets), -1)
    figure, axis = plt.subplots(figsize=(5, 5))
    for index, name in enumerate(target_names):
        axis.scatter(
            targets[:, index], predictions[:, index], s=12, alpha=0.6, label=name
        )
    values = np.concatenate([targets.ravel(), predictions.ravel()])
    low, high = (values.min(), values.max()) if values.size else (0.0, 1.0)
    axis.plot([low, high], [low, high], color="grey", linewidth=1)
    axis.set_xlabel("true")
    axis.set_ylabel("predicted")
    axis.grid(alpha=0.3)
    if len(target_names) > 1:
        axis.legend()
    return _save(plt, figure, path)


def worst_predictions(
    task: str, labels: np.ndarray, outputs: np.ndarray, count: int
) -> list[int]:
    """Returns the indices of up to `count` worst predictions, worst first.

    Classification: the wrong ones, most confident first (see
    `confidently_wrong()`). Multi-label: examples with a wrong label at
    threshold 0.5, by their largest |probability - label|. Regression: by
    the sum of absolute errors.

    Example:

    >>> worst_predictions("regression", np.array([[1.0], [2.0]]),
    ...                   np.array([[1.1], [3.0]]), 5)
    [1, 0]
    """
    if task == "classification":
        return confidently_wrong(labels, outputs, count)
    labels = np.asarray(labels, np.float64).reshape(len(labels), -1)
    outputs = np.asarray(outputs, np.float64).reshape(len(labels), -1)
    errors = np.abs(outputs - labels)
    if task == "multi_label":
        wrong = np.flatnonzero(((outputs >= 0.5) != (labels >= 0.5)).any(axis=1))
        worst = errors[wrong].max(axis=1)
    else:
        wrong, worst = np.arange(len(labels)), errors.sum(axis=1)
    order = np.argsort(-worst, kind="stable")
    return [int(i) for i in wrong[order][:count]]


def confidently_wrong(
    labels: np.ndarray, probabilities: np.ndarray, count: int
) -> list[int]:
    """Returns the indices of up to `count` wrong predictions, most confident first.

    Example:

    >>> confidently_wrong(np.array([0, 1]), np.array([[.1, .9], [.4, .6]]), 5)
    [0]
    """
    labels = np.asarray(labels).reshape(-1)
    probabilities = np.asarray(probabilities)
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    order = np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")
    return [int(i) for i in wrong[order][:count]]


def typical_correct(
    labels: np.ndarray, probabilities: np.ndarray, count: int
) -> list[int]:
    """Returns the indices of up to `count` typical correct predictions.

    One per class, in class order: of the class's correct predictions, the
    one whose confidence is the median (the lower middle one of an even
    number), so the report shows how the model usually decides, not its
    easiest cases.

    Example:

    >>> typical_correct(np.array([0, 0, 0, 1]),
    ...                 np.array([[.9, .1], [.6, .4], [.7, .3], [.2, .8]]), 5)
    [2, 3]
    """
    labels = np.asarray(labels).reshape(-1)
    probabilities = np.asarray(probabilities)
    predicted = probabilities.argmax(axis=1)
    chosen = []
    for label in range(probabilities.shape[1]):
        right = np.flatnonzero((predicted == labels) & (labels == label))
        if len(right):
            order = np.argsort(probabilities[right, label], kind="stable")
            chosen.append(int(right[order[(len(right) - 1) // 2]]))
    return chosen[:count]


def write_report(
    run_dir: str | os.PathLike,
    *,
    metrics: Mapping[str, Any],
    history: Mapping[str, Sequence[float]],
    labels: np.ndarray,
    probabilities: np.ndarray,
    inputs: Sequence[Any],
    input_format: str,
    title: str,
    settings: Mapping[str, Any] | None = None,
    confidently_wrong_count: int = 12,
    skipped: Sequence[str] = (),
    fallbacks: Sequence[str] = (),
    explainer: Callable[[Sequence[Any]], Sequence[Any]] | None = None,
    typical_correct_count: int = 5,
) -> Path:
    """Writes the run report files into `run_dir`; returns `report.html`.

    Args:
        run_dir: The run folder.
        metrics: What `tftransfer.recipes.tasks.task_metrics()` returned
            for the held-out split (its `"task"` says which report to
            write; classification if absent, as `classification_metrics()`
            returns), with `"split"` naming the split (`"test"` if absent).
        history: Per-epoch training history (`History.history`).
        labels: True labels of the test examples: class indices `[n]`,
            multi-hot vectors or targets `[n, outputs]`.
        probabilities: The model's outputs `[n, outputs]`: class or label
            probabilities, or predicted values (regression).
        inputs: The raw test inputs, in the same order: strings (text),
            file paths or encoded image bytes, or pixel arrays.
        input_format: `LabeledData.input_format` of `inputs`.
        title: The page title (the run's name).
        settings: The run's settings, shown at the end of the page.
        confidently_wrong_count: How many of the worst predictions to show.
        skipped: The inputs the reader left out, with the reason
            (`LabeledData.skipped`): counted and listed in the report.
        fallbacks: The inputs read by a fallback (`LabeledData.fallbacks`,
            e.g. text files that are not UTF-8): counted and listed.
        explainer: Classification: a function from raw inputs (texts,
            encoded image bytes, image file paths or pixel arrays) to one
            `tftransfer.explain.Explanation` each, of the predicted class,
            such as `functools.partial(tftransfer.explain.explain, recipe)`.
            With it, the most confidently wrong predictions and a new
            section of typical correct ones (`typical_correct()`) show
            their attributions: heat maps beside the thumbnails
            (`<section>/NN_attributions.png`), shaded words, the top words
            or regions (also in `confidently_wrong.json` and
            `typical_correct.json`).
        typical_correct_count: How many typical correct predictions to
            explain (one per class, at most this many).

    Returns:
        The path of `report.html`.

    Example:

    >>> write_report("runs/bbc", metrics=metrics, history=history.history,
    ...              labels=y, probabilities=p, inputs=texts,
    ...              input_format="text", title="bbc",
    ...              explainer=functools.partial(tftransfer.explain.explain, recipe))
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    task = metrics.get("task", "classification")
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    rows_key, column = _ROWS[task]
    _write_per_class_csv(metrics[rows_key], column, run_dir / f"{_CSV[task]}.csv")
    curves = plot_training_curves(history, run_dir / "training_curves.png")
    picture = _picture(task, metrics, labels, probabilities, run_dir)
    explain = explainer if task == "classification" else None
    common = (task, labels, probabilities, inputs, input_format, metrics[_NAMES[task]])
    worst = worst_predictions(task, labels, probabilities, confidently_wrong_count)
    sections = [_write_examples(run_dir, _WORST, worst, *common, explain)]
    if explain is not None:
        typical = typical_correct(labels, probabilities, typical_correct_count)
        sections.append(_write_examples(run_dir, _TYPICAL, typical, *common, explain))
    data_notes = _data_notes(skipped, fallbacks)
    page = _page(
        run_dir, title, metrics, curves, picture, sections, settings or {}, data_notes
    )
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


# Per task: the metrics' rows, the CSV's first column and file name, the
# key of the output names, and the picture's title.
_ROWS = {
    "classification": ("per_class", "class"),
    "multi_label": ("per_label", "label"),
    "regression": ("per_target", "target"),
}
_CSV = {
    "classification": "per_class",
    "multi_label": "per_label",
    "regression": "per_target",
}
_NAMES = {
    "classification": "class_names",
    "multi_label": "label_names",
    "regression": "target_names",
}
_PICTURES = {
    "classification": "Confusion matrix",
    "multi_label": "F1 per label",
    "regression": "Predicted vs true",
}


def _picture(task, metrics, labels, outputs, run_dir: Path) -> Path:
    """The task's picture of the errors."""
    if task == "multi_label":
        return plot_per_label_f1(metrics["per_label"], run_dir / "per_label_f1.png")
    if task == "regression":
        return plot_predicted_vs_true(
            labels, outputs, metrics["target_names"], run_dir / "predicted_vs_true.png"
        )
    return plot_confusion_matrix(
        metrics["confusion_matrix"],
        metrics["class_names"],
        run_dir / "confusion_matrix.png",
    )


def _write_per_class_csv(rows: Mapping[str, Mapping], column: str, path: Path):
    """One row per class (label, target): its metrics, 4 decimals."""
    keys = list(next(iter(rows.values()), {}))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([column, *keys])
        for name, row in rows.items():
            writer.writerow(
                [name, *(f"{row[k]:.4f}" if k != "support" else row[k] for k in keys)]
            )


def _described(task: str, label, output, names) -> tuple[str, str, dict]:
    """`(true, predicted, score)` of one example, for the mistakes list."""
    if task == "classification":
        predicted = int(np.argmax(output))
        return (
            names[int(label)],
            names[predicted],
            {"confidence": float(output[predicted])},
        )
    label, output = np.ravel(label), np.ravel(output)
    if task == "multi_label":

        def listed(hot):
            return ", ".join(n for n, on in zip(names, hot, strict=True) if on)

        return (
            listed(label >= 0.5) or "(none)",
            listed(output >= 0.5) or "(none)",
            {"confidence": float(np.abs(output - label).max())},
        )

    def values(row):
        return ", ".join(f"{n}={v:.4g}" for n, v in zip(names, row, strict=True))

    return values(label), values(output), {"error": float(np.abs(output - label).sum())}


# The sections of explained examples: their files' name.
_WORST = "confidently_wrong"
_TYPICAL = "typical_correct"


def _raw(value, input_format: str):
    """An input as `tftransfer.explain.explain()` takes it."""
    if input_format == "file_path":
        return value.decode() if isinstance(value, bytes) else str(value)
    return value


def _write_examples(
    run_dir,
    section,
    indices,
    task,
    labels,
    probabilities,
    inputs,
    input_format,
    names,
    explain,
):
    """Writes `<section>.json` (and thumbnails, heat maps into `<section>/`);
    returns `(section, rows, explanations)`, `explanations` being `None`
    without `explain`."""
    from tftransfer.explain import render

    explanations = None
    if explain is not None and indices:
        explanations = explain([_raw(inputs[i], input_format) for i in indices])
    rows = []
    folder = run_dir / section
    for rank, index in enumerate(indices):
        true, predicted, score = _described(
            task, labels[index], probabilities[index], names
        )
        row = {"index": index, "true": true, "predicted": predicted, **score}
        value = inputs[index]
        if input_format == "text":
            text = (
                value.decode("utf-8", "replace")
                if isinstance(value, bytes)
                else str(value)
            )
            row["text"] = " ".join(text.split())[:SNIPPET_CHARS]
        else:
            folder.mkdir(exist_ok=True)
            thumbnail = folder / f"{rank:02d}.png"
            _save_thumbnail(value, input_format, thumbnail)
            row["image"] = str(thumbnail.relative_to(run_dir))
            if input_format == "file_path":
                row["file"] = value.decode() if isinstance(value, bytes) else str(value)
        if explanations is not None:
            explanation = explanations[rank]
            row["explanation"] = {
                "method": explanation.method,
                "top": [[part, value] for part, value in explanation.top(TOP_PARTS)],
                "completeness_gap": explanation.completeness_gap,
                **({"note": explanation.note} if explanation.note else {}),
            }
            if explanation.words is None:
                heat_map = folder / f"{rank:02d}_attributions.png"
                render.write_png(render.overlay(explanation), heat_map, THUMBNAIL_SIZE)
                row["attributions_image"] = str(heat_map.relative_to(run_dir))
        rows.append(row)
    (run_dir / f"{section}.json").write_text(json.dumps(rows, indent=2) + "\n")
    return section, rows, explanations


def _save_thumbnail(value, input_format: str, path: Path) -> None:
    import tensorflow as tf

    if input_format == "pixels":
        image = tf.convert_to_tensor(value)
    else:
        data = tf.io.read_file(value) if input_format == "file_path" else value
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.resize(
        image, (THUMBNAIL_SIZE, THUMBNAIL_SIZE), preserve_aspect_ratio=True
    )
    image = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    tf.io.write_file(str(path), tf.io.encode_png(image[..., :3]))


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
td:first-child,th:first-child{text-align:left}
.cards{display:flex;gap:1em}.card{border:1px solid #ccc;padding:.6em 1.2em;border-radius:6px}
.card b{font-size:1.6em;display:block}
.mistake{border-bottom:1px solid #eee;padding:.5em 0}
img.plot{max-width:100%}
pre{background:#f6f6f6;padding:1em;overflow:auto}
"""


def _data_notes(skipped: Sequence[str], fallbacks: Sequence[str], shown: int = 20):
    """The report's section on inputs skipped or read by a fallback."""
    e = html.escape
    parts = []
    for heading, entries in (
        ("inputs skipped", skipped),
        ("inputs read by a fallback", fallbacks),
    ):
        if not entries:
            continue
        more = (
            f"<li>... and {len(entries) - shown} more</li>"
            if len(entries) > shown
            else ""
        )
        items = "".join(f"<li>{e(str(entry))}</li>" for entry in entries[:shown])
        parts.append(f"<p><b>{len(entries)} {heading}</b></p><ul>{items}{more}</ul>")
    return f"<h2>Data</h2>{''.join(parts)}" if parts else ""


def _cards(task: str, metrics: Mapping[str, Any]) -> list[tuple[str, Any]]:
    if task == "multi_label":
        main = [
            ("micro F1", f"{metrics['micro_f1']:.3f}"),
            ("macro F1", f"{metrics['macro_f1']:.3f}"),
            ("subset accuracy", f"{metrics['subset_accuracy']:.3f}"),
        ]
    elif task == "regression":
        main = [
            ("MAE", f"{metrics['mae']:.4g}"),
            ("RMSE", f"{metrics['rmse']:.4g}"),
            ("R²", f"{metrics['r2']:.3f}"),
        ]
    else:
        main = [
            ("accuracy", f"{metrics['accuracy']:.3f}"),
            (f"top-{metrics['k']} accuracy", f"{metrics['top_k_accuracy']:.3f}"),
            ("macro F1", f"{metrics['macro_f1']:.3f}"),
        ]
    return [
        *main,
        (f"{metrics.get('split', 'test')} examples", metrics["num_examples"]),
        *((("model kept", metrics["chosen"]),) if "chosen" in metrics else ()),
    ]


def _examples_html(run_dir, task, section, rows, explanations) -> str:
    """One section of examples (worst or typical), with their attributions."""
    from tftransfer.explain import render

    e = html.escape
    items = []
    for rank, row in enumerate(rows):
        score = (
            f"({row['confidence']:.1%})"
            if "confidence" in row
            else f"(error {row['error']:.4g})"
        )
        header_html = (
            f"true <b>{e(row['true'])}</b>, predicted <b>{e(row['predicted'])}</b> "
            f"{score}"
        )
        explanation = explanations[rank] if explanations is not None else None
        if "text" in row:
            shown = (
                render.shaded_text(explanation) if explanation else f"{e(row['text'])}…"
            )
            body = f"<div>{shown}</div>"
        else:
            images = [row["image"], *filter(None, [row.get("attributions_image")])]
            pictures = " ".join(
                f'<img src="{render.data_uri(run_dir / image)}" alt="example">'
                for image in images
            )
            body = f"{pictures} <small>{e(row.get('file', ''))}</small>"
        if explanation is not None:
            body += (
                f"<div><small>{e(render.summary(explanation, TOP_PARTS))}</small></div>"
            )
        items.append(f'<div class="mistake">{header_html}{body}</div>')
    if section == _TYPICAL:
        title = "Typical correct predictions"
        empty = "<p>No correct predictions on this split.</p>"
    else:
        title = "Largest errors" if task == "regression" else "Most confidently wrong"
        empty = "<p>No mistakes on this split.</p>"
    legend = ""
    if explanations:
        parts = "words" if "text" in rows[0] else "regions of the heat map"
        legend = (
            f"<p><small>Red {parts} carried the predicted class, blue ones spoke "
            "against it; the strongest is fully coloured. Hover a word for "
            "its attribution. Below each: the method, the predicted class "
            f"with its probability and the {TOP_PARTS} parts that carried it "
            "most.</small></p>"
        )
    return f"<h2>{title}</h2>{legend}{''.join(items) or empty}"


def _page(
    run_dir, title, metrics, curves, picture, sections, settings, data_notes
) -> str:
    from tftransfer.explain.render import data_uri

    e = html.escape
    task = metrics.get("task", "classification")
    cards = "".join(
        f'<div class="card">{e(label)}<b>{value}</b></div>'
        for label, value in _cards(task, metrics)
    )
    rows_key, column = _ROWS[task]
    rows = metrics[rows_key]
    keys = list(next(iter(rows.values()), {}))
    header = "".join(f"<th>{e(key)}</th>" for key in [column, *keys])
    table = "".join(
        f"<tr><td>{e(name)}</td>"
        + "".join(
            f"<td>{row[k]}</td>" if k == "support" else f"<td>{row[k]:.3f}</td>"
            for k in keys
        )
        + "</tr>"
        for name, row in rows.items()
    )
    examples = "".join(_examples_html(run_dir, task, *section) for section in sections)
    picture_title = _PICTURES[task]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}: tftransfer run report</title>
<style>{_STYLE}</style></head><body>
<h1>{e(title)}</h1>
<p>Task: {e(task)}</p>
<div class="cards">{cards}</div>
<h2>Training curves</h2><img class="plot" src="{data_uri(curves)}" alt="training curves">
<h2>{picture_title}</h2><img class="plot" src="{data_uri(picture)}" alt="{picture_title.lower()}">
<h2>Per-{column} metrics</h2>
<table><tr>{header}</tr>
{table}</table>
{examples}
{data_notes}
<h2>Settings</h2><pre>{e(json.dumps(settings, indent=2, default=str))}</pre>
<p>TensorBoard logs: <code>tensorboard --logdir logs</code> in this folder.</p>
</body></html>
"""
