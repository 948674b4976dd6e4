"""Callbacks the recipes train with: NaN guard and resumable training state."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import keras
import numpy as np

from tftransfer import atomic
from tftransfer.errors import TrainingError


class LossNotFiniteError(TrainingError):
    """The training loss became NaN or infinite (raised by `NaNGuard`)."""


class NaNGuard(keras.callbacks.Callback):
    """Stops training with a `TrainingError` as soon as the loss is NaN or inf.

    Unlike `keras.callbacks.TerminateOnNaN`, which ends `fit()` quietly, this
    raises a `LossNotFiniteError` (a `TrainingError`) naming the epoch and
    step and suggesting a fix.

    Args:
        learning_rate: `(setting name, value)` of the (peak) learning rate
            the advice names, e.g. `("fine_tune_learning_rate", 3e-3)`;
            `None` names the optimizer's `learning_rate` (a schedule's
            value at its first step beyond the warm-up is not known here,
            so pass the peak when there is one).

    Example:

    >>> model.fit(data, callbacks=[NaNGuard(("learning_rate", 1e-3))])
    """

    def __init__(self, learning_rate: tuple[str, float] | None = None):
        super().__init__()
        self.learning_rate = learning_rate
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        name, value = self.learning_rate or (
            "learning_rate",
            float(np.asarray(self.model.optimizer.learning_rate)),
        )
        raise LossNotFiniteError(
            f"The training loss became {float(loss)} at epoch {self._epoch + 1}, "
            f"step {batch + 1}. Lower {name} (it is {value:.3g}; try "
            f"{name}={value / 10:.3g}), enable gradient clipping, or check the "
            "inputs for NaN values."
        )


class TrainingState(keras.callbacks.Callback):
    """Checkpoints everything a killed run needs to resume, and stops early.

    At the end of every epoch the model's variables (weights and the states
    of its random seeds), the optimizer state, the epoch number, the history
    so far and the early-stopping state are
    written to one file, `<directory>/state.npz`, through a temporary
    sibling renamed into place: a run killed at any moment (even SIGKILL)
    leaves the previous complete checkpoint. `restore()` loads it before
    training resumes, so the run ends after the same number of epochs, none
    lost or repeated (and, with the data order resumed too, on the same
    weights as an uninterrupted run). The best weights seen so far (by `monitor`) are kept
    in `best-<epoch>.weights.npz` and restored at the end of training.

    Under a multi-worker strategy every worker restores the same checkpoint,
    the chief's, from a `directory` they all can read (as Keras'
    `BackupAndRestore` does), so all resume at the same epoch. Only the
    chief writes there (`write=True`); every other worker (`write=False`)
    keeps its best weights in a private temporary folder, removed at the
    end of training, so that every worker ends on the same weights.

    Args:
        directory: where the checkpoint files live (shared by all workers).
        monitor: the logged value that early stopping watches.
        patience: epochs without improvement before stopping; `None` never
            stops early.
        restore_best_weights: whether to end with the best weights.
        write: whether this process writes the checkpoint files (the chief
            worker); the others read them.

    Example:

    >>> state = TrainingState("runs/1/phase1", patience=3)
    >>> initial_epoch = state.restore(model)
    >>> model.fit(data, epochs=10, initial_epoch=initial_epoch,
    ...           callbacks=[state])
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        monitor: str = "val_loss",
        patience: int | None = None,
        restore_best_weights: bool = True,
        write: bool = True,
    ):
        super().__init__()
        self.directory = Path(directory)
        self.monitor = monitor
        self.patience = patience
        self.restore_best_weights = restore_best_weights
        self.write = write
        self.history: dict[str, list[float]] = {}
        self.finished = False
        self._best: float | None = None
        self._best_path: Path | None = None
        # Where this process writes best weights; created when first needed
        # on non-writing workers.
        self._best_directory: Path | None = self.directory if write else None
        self._private: tempfile.TemporaryDirectory | None = None
        self._wait = 0
        self._epochs_done = 0

    @property
    def path(self) -> Path:
        return self.directory / "state.npz"

    def restore(self, model: keras.Model) -> int:
        """Loads the last checkpoint into `model` and its optimizer.

        Returns:
            The number of epochs already done (0 without a checkpoint): the
            `initial_epoch` to pass to `fit()`.
        """
        self.set_model(model)
        if not self.path.exists():
            return 0
        with np.load(self.path) as arrays:
            meta = json.loads(str(arrays["meta"]))
            _assign(model.variables, arrays, "w")
            _assign(_optimizer_variables(model), arrays, "o")
        self.history = meta["history"]
        self.finished = meta["finished"]
        self._best = meta["best"]
        best_file = meta["best_file"]
        self._best_path = self.directory / best_file if best_file else None
        self._wait = meta["wait"]
        self._epochs_done = int(meta["epoch"])
        return self._epochs_done

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        if self.monitor in logs and self._improved(float(logs[self.monitor])):
            self._best = float(logs[self.monitor])
            self._wait = 0
            if self.restore_best_weights:
                self._save_best(epoch)
        else:
            self._wait += 1
        if self.patience is not None and self._wait >= self.patience:
            self.finished = True
            self.model.stop_training = True
        self._save(epoch + 1)

    def on_train_end(self, logs=None):
        self.load_best_weights()
        if self._private is not None:
            # The model now holds the best weights; the private copy goes.
            self._private.cleanup()
            self._private = self._best_directory = self._best_path = None

    def load_best_weights(self) -> None:
        """Loads the best weights seen, where `restore_best_weights` is set."""
        if self.restore_best_weights and self._best_path is not None:
            with np.load(self._best_path) as arrays:
                _assign(self.model.weights, arrays, "w")

    def _improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        lower_is_better = "acc" not in self.monitor and "auc" not in self.monitor
        if self._best is None:
            return True
        return value < self._best if lower_is_better else value > self._best

    def _save_best(self, epoch: int) -> None:
        if self._best_directory is None:
            self._private = tempfile.TemporaryDirectory(prefix="tftransfer-best-")
            self._best_directory = Path(self._private.name)
        path = self._best_directory / f"best-{epoch + 1}.weights.npz"
        atomic.save_npz(path, _arrays(self.model.weights, "w"))
        self._best_path = path

    def _save(self, epochs_done: int) -> None:
        self._epochs_done = epochs_done
        if self.write:
            # Variables, not only weights: the random seeds' states too, so
            # that dropout continues as in an uninterrupted run.
            arrays = _arrays(self.model.variables, "w")
            arrays.update(_arrays(_optimizer_variables(self.model), "o"))
            arrays["meta"] = np.array(json.dumps(self._meta()))
            atomic.save_npz(self.path, arrays)
        # Only after the state names the new best file: older ones go.
        if self._best_directory is not None:
            for stale in self._best_directory.glob("best-*.weights.npz"):
                if stale != self._best_path:
                    stale.unlink(missing_ok=True)

    def _meta(self) -> dict:
        return {
            "epoch": self._epochs_done,
            "history": self.history,
            "finished": self.finished,
            "best": self._best,
            "best_file": self._best_path.name if self._best_path else None,
            "wait": self._wait,
        }


def _optimizer_variables(model: keras.Model) -> list:
    optimizer = model.optimizer
    if optimizer is None:
        return []
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    return list(optimizer.variables)


def _arrays(variables: list, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}{i}": np.asarray(v.numpy()) for i, v in enumerate(variables)}


def _assign(variables: list, arrays, prefix: str) -> None:
    stored = sum(
        1 for key in arrays.files if key.startswith(prefix) and key[1:].isdigit()
    )
    if stored != len(variables):
        raise TrainingError(
            f"The checkpoint holds {stored} {'weights' if prefix == 'w' else 'optimizer variables'} "
            f"but the model has {len(variables)}: it was written by a different "
            "model or recipe settings. Start with a new run directory, or delete "
            "the old checkpoint."
        )
    for i, variable in enumerate(variables):
        value = arrays[f"{prefix}{i}"]
        if tuple(value.shape) != tuple(variable.shape):
            raise TrainingError(
                f"Checkpoint value {prefix}{i} has shape {value.shape} but variable "
                f"{getattr(variable, 'path', variable.name)} has shape "
                f"{tuple(variable.shape)}. Start with a new run directory."
            )
        variable.assign(value)
