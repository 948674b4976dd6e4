"""The run report: plots, per-class metrics, confident mistakes, one HTML page.

`write_report()` turns what a run produced (its metrics as numbers, its
training history, and the test predictions) into files a person reads:
`metrics.json`, `per_class.csv`, `training_curves.png`,
`confusion_matrix.png`, the most confidently wrong examples (image
thumbnails or text snippets) and `report.html`, which shows all of it in one
self-contained page. The numbers come from
`tftransfer.recipes.metrics.classification_metrics`; this module only
presents them. Plots need `matplotlib` (`pip install tftransfer[report]`).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tftransfer.errors import ConfigError

SNIPPET_CHARS = 300
THUMBNAIL_SIZE = 96


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


def plot_training_curves(
    history: Mapping[str, Sequence[float]], path: str | os.PathLike
) -> Path:
    """Plots loss and accuracy per epoch, train and validation, to a PNG.

    Args:
        history: `keras.callbacks.History.history`: lists per epoch under
            `loss`, `accuracy`, `val_loss`, `val_accuracy` (missing ones are
            left out).
        path: The PNG file to write.

    Returns:
        The path written.

    Example:

    >>> plot_training_curves(recipe.history.history, "runs/x/training_curves.png")
    """
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
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
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


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
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


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
) -> Path:
    """Writes the run report files into `run_dir`; returns `report.html`.

    Args:
        run_dir: The run folder.
        metrics: What `classification_metrics()` returned for the held-out
            split, with `"split"` naming it (`"test"` if absent).
        history: Per-epoch training history (`History.history`).
        labels: True labels of the test examples `[n]`.
        probabilities: Predicted class probabilities `[n, num_classes]`.
        inputs: The raw test inputs, in the same order: strings (text),
            file paths or encoded image bytes, or pixel arrays.
        input_format: `LabeledData.input_format` of `inputs`.
        title: The page title (the run's name).
        settings: The run's settings, shown at the end of the page.
        confidently_wrong_count: How many confident mistakes to show.
        skipped: The inputs the reader left out, with the reason
            (`LabeledData.skipped`): counted and listed in the report.
        fallbacks: The inputs read by a fallback (`LabeledData.fallbacks`,
            e.g. text files that are not UTF-8): counted and listed.

    Returns:
        The path of `report.html`.

    Example:

    >>> write_report("runs/bbc", metrics=metrics, history=history.history,
    ...              labels=y, probabilities=p, inputs=texts,
    ...              input_format="text", title="bbc")
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _write_per_class_csv(metrics, run_dir / "per_class.csv")
    curves = plot_training_curves(history, run_dir / "training_curves.png")
    confusion = plot_confusion_matrix(
        metrics["confusion_matrix"],
        metrics["class_names"],
        run_dir / "confusion_matrix.png",
    )
    mistakes = _write_mistakes(
        run_dir,
        confidently_wrong(labels, probabilities, confidently_wrong_count),
        labels,
        probabilities,
        inputs,
        input_format,
        metrics["class_names"],
    )
    data_notes = _data_notes(skipped, fallbacks)
    page = _page(
        run_dir, title, metrics, curves, confusion, mistakes, settings or {}, data_notes
    )
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _write_per_class_csv(metrics: Mapping[str, Any], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        for name, row in metrics["per_class"].items():
            writer.writerow(
                [
                    name,
                    f"{row['precision']:.4f}",
                    f"{row['recall']:.4f}",
                    f"{row['f1']:.4f}",
                    row["support"],
                ]
            )


def _write_mistakes(
    run_dir, indices, labels, probabilities, inputs, input_format, class_names
):
    """Writes `confidently_wrong.json` (and thumbnails); returns the rows."""
    rows = []
    folder = run_dir / "confidently_wrong"
    for rank, index in enumerate(indices):
        predicted = int(np.argmax(probabilities[index]))
        row = {
            "index": index,
            "true": class_names[int(labels[index])],
            "predicted": class_names[predicted],
            "confidence": float(probabilities[index][predicted]),
        }
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
        rows.append(row)
    (run_dir / "confidently_wrong.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


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


def _embedded(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"data:image/png;base64,{data}"


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


def _page(
    run_dir, title, metrics, curves, confusion, mistakes, settings, data_notes
) -> str:
    e = html.escape
    cards = "".join(
        f'<div class="card">{e(label)}<b>{value}</b></div>'
        for label, value in (
            ("accuracy", f"{metrics['accuracy']:.3f}"),
            (f"top-{metrics['k']} accuracy", f"{metrics['top_k_accuracy']:.3f}"),
            ("macro F1", f"{metrics['macro_f1']:.3f}"),
            (f"{metrics.get('split', 'test')} examples", metrics["num_examples"]),
            *((("model kept", metrics["chosen"]),) if "chosen" in metrics else ()),
        )
    )
    per_class = "".join(
        f"<tr><td>{e(name)}</td><td>{row['precision']:.3f}</td><td>{row['recall']:.3f}</td>"
        f"<td>{row['f1']:.3f}</td><td>{row['support']}</td></tr>"
        for name, row in metrics["per_class"].items()
    )
    items = []
    for row in mistakes:
        header = (
            f"true <b>{e(row['true'])}</b>, predicted <b>{e(row['predicted'])}</b> "
            f"({row['confidence']:.1%})"
        )
        if "text" in row:
            body = f"<div>{e(row['text'])}…</div>"
        else:
            src = _embedded(run_dir / row["image"])
            caption = e(row.get("file", ""))
            body = f'<img src="{src}" alt="example"> <small>{caption}</small>'
        items.append(f'<div class="mistake">{header}{body}</div>')
    mistakes_html = "".join(items) or "<p>No mistakes on this split.</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}: tftransfer run report</title>
<style>{_STYLE}</style></head><body>
<h1>{e(title)}</h1>
<div class="cards">{cards}</div>
<h2>Training curves</h2><img class="plot" src="{_embedded(curves)}" alt="training curves">
<h2>Confusion matrix</h2><img class="plot" src="{_embedded(confusion)}" alt="confusion matrix">
<h2>Per-class metrics</h2>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>
{per_class}</table>
<h2>Most confidently wrong</h2>{mistakes_html}
{data_notes}
<h2>Settings</h2><pre>{e(json.dumps(settings, indent=2, default=str))}</pre>
<p>TensorBoard logs: <code>tensorboard --logdir logs</code> in this folder.</p>
</body></html>
"""
