"""Evaluation metrics as plain numbers (JSON-serialisable): classification,
multi-label and regression."""

from __future__ import annotations

import numpy as np

from tftransfer.data.labels import default_target_names
from tftransfer.errors import DataError


def accuracy_and_crossentropy(labels, probabilities) -> tuple[float, float]:
    """Returns `(accuracy, mean cross-entropy)` of class probabilities.

    The cross-entropy is the plain one (no label smoothing, no weight
    penalty), so that models trained with different settings compare fairly.

    Example:

    >>> accuracy_and_crossentropy([0, 1], [[.9, .1], [.4, .6]])
    (1.0, 0.3081...)
    """
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    accuracy = float(np.mean(probabilities.argmax(axis=1) == labels))
    picked = probabilities[np.arange(len(labels)), labels]
    crossentropy = float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))
    return accuracy, crossentropy


def classification_metrics(
    labels,
    probabilities,
    class_names: list[str] | None = None,
    *,
    top_k: int = 5,
) -> dict:
    """Returns accuracy, top-k accuracy, per-class P/R/F1 and the confusion matrix.

    Args:
        labels: integer labels `[n]`.
        probabilities: predicted class scores `[n, num_classes]`.
        class_names: names of the classes (default `"0"`, `"1"`, ...).
        top_k: k of the top-k accuracy; capped below the number of classes
            (top-k of k classes is always 1), and at least 1.

    Returns:
        A dict of Python numbers: `accuracy`, `top_k_accuracy`, `k`,
        `macro_f1`, `num_examples`, `per_class` (name -> `precision`,
        `recall`, `f1`, `support`), `confusion_matrix` (rows: true class,
        columns: predicted class) and `class_names`.

    Example:

    >>> m = classification_metrics([0, 1, 1], [[.9, .1], [.2, .8], [.6, .4]])
    >>> m["accuracy"], m["confusion_matrix"]
    (0.6666666666666666, [[1, 0], [1, 1]])
    """
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or len(probabilities) != len(labels):
        raise DataError(
            "Expected probabilities of shape [num_examples, num_classes] matching "
            f"{len(labels)} labels. Received: shape={probabilities.shape}"
        )
    num_classes = probabilities.shape[1]
    class_names = (
        list(class_names) if class_names else [str(i) for i in range(num_classes)]
    )
    if len(class_names) != num_classes:
        raise DataError(
            f"Expected {num_classes} class names (one per output). "
            f"Received: class_names={class_names}"
        )
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    k = max(1, min(top_k, num_classes - 1))
    top = np.argsort(-probabilities, axis=1)[:, :k]
    per_class = {}
    for index, name in enumerate(class_names):
        true_positive = confusion[index, index]
        precision = _ratio(true_positive, confusion[:, index].sum())
        recall = _ratio(true_positive, confusion[index].sum())
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "support": int(confusion[index].sum()),
        }
    count = max(len(labels), 1)
    return {
        "accuracy": float((predicted == labels).sum() / count),
        "top_k_accuracy": float((top == labels[:, None]).any(axis=1).sum() / count),
        "k": k,
        "macro_f1": float(np.mean([c["f1"] for c in per_class.values()])),
        "num_examples": int(len(labels)),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "class_names": class_names,
    }


def _ratio(numerator, denominator) -> float:
    return float(numerator / denominator) if denominator else 0.0


def binary_crossentropy(labels, probabilities) -> float:
    """Returns the mean binary cross-entropy of multi-label probabilities,
    over examples and labels (plain: no label smoothing).

    Example:

    >>> binary_crossentropy([[1, 0]], [[.9, .2]])
    0.1642...
    """
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.clip(np.asarray(probabilities, np.float64), 1e-7, 1 - 1e-7)
    losses = labels * np.log(probabilities) + (1 - labels) * np.log(1 - probabilities)
    return float(-np.mean(losses))


