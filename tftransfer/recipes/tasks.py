"""Task kinds: what a recipe's outputs mean, how they train and are scored.

A task is a plug-in of the recipes: the head's output activation, the loss,
the metrics Keras logs, the plain validation loss that the head search and
fine-tuning's frozen-or-tuned choice compare, the labels it accepts, and the
report's numbers. `get_task(name)` returns one of `TASKS`:

- `"classification"`: one class per example; int64 class indices; softmax
  outputs; (sparse) cross-entropy; accuracy, top-k, per-class P/R/F1.
- `"multi_label"`: any number of labels per example; float32 multi-hot
  vectors `[num_labels]`; sigmoid outputs; binary cross-entropy; micro and
  macro F1, subset accuracy, per-label P/R/F1 at threshold 0.5.
- `"regression"`: float32 targets `[num_targets]`; linear outputs; mean
  squared error; MAE, RMSE and R².
"""

from __future__ import annotations

import abc

import keras
import numpy as np

from tftransfer.data.labels import default_target_names
from tftransfer.errors import ConfigError, DataError
from tftransfer.messages import short_list
from tftransfer.recipes import metrics as metrics_lib
from tftransfer.vocabulary import TASKS


class Task(abc.ABC):
    """What one task kind needs from a recipe; see the module docstring.

    Attributes:
        name: one of `tftransfer.vocabulary.TASKS`.
        activation: the activation of the head's output layer.
        headline_format: the evaluation in one line, the main metric first
            (`str.format` over the metrics).
    """

    name = ""
    activation = "linear"
    headline_format = ""

    @abc.abstractmethod
    def loss(self, label_smoothing: float) -> keras.losses.Loss:
        """The training loss."""

    def compile_metrics(self) -> list:
        """The metrics Keras logs while training."""
        return []

    @abc.abstractmethod
    def validation_loss(self, labels: np.ndarray, outputs: np.ndarray) -> float:
        """The plain loss (no smoothing, no weight penalty), so that models
        trained with different settings compare fairly."""

    def scores(self, labels: np.ndarray, outputs: np.ndarray) -> tuple:
        """A tuple to compare models by, higher is better."""
        return (-self.validation_loss(labels, outputs),)

    def describe(self, scores: tuple) -> str:
        """`scores` in words, for the log."""
        return f"validation loss {-scores[-1]:.4f}"

    @abc.abstractmethod
    def report(self, labels: np.ndarray, outputs: np.ndarray, names: list[str]) -> dict:
        """The evaluation metrics, as plain numbers."""

    def headline(self, metrics: dict) -> str:
        """The evaluation in one line (`headline_format`)."""
        return self.headline_format.format(**metrics)

    def default_names(self, labels: np.ndarray) -> list[str]:
        """Names for the outputs when neither the data nor the caller gives
        them: one per column of `labels` (`[num_examples, width]`, or
        `[num_examples]` for one column)."""
        return [str(i) for i in range(_width(labels))]

    def check_labels(self, labels: np.ndarray, names: list[str], split: str) -> None:
        """Raises a `DataError` for labels this task cannot train on."""
        if labels.ndim != 2 or labels.shape[1] != len(names):
            raise DataError(
                f"The {split} data has labels of shape {labels.shape[1:]} per "
                f"example; a {self.name} task with {len(names)} outputs "
                f"({short_list(names)}) needs [{len(names)}]. Give every "
                "split the same label or target columns."
            )


class Classification(Task):
    name = "classification"
    activation = "softmax"
    headline_format = (
        "accuracy: {accuracy:.4f} (macro F1 {macro_f1:.4f}, {num_examples} examples)"
    )

    def loss(self, label_smoothing: float) -> keras.losses.Loss:
        from tftransfer.recipes.heads import sparse_crossentropy

        return sparse_crossentropy(label_smoothing)

    def compile_metrics(self) -> list:
        return ["accuracy"]

    def validation_loss(self, labels, outputs) -> float:
        return metrics_lib.accuracy_and_crossentropy(labels, outputs)[1]

    def scores(self, labels, outputs) -> tuple:
        accuracy, crossentropy = metrics_lib.accuracy_and_crossentropy(labels, outputs)
        return accuracy, -crossentropy

    def describe(self, scores: tuple) -> str:
        return f"validation accuracy {scores[0]:.4f}, cross-entropy {-scores[1]:.4f}"

    def report(self, labels, outputs, names) -> dict:
        return metrics_lib.classification_metrics(labels, outputs, names)

    def default_names(self, labels) -> list[str]:
        return [str(i) for i in range(int(labels.max()) + 1)]

    def check_labels(self, labels, names, split) -> None:
        count = len(names)
        outside = np.flatnonzero((labels < 0) | (labels >= count))
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DataError(
                f"The {split} data has labels of shape {labels.shape[1:]} and "
                f"dtype {labels.dtype} per example; classification needs one "
                "integer class index each. For several labels per example "
                "pass task='multi_label', for numbers task='regression'."
            )
        if outside.size:
            raise DataError(
                f"The {split} data has {outside.size} labels outside 0..{count - 1} "
                f"(the {count} classes {short_list(names)}): label "
                f"{int(labels[outside[0]])} at example {int(outside[0])}. Labels "
                "must be class indices; pass class_names= with every class."
            )


