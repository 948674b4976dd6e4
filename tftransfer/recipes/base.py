"""What `FeatureExtraction` and `FineTuning` share: strategy, data, run dir,
resumable training phases and evaluation."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import inspect
import json
import math
import numbers
import os
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tftransfer import atomic, defaults, distribute
from tftransfer.backbones.source import check_pooling
from tftransfer.errors import ConfigError, DataError
from tftransfer.messages import short_list, short_repr
from tftransfer.precision import check_precision
from tftransfer.recipes import heads, training_loop
from tftransfer.recipes.callbacks import NaNGuard, TrainingState
from tftransfer.recipes.feature_cache import DataDigest, fingerprint, paths_digest
from tftransfer.recipes.run_lock import RunLock
from tftransfer.recipes.tasks import get_task, task_metrics

# How `split` chooses the held-out part of each task's data.
_HELD_OUT_BY = {
    "classification": "of each class",
    "multi_label": "stratified by each example's rarest label",
    "regression": "at random",
}

# Settings that do not change what a phase trains, left out of its key.
_NOT_TRAINING_SETTINGS = ("steps_per_execution", "jit_compile")


def holds_run_lock(fit: Callable) -> Callable:
    """Decorates a recipe's `fit`: the chief holds the `RunLock` of
    `run_dir` while it runs (re-entrant: `FineTuning.fit` calls
    `FeatureExtraction.fit`)."""

    @functools.wraps(fit)
    def locked_fit(self, *args, **kwargs):
        if self._run_lock is not None or not self.is_chief:
            return fit(self, *args, **kwargs)
        with RunLock(self.run_dir) as lock:
            self._run_lock = lock
            try:
                return fit(self, *args, **kwargs)
            finally:
                self._run_lock = None

    return locked_fit


def _log_callbacks(log_dir: Path) -> list[keras.callbacks.Callback]:
    """A CSV history, plus TensorBoard logs where `tensorboard` is installed."""
    log_dir.mkdir(parents=True, exist_ok=True)
    callbacks = [keras.callbacks.CSVLogger(str(log_dir / "history.csv"), append=True)]
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(str(log_dir), write_graph=False))
    return callbacks


class Recipe:
    """Base class of the recipes; see `FeatureExtraction` for the arguments."""

    kind = "recipe"

    def __init__(
        self,
        backbone,
        *,
        task: str | None = None,
        head: keras.Layer | Callable | None = None,
        features: str | None = None,
        pooling: str | None = None,
        hidden_units: tuple[int, ...] = (),
        dropout: float = defaults.DROPOUT,
        label_smoothing: float = 0.0,
        learning_rate: float | str = defaults.HEAD_LEARNING_RATE,
        head_weight_decay: float | str = defaults.HEAD_WEIGHT_DECAY,
        head_epochs: int = defaults.HEAD_EPOCHS,
        patience: int | None = defaults.PATIENCE,
        batch_size: int = defaults.BATCH_SIZE,
        run_dir: str | os.PathLike | None = None,
        strategy: str | tf.distribute.Strategy = "auto",
        tpu: str | None = None,
        precision: str = defaults.PRECISION,
        jit_compile: bool | str = "auto",
        steps_per_execution: int | None = None,
        seed: int = 0,
        verbose: int | str = "auto",
        callbacks: list[keras.callbacks.Callback] | None = None,
    ):
        check_epochs("head_epochs", head_epochs)
        if patience is not None and patience < 1:
            raise ConfigError(
                "Expected patience >= 1 (or None: never stop early). "
                f"Received: patience={patience}"
            )
        check_auto_or_number("learning_rate", learning_rate, positive=True)
        check_auto_or_number("head_weight_decay", head_weight_decay)
        check_precision(precision)
        if task is not None:
            get_task(task)
        name = getattr(backbone, "name", type(backbone).__name__)
        if pooling is not None:
            check_pooling(name, pooling, heads.POOLING_MODES)
        _check_head(head, hidden_units, dropout, head_weight_decay)
        self.backbone = backbone
        self.strategy = (
            strategy
            if isinstance(strategy, tf.distribute.Strategy)
            else distribute.resolve_strategy(strategy, tpu)
        )
        self.settings = {
            "recipe": self.kind,
            "backbone": name,
            "task": task,
            "head": setting_value(head),
            "features": features,
            "pooling": pooling,
            "hidden_units": list(hidden_units),
            "dropout": dropout,
            "label_smoothing": label_smoothing,
            "learning_rate": learning_rate,
            "head_weight_decay": head_weight_decay,
            "head_epochs": head_epochs,
            "patience": patience,
            "batch_size": batch_size,
            "precision": precision,
            "jit_compile": jit_compile,
            "steps_per_execution": distribute.steps_per_execution(
                self.strategy, steps_per_execution
            ),
            "seed": seed,
        }
        self._run_dir = Path(run_dir) if run_dir is not None else None
        self.verbose = verbose
        self.callbacks = list(callbacks or [])
        self.is_chief = distribute.is_chief(self.strategy)
        self._model: keras.Model | None = None
        self._predictors: dict[str, training_loop.Predictor] = {}
        self.head_choice = head
        self._task_setting = task
        self.class_names: list[str] | None = None
        self.history: keras.callbacks.History | None = None
        self.metrics: dict | None = None
        self.backbone_layer: keras.Layer | None = None
        # Values chosen from the data for the "auto" settings.
        self.tuned: dict[str, float] = {}
        # Which model fine-tuning kept: "fine_tuned" or "frozen".
        self.chosen: str | None = None
        self._run_lock: RunLock | None = None

    @classmethod
    def argument_names(cls) -> list[str]:
        """The keyword arguments of `cls(backbone, ...)`, those its base
        classes take through `**kwargs` included.

        Example:

        >>> "unfreeze" in FineTuning.argument_names()
        True
        """
        names = []
        for klass in cls.__mro__[: cls.__mro__.index(Recipe) + 1]:
            if "__init__" in vars(klass):
                parameters = inspect.signature(klass.__init__).parameters.values()
                names += [
                    p.name
                    for p in parameters
                    if p.kind is p.KEYWORD_ONLY and p.name not in names
                ]
        return names

    @property
    def model(self) -> keras.Model | None:
        """The trained `keras.Model` from prepared inputs to the task's
        outputs (class or label probabilities, or predicted values); `None`
        before `fit()`."""
        return self._model

    @property
    def choices(self) -> dict:
        """What the recipe chose from the data, as `metrics.json` records
        it: `tuned` (the values of `"auto"` settings) and, after
        fine-tuning, `chosen` (`"fine_tuned"` or `"frozen"`, the model kept)."""
        choices = {"tuned": dict(self.tuned)}
        if self.chosen is not None:
            choices["chosen"] = self.chosen
        return choices

    @property
    def task(self) -> str | None:
        """The task: the `task` argument until `fit()`, then the task
        trained (the argument, or else the training data's)."""
        return self.settings["task"]

    @property
    def run_dir(self) -> Path:
        """Checkpoints, logs and remembered choices: the `run_dir` argument,
        or `runs/<recipe>-<hash of the settings>`.

        The default is worked out when first read, from the settings of the
        fully constructed recipe (a subclass's own settings included) but
        the task, which `fit()` may take from the data (the checkpoints
        inside are keyed by it).
        """
        if self._run_dir is None:
            settings = {k: v for k, v in self.settings.items() if k != "task"}
            self._run_dir = Path("runs") / f"{self.kind}-{fingerprint(settings)}"
        return self._run_dir

    def _phase_settings(self, phase: str) -> dict:
        """The settings that `phase`'s checkpoint belongs to: all that change
        what is trained, so not the phase's own number of epochs (more
        epochs resume the run) or how steps execute on the hardware."""
        own_epochs = "head_epochs" if phase.startswith("head") else None
        settings = {
            key: value
            for key, value in self.settings.items()
            if key not in _NOT_TRAINING_SETTINGS and key != own_epochs
        }
        settings.update({f"tuned.{k}": v for k, v in self.tuned.items()})
        return settings

    def say(self, message: str) -> None:
        """Tells the user what the recipe decided (unless `verbose=0`), on
        the chief worker only."""
        if self.verbose != 0 and self.is_chief:
            print(f"[tftransfer] {message}", flush=True)

    # Data ---------------------------------------------------------------

    def _prepare_splits(self, train, validation, class_names):
        """Starts a `fit`: forgets what an earlier `fit` chose, holds a
        validation part out of `train` when none is given, and numbers the
        validation labels as the training data's (see `_with_class_names`).

        Returns:
            `(train, validation)`; `validation` is `None` where none could be
            held out.
        """
        self.tuned = {}
        self.chosen = None
        # From here on the settings record the task trained.
        self.settings["task"] = self._task_of(train)
        if validation is None:
            train, validation = self.hold_out(train)
        validation = self._with_class_names(
            validation, class_names or getattr(train, "class_names", None), "validation"
        )
        return train, validation

    def _task_of(self, train) -> str:
        """The task to train: the `task` setting, or else the training
        data's (`LabeledData.task`; `"classification"` for a dataset).

        Raises:
            ConfigError: if the setting and the data's task differ.
        """
        setting = self._task_setting
        data_task = getattr(train, "task", None)
        if setting is not None and data_task is not None and setting != data_task:
            raise ConfigError(
                f"The recipe has task={setting!r} but the training data was read "
                f"for task={data_task!r}. Read the data with task={setting!r}, "
                "or leave the recipe's task out (it then follows the data)."
            )
        return setting or data_task or "classification"

    def hold_out(self, train):
        """Splits the validation part that `fit(train)` holds out when it is
        given no validation data, for early stopping and the "auto" choices.

        A `LabeledData` gives `defaults.HOLD_OUT` of each class (stratified,
        by `seed`; see `tftransfer.data.split` for other tasks). A dataset of
        batches gives the examples whose content hashes to one bucket in
        `round(1 / defaults.HOLD_OUT)`: chosen by content, not position, so
        a dataset that reshuffles every pass holds out the same examples
        every time.

        Args:
            train: a `LabeledData` or a dataset of batched `(inputs, labels)`.

        Returns:
            `(train, validation)`; `(train, None)` for data too small to
            hold a part out.

        Example:

        >>> train, validation = recipe.hold_out(data)
        >>> validation.num_examples
        30
        """
        if isinstance(train, tf.data.Dataset):
            return self._hold_out_batches(train)
        from tftransfer.data import split

        try:
            parts = split(
                train, validation=defaults.HOLD_OUT, seed=self.settings["seed"]
            )
        except DataError as error:
            self.say(f"No validation data, and none can be held out: {error}")
            return train, None
        self.say(
            f"No validation data: holding out {parts.validation.num_examples} of "
            f"the {train.num_examples} training examples "
            f"({defaults.HOLD_OUT:.0%}, {_HELD_OUT_BY[train.task]}) for early "
            "stopping and "
            "learning rate selection."
        )
        return parts.train, parts.validation

    def _hold_out_batches(self, train: tf.data.Dataset):
        buckets = round(1 / defaults.HOLD_OUT)
        batch_size = train.element_spec[1].shape[0] or self.global_batch_size

        def part(held_out: bool) -> tf.data.Dataset:
            def select(inputs, labels):
                fingerprints = DataDigest.example_fingerprints(inputs, labels)
                bucket = tf.math.floormod(fingerprints, buckets)
                keep = tf.equal(bucket, 0) if held_out else tf.not_equal(bucket, 0)
                return tf.nest.map_structure(
                    lambda tensor: tf.boolean_mask(tensor, keep), (inputs, labels)
                )

            return train.map(select).unbatch().batch(batch_size)

        parts = [part(held_out=False), part(held_out=True)]
        sizes = [training_loop.steps_per_epoch(p) for p in parts]
        if not all(sizes):
            self.say("No validation data, and too few examples to hold some out.")
            return train, None
        # Counted once: said, so that no pass needs to count them again.
        training, held_out = (
            p.apply(tf.data.experimental.assert_cardinality(n))
            for p, n in zip(parts, sizes, strict=True)
        )
        self.say(
            "No validation data: holding out the training examples whose "
            f"content hashes to one bucket in {buckets} (about "
            f"{defaults.HOLD_OUT:.0%}) for early stopping and learning rate "
            "selection."
        )
        return training, held_out

    def _steps_per_execution(self, steps: int) -> int:
        """The recipe's steps per execution, lowered to a divisor of the
        `steps` of an epoch: an execution never runs into the next epoch's
        batches (the phases read one iterator through all epochs)."""
        configured = min(self.settings["steps_per_execution"], max(1, steps))
        return next(n for n in range(configured, 0, -1) if steps % n == 0)

    @property
    def global_batch_size(self) -> int:
        return distribute.global_batch_size(self.settings["batch_size"], self.strategy)

    def _drop_remainder(self, num_examples: int | None) -> bool:
        """Whether training batches drop the last partial batch.

        They do, so that every step has the global batch size (as TPUs
        need), except when the training data holds less than one global
        batch: it then trains on that one smaller batch.
        """
        return num_examples is None or num_examples >= self.global_batch_size

    def _batches(self, data, training: bool = False) -> tf.data.Dataset:
        """Batched `(prepared, label)` from a `LabeledData` or a dataset
        (a dataset is used as it is batched), labels as the task reads them.

        A `LabeledData` holds its task's labels already. A dataset's labels
        follow the task, not their dtype: for `"multi_label"` and
        `"regression"` they become float32 `[batch, width]` (integer
        multi-hot vectors and integer targets, such as ages, included);
        for classification they stay as given (class indices).
        """
        if isinstance(data, tf.data.Dataset):
            if self.task in (None, "classification"):
                return data
            width = data.element_spec[1].shape[1:].num_elements()

            def as_vectors(inputs, labels):
                labels = tf.cast(labels, tf.float32)
                return inputs, tf.reshape(labels, [tf.shape(labels)[0], width or -1])

            return data.map(as_vectors)
        from tftransfer.backbones import Backbone
        from tftransfer.data import make_pipeline

        if not isinstance(self.backbone, Backbone):
            raise ConfigError(
                "Only a tftransfer.Backbone knows how to prepare a LabeledData; "
                f"received backbone={self.backbone!r}. Pass a tf.data.Dataset of "
                "batched (prepared inputs, labels) instead."
            )
        return make_pipeline(
            data,
            self.backbone,
            self.settings["batch_size"],
            training=training,
            replicas=self.strategy.num_replicas_in_sync,
            cache=False,
            drop_remainder=training and self._drop_remainder(data.num_examples),
            seed=self.settings["seed"] if training else None,
        )

    def _with_class_names(self, data, class_names: list[str] | None, split: str):
        """`data` with its labels numbered as in `class_names` (matched by
        name), so that another split's label 0 is the same class as the
        training data's label 0. For multi-label and regression data, the
        columns of the label vectors are put in the order of `class_names`.

        Raises:
            DataError: if `data` holds a class (or label, or target) that
                `class_names` lacks, or lacks one of the label or target
                columns.
        """
        names = getattr(data, "class_names", None)
        if isinstance(data, tf.data.Dataset) or not names or not class_names:
            return data
        names, class_names = list(names), list(class_names)
        if names == class_names:
            return data
        unknown = [name for name in names if name not in class_names]
        columns = self.task != "classification"
        missing = [name for name in class_names if name not in names]
        if unknown and not columns:
            raise DataError(
                f"The {split} data has classes the training data does not: "
                f"{short_list(unknown)}. Training classes: {short_list(class_names)}. "
                "Give every split the same classes (or drop those examples)."
            )
        if columns and (unknown or missing):
            raise DataError(
                f"The {split} data has the label or target columns "
                f"{short_list(names)}; the training data has "
                f"{short_list(class_names)}. Give every split the same ones."
            )
        if columns:
            order = tf.constant([names.index(name) for name in class_names])

            def relabel(inputs, label):
                return inputs, tf.gather(label, order)

        else:
            position = tf.constant(
                [class_names.index(name) for name in names], tf.int64
            )

            def relabel(inputs, label):
                return inputs, tf.gather(position, label)

        return dataclasses.replace(
            data, dataset=data.dataset.map(relabel), class_names=class_names
        )

    def _check_labels(self, labels: np.ndarray, split: str) -> None:
        """Raises a `DataError` for labels the task cannot train on (class
        indices outside `[0, len(class_names))`, multi-hot values other
        than 0 and 1, targets that are not finite, the wrong width)."""
        get_task(self.task).check_labels(labels, self.class_names, split)

    def _data_key(self, data) -> str:
        """Fingerprint of a split: raw data and preparation settings.

        For a `LabeledData`, a digest of every raw example (cheap to read:
        strings, paths, encoded images), and for image files their sizes and
        modification times too. For a dataset of prepared batches,
        only what locates it cheaply (element spec, cardinality, the first
        batch): the feature cache checks its full `DataDigest` as well.
        """
        if isinstance(data, tf.data.Dataset):
            # As the task reads them: read for another task, the same
            # batches have other labels, so the cache keeps them apart.
            data = self._batches(data)
            first = data.take(1)
            return fingerprint(
                "prepared",
                str(data.element_spec),
                int(data.cardinality()),
                DataDigest.of(first),
            )
        preparation = {
            key: str(getattr(self.backbone, key, None))
            for key in ("name", "handle", "image_size", "value_range", "seq_length")
        }
        key = ["raw", DataDigest.of(data.dataset.batch(1024)), preparation]
        if data.input_format == "file_path":
            # A replaced image keeps its path.
            paths = data.dataset.map(lambda path, label: path).batch(4096)
            key.append(
                paths_digest(p.decode() for b in paths.as_numpy_iterator() for p in b)
            )
        return fingerprint(*key)

    def _set_class_names(self, data, class_names, labels: np.ndarray) -> None:
        """Class (label, target) names from the arguments, the data, or else
        the labels."""
        names = class_names or getattr(data, "class_names", None)
        if names is None:
            names = get_task(self.task).default_names(labels)
        self.class_names = list(names)

    # Models -------------------------------------------------------------

    @contextlib.contextmanager
    def _building(self, policy: str = "float32"):
        """Strategy scope plus the dtype `policy` (float32 unless the
        backbone pass runs in a reduced precision)."""
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(policy)
        try:
            with self.strategy.scope():
                yield
        finally:
            keras.config.set_dtype_policy(previous)

    def _backbone_layer(self, trainable: bool) -> keras.Layer:
        from tftransfer.backbones import Backbone

        if not isinstance(self.backbone, Backbone):
            self.backbone.trainable = trainable
            return self.backbone
        backbone = self.backbone
        key = self.settings["features"]
        if key is not None:
            backbone = backbone.with_output(key)
        return backbone.build(
            trainable=trainable, load_options=distribute.load_options(self.strategy)
        )

    def _built_backbone(self) -> keras.Layer:
        """The backbone layer (frozen), built once in the strategy scope."""
        if self.backbone_layer is None:
            with self._building():
                self.backbone_layer = self._backbone_layer(trainable=False)
        return self.backbone_layer

    def _output_key(self) -> str | None:
        """The output to select from a plain layer that returns a dict (a
        `Backbone` selects its own, see `_backbone_layer()`)."""
        from tftransfer.backbones import Backbone

        if isinstance(self.backbone, Backbone):
            return None
        return self.settings["features"]

    def _feature_model(self, element_spec, inference_mode: bool = True):
        """The functional model from prepared inputs to features."""
        return heads.feature_model(
            self._built_backbone(),
            heads.model_inputs(element_spec),
            output_key=self._output_key(),
            pooling=self.settings["pooling"],
            inference_mode=inference_mode,
            backbone_name=repr(self.settings["backbone"]),
        )

    def _compile(
        self, model: keras.Model, optimizer, steps_per_execution: int | None = None
    ) -> None:
        task = get_task(self.task)
        model.compile(
            optimizer=optimizer,
            loss=task.loss(self.settings["label_smoothing"]),
            metrics=task.compile_metrics(),
            steps_per_execution=steps_per_execution
            or self.settings["steps_per_execution"],
            jit_compile=self.settings["jit_compile"],
        )

    # Training -----------------------------------------------------------

    def _train_phase(
        self,
        phase: str,
        model: keras.Model,
        train: tf.data.Dataset,
        validation: tf.data.Dataset | None,
        epochs: int,
        data_key: str,
        learning_rate_setting: tuple[str, float],
    ) -> keras.callbacks.History:
        """Trains one phase, resuming from its checkpoint if there is one.

        `learning_rate_setting` names the setting that gave the phase's
        (peak) learning rate and its value, for the advice of `NaNGuard`.

        Every worker restores the chief's checkpoint (so all resume at the
        same epoch: `run_dir` must be shared); only the chief writes it and
        the logs.
        """
        key = fingerprint(data_key, self._phase_settings(phase))
        checkpoints = self.run_dir / "checkpoints" / f"{phase}-{key}"
        state = TrainingState(
            checkpoints,
            monitor="val_loss" if validation is not None else "loss",
            patience=self.settings["patience"],
            write=self.is_chief,
        )
        with self.strategy.scope():
            initial_epoch = state.restore(model)
        if state.finished or initial_epoch >= epochs:
            state.load_best_weights()
        else:
            log_dir = self.run_dir / "logs" / phase
            logs = _log_callbacks(log_dir) if self.is_chief else []
            callbacks = [
                NaNGuard(learning_rate_setting),
                state,
                *logs,
                *self.callbacks,
            ]
            # One iterator through all epochs: epoch e gets the e-th shuffle
            # of the data, and a resumed run skips the epochs it has done,
            # so it sees the data in the order an uninterrupted run would.
            steps = training_loop.steps_per_epoch(train)
            training_loop.train(
                model,
                train.repeat().skip(initial_epoch * steps),
                strategy=self.strategy,
                epochs=epochs,
                validation_data=validation,
                callbacks=callbacks,
                initial_epoch=initial_epoch,
                steps_per_epoch=steps,
                verbose=self.verbose,
            )
        history = keras.callbacks.History()
        history.set_model(model)
        history.history = state.history
        history.epoch = list(range(len(state.history.get("loss", []))))
        return history

    def _remembered(self, phase: str, data_key: str, choose: Callable[[], dict]):
        """The values `choose()` picks for `phase` (the head's learning rate
        and weight decay), kept in the run folder beside the checkpoints: a
        resumed run reuses them rather than searching again."""
        key = fingerprint(data_key, self._phase_settings(phase))
        path = self.run_dir / "checkpoints" / f"{phase}-{key}.json"
        if path.exists():
            return json.loads(path.read_text())
        values = choose()
        if self.is_chief:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_json(path, values)
        return values

    # Evaluation ---------------------------------------------------------

    def _predict(self, name: str, model, data: tf.data.Dataset):
        """Returns `(labels, outputs)` of `model` on batches of `(inputs,
        labels)` (outputs as `model` nests them: an array, or a dict of
        arrays for a model with several outputs); `name` keeps one
        `Predictor` (one traced step) per model."""
        outputs, labels = zip(*self._predictor(name, model).batches(data), strict=True)
        labels = np.concatenate(labels)
        if self.task == "classification":  # Class indices `[num_examples]`.
            labels = labels.reshape(-1)
        return labels, tf.nest.map_structure(
            lambda *parts: np.concatenate(parts), *outputs
        )

    def _predictor(self, name: str, model) -> training_loop.Predictor:
        predictor = self._predictors.get(name)
        if predictor is None or predictor.model is not model:
            predictor = training_loop.Predictor(model, self.strategy)
            self._predictors[name] = predictor
        return predictor

    def _report(self, labels: np.ndarray, outputs: np.ndarray) -> dict:
        self.metrics = task_metrics(self.task, labels, outputs, self.class_names)
        return self.metrics

    def _require_fitted(self) -> None:
        if self.history is None:
            raise ConfigError(
                f"{type(self).__name__}.evaluate() needs a trained model; call fit() first."
            )


def setting_value(value):
    """`value` as the settings record it (JSON-serialisable, and the same
    for the same choice in another process): a Keras layer as its config, a
    callable as its module and name plus a digest of its source where
    Python can read it; anything else as it is."""
    if isinstance(value, keras.Layer):
        # Without the layer's name: Keras numbers unnamed layers in the
        # order a process creates them.
        described = keras.saving.serialize_keras_object(value)
        config = {k: v for k, v in described["config"].items() if k != "name"}
        return {**described, "config": config}
    if not callable(value):
        return value
    name = (
        f"{getattr(value, '__module__', '?')}."
        f"{getattr(value, '__qualname__', type(value).__qualname__)}"
    )
    try:
        source = inspect.getsource(value)
    except (OSError, TypeError):
        return name
    return f"{name} (source {fingerprint(source)})"


def check_epochs(name: str, value) -> None:
    """Raises a `ConfigError` unless `value` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(
            f"Expected {name} >= 1 (an integer). Received: {name}={short_repr(value)}"
        )


def check_auto_or_number(name: str, value, *, positive: bool = False) -> None:
    """Raises a `ConfigError` unless `value` is `"auto"` or a number (> 0
    where `positive`, else >= 0)."""
    if isinstance(value, str) and value == defaults.AUTO:
        return
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if (
        not is_number
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(
            f"Expected {name}='auto' (chosen from the data) or a number {bound}. "
            f"Received: {name}={short_repr(value)}"
        )


def _check_head(head, hidden_units, dropout, head_weight_decay) -> None:
    """Raises a `ConfigError` for a `head` that is not `None`, a Keras layer
    or a factory, or a custom head with settings of the default head."""
    if head is None:
        return
    if isinstance(head, keras.Layer):
        heads.serializable_copy(head)
    elif not callable(head):
        raise ConfigError(
            "Expected head=None (the default head), a keras.Layer or a callable "
            f"(features_spec, num_outputs) -> keras.Layer. Received: "
            f"head={short_repr(head)}"
        )
    if tuple(hidden_units):
        raise ConfigError(
            f"hidden_units={tuple(hidden_units)} shapes the default head; with "
            "head= the layer is the whole head. Leave hidden_units out (or "
            "build the hidden layers into the head)."
        )
    if dropout != defaults.DROPOUT:
        raise ConfigError(
            f"dropout={dropout} is the default head's dropout rate; with head= "
            "the layer is the whole head. Leave dropout out (or build a "
            "keras.layers.Dropout into the head)."
        )
    if head_weight_decay != defaults.AUTO and head_weight_decay:
        raise ConfigError(
            f"head_weight_decay={head_weight_decay} is the L2 penalty of the "
            "default head's kernels; a custom head regularises itself. Give "
            "its layers a kernel_regularizer, and leave head_weight_decay out."
        )
