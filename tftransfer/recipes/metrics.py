"""Classification metrics as plain numbers (JSON-serialisable)."""

from __future__ import annotations

import numpy as np

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