class MultiLabel(Task):
    name = "multi_label"
    activation = "sigmoid"
    headline_format = (
        "micro F1: {micro_f1:.4f} (macro F1 {macro_f1:.4f}, subset accuracy "
        "{subset_accuracy:.4f}, {num_examples} examples)"
    )

    def loss(self, label_smoothing: float) -> keras.losses.Loss:
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)

    def compile_metrics(self) -> list:
        return [keras.metrics.BinaryAccuracy(name="binary_accuracy")]

    def validation_loss(self, labels, outputs) -> float:
        return metrics_lib.binary_crossentropy(labels, outputs)

    def report(self, labels, outputs, names) -> dict:
        return metrics_lib.multi_label_metrics(labels, outputs, names)

    def check_labels(self, labels, names, split) -> None:
        super().check_labels(labels, names, split)
        _refuse_values(
            labels,
            (labels != 0) & (labels != 1),
            names,
            f"The {split} data has {{count}} multi-label values that are neither "
            "0 nor 1",
            "Labels must be multi-hot vectors.",
        )


class Regression(Task):
    name = "regression"
    headline_format = (
        "MAE: {mae:.4g} (RMSE {rmse:.4g}, R² {r2:.4f}, {num_examples} examples)"
    )

    def loss(self, label_smoothing: float) -> keras.losses.Loss:
        if label_smoothing:
            raise ConfigError(
                "Label smoothing applies to class labels only; a regression "
                f"task has none. Received: label_smoothing={label_smoothing}. "
                "Leave it at 0."
            )
        return keras.losses.MeanSquaredError()

    def compile_metrics(self) -> list:
        return [keras.metrics.MeanAbsoluteError(name="mae")]

    def validation_loss(self, labels, outputs) -> float:
        labels = np.asarray(labels, np.float64)
        return float(np.mean((np.asarray(outputs, np.float64) - labels) ** 2))

    def describe(self, scores: tuple) -> str:
        return f"validation mean squared error {-scores[0]:.4g}"

    def report(self, labels, outputs, names) -> dict:
        return metrics_lib.regression_metrics(labels, outputs, names)

    def default_names(self, labels) -> list[str]:
        return default_target_names(_width(labels))

    def check_labels(self, labels, names, split) -> None:
        super().check_labels(labels, names, split)
        _refuse_values(
            labels,
            ~np.isfinite(labels),
            names,
            f"The {split} data has {{count}} regression targets that are not finite",
            "Drop those examples or fill them in.",
        )


def _width(labels: np.ndarray) -> int:
    """The columns of `[num_examples, width]` labels; 1 for `[num_examples]`."""
    return labels.shape[1] if labels.ndim > 1 else 1


def _refuse_values(labels, bad, names, problem: str, fix: str) -> None:
    """Raises a `DataError` naming the first of the `bad` label values
    (`problem` holds `{count}`), where any."""
    wrong = np.argwhere(bad)
    if wrong.size:
        row, column = (int(i) for i in wrong[0])
        raise DataError(
            f"{problem.format(count=len(wrong))}: {labels[row, column]!r} at "
            f"example {row}, column {names[column]!r}. {fix}"
        )


_TASKS = {task.name: task for task in (Classification(), MultiLabel(), Regression())}


def get_task(name: str) -> Task:
    """Returns the `Task` named `name` (one of `TASKS`).

    Raises:
        ConfigError: for any other name.

    Example:

    >>> get_task("multi_label").activation
    'sigmoid'
    """
    if not isinstance(name, str) or name not in _TASKS:
        raise ConfigError(
            f"Expected task to be one of {TASKS}. Received: task={name!r}"
        )
    return _TASKS[name]


def task_metrics(
    task: str, labels: np.ndarray, outputs: np.ndarray, names: list[str]
) -> dict:
    """Returns the evaluation metrics of `task` (`Task.report`), with
    `"task"` naming it.

    Example:

    >>> task_metrics("regression", [1.0, 2.0], [1.5, 2.0], ["price"])["mae"]
    0.25
    """
    return {"task": task, **get_task(task).report(labels, outputs, names)}