def multi_label_metrics(
    labels, probabilities, label_names: list[str] | None = None, *, threshold=0.5
) -> dict:
    """Returns multi-label metrics at a decision threshold.

    Args:
        labels: multi-hot labels `[n, num_labels]` (0 or 1).
        probabilities: predicted label probabilities `[n, num_labels]`.
        label_names: names of the labels (default `"0"`, `"1"`, ...).
        threshold: a label is predicted where its probability is at least
            this.

    Returns:
        A dict of Python numbers: `subset_accuracy` (every label right),
        `micro_f1` (over all example-label pairs), `macro_f1` (mean of the
        labels' F1), `hamming_loss` (share of wrong example-label pairs),
        `threshold`, `num_examples`, `per_label` (name -> `precision`,
        `recall`, `f1`, `support`) and `label_names`.

    Example:

    >>> m = multi_label_metrics([[1, 0], [1, 1]], [[.9, .2], [.7, .4]])
    >>> m["subset_accuracy"], m["micro_f1"]
    (0.5, 0.8)
    """
    labels = np.asarray(labels).astype(bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != labels.shape or labels.ndim != 2:
        raise DataError(
            "Expected labels and probabilities of one shape [num_examples, "
            f"num_labels]. Received: labels {labels.shape}, probabilities "
            f"{probabilities.shape}"
        )
    names = _names(label_names, labels.shape[1], "label")
    predicted = probabilities >= threshold
    true_positive = (predicted & labels).sum(axis=0)
    predicted_count, actual = predicted.sum(axis=0), labels.sum(axis=0)
    per_label = {}
    for index, name in enumerate(names):
        precision = _ratio(true_positive[index], predicted_count[index])
        recall = _ratio(true_positive[index], actual[index])
        per_label[name] = {
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "support": int(actual[index]),
        }
    count = max(len(labels), 1)
    return {
        "subset_accuracy": float((predicted == labels).all(axis=1).sum() / count),
        "micro_f1": _ratio(
            2 * true_positive.sum(), predicted_count.sum() + actual.sum()
        ),
        "macro_f1": float(np.mean([row["f1"] for row in per_label.values()])),
        "hamming_loss": float(np.mean(predicted != labels)) if len(labels) else 0.0,
        "threshold": float(threshold),
        "num_examples": int(len(labels)),
        "per_label": per_label,
        "label_names": names,
    }


def regression_metrics(targets, predictions, target_names=None) -> dict:
    """Returns regression metrics, over all targets and per target.

    Args:
        targets: true values `[n, num_targets]` (or `[n]`).
        predictions: predicted values of the same shape.
        target_names: names of the targets (default `"target"`, or
            `"target_0"`, `"target_1"`, ...).

    Returns:
        A dict of Python numbers: `mae`, `rmse`, `r2` (means over the
        targets), `num_examples`, `per_target` (name -> `mae`, `rmse`,
        `r2`) and `target_names`. R² is 1 for perfect predictions and 0 for
        predicting the mean; it is 0 for a target that does not vary.

    Example:

    >>> m = regression_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    >>> m["mae"], round(m["r2"], 3)
    (0.3333333333333333, 0.5)
    """
    targets = np.asarray(targets, dtype=np.float64)
    targets = targets.reshape(len(targets), -1)
    predictions = np.asarray(predictions, dtype=np.float64)
    predictions = predictions.reshape(len(predictions), -1)
    if predictions.shape != targets.shape:
        raise DataError(
            "Expected predictions of the targets' shape [num_examples, "
            f"num_targets]. Received: targets {targets.shape}, predictions "
            f"{predictions.shape}"
        )
    width = targets.shape[1]
    names = list(target_names) if target_names else default_target_names(width)
    if len(names) != width:
        raise DataError(
            f"Expected {width} target names (one per output). "
            f"Received: target_names={names}"
        )
    errors = predictions - targets
    spread = ((targets - targets.mean(axis=0)) ** 2).sum(axis=0)
    per_target = {}
    for index, name in enumerate(names):
        squared = float((errors[:, index] ** 2).sum())
        per_target[name] = {
            "mae": float(np.mean(np.abs(errors[:, index]))) if len(targets) else 0.0,
            "rmse": float(np.sqrt(squared / max(len(targets), 1))),
            "r2": 1.0 - squared / spread[index] if spread[index] > 0 else 0.0,
        }
    return {
        **{
            key: float(np.mean([row[key] for row in per_target.values()]))
            for key in ("mae", "rmse", "r2")
        },
        "num_examples": int(len(targets)),
        "per_target": per_target,
        "target_names": names,
    }


def _names(names, count: int, what: str) -> list[str]:
    names = list(names) if names else [str(i) for i in range(count)]
    if len(names) != count:
        raise DataError(
            f"Expected {count} {what} names (one per output). "
            f"Received: {what}_names={names}"
        )
    return names
