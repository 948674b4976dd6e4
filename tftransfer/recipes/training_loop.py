"""Training that works under every `tf.distribute` strategy.

`train()` uses Keras' `Model.fit` where it works (default, mirrored and TPU
strategies) and otherwise (`MultiWorkerMirroredStrategy`, where Keras 3's
`fit` fails: keras-team/keras#20585) runs a training step of its own:
`strategy.run` with `tf.GradientTape` and the model's Keras optimizer on a
distributed dataset. The owned loop keeps what `fit` gives users: the Keras
progress bar, Keras callbacks (TensorBoard, checkpoints, early stopping) and
the `History` it returns.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tftransfer import distribute
from tftransfer.errors import ConfigError


def train(
    model: keras.Model,
    train_data: tf.data.Dataset,
    *,
    strategy: tf.distribute.Strategy,
    epochs: int,
    validation_data: tf.data.Dataset | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
    initial_epoch: int = 0,
    steps_per_epoch: int | None = None,
    verbose: int | str = "auto",
) -> keras.callbacks.History:
    """Trains a compiled `model` under `strategy`.

    Args:
        model: a compiled `keras.Model` (built inside `strategy.scope()`)
            with a loss such as `SparseCategoricalCrossentropy`; its logged
            metrics are the loss and accuracy.
        train_data: batches of `(inputs, labels)` with the global batch size:
            integer class indices (accuracy is logged beside the loss), or
            float labels (multi-label, regression: the loss alone). The
            recipes give every task's labels so (`Recipe._batches`).
        strategy: the strategy the model was built under.
        epochs: the epoch to stop after (as in `fit`).
        validation_data: batches evaluated after each epoch, or `None`.
        callbacks: Keras callbacks.
        initial_epoch: the epoch to start from (when resuming).
        steps_per_epoch: steps of one epoch, for `train_data` that repeats:
            one iterator then runs through all epochs (as in `fit`);
            `None`: one pass over `train_data` per epoch.
        verbose: as in `fit`: 0 silent, 1 progress bar, 2 one line per epoch.

    Returns:
        The `keras.callbacks.History` of this call.

    Example:

    >>> strategy = tftransfer.distribute.resolve_strategy()
    >>> with strategy.scope():
    ...     model = build_model()
    ...     model.compile("adam", "sparse_categorical_crossentropy",
    ...                   metrics=["accuracy"])
    >>> history = train(model, data, strategy=strategy, epochs=3)
    """
    if distribute.fit_supported(strategy):
        return model.fit(
            train_data,
            validation_data=validation_data,
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,  # The dataset shuffles; fit cannot shuffle a Dataset.
        )
    return OwnedLoop(model, strategy).fit(
        train_data,
        validation_data=validation_data,
        epochs=epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=steps_per_epoch,
        callbacks=callbacks,
        verbose=verbose,
    )


class OwnedLoop:
    """`fit` for strategies where Keras 3's `Model.fit` fails.

    Each step runs `strategy.run` on a per-replica batch: the forward pass
    under `tf.GradientTape`, the loss summed over the replica's examples and
    divided by the global number of examples in the step (so the all-reduced
    gradient equals the single-device gradient), then the model's Keras
    optimizer, which all-reduces the gradients across replicas and workers.

    Args:
        model: a compiled `keras.Model` built inside `strategy.scope()`.
        strategy: the strategy to train under.
    """

    def __init__(self, model: keras.Model, strategy: tf.distribute.Strategy):
        self.model = model
        self.strategy = strategy
        self._classes = True  # Whether the labels are class indices.
        if not model.optimizer.built:
            with strategy.scope():
                model.optimizer.build(model.trainable_variables)
        self._train_step = tf.function(self._distributed(self._train_replica_step))
        self._test_step = tf.function(self._distributed(self._test_replica_step))

    def fit(
        self,
        train_data: tf.data.Dataset,
        *,
        epochs: int,
        validation_data: tf.data.Dataset | None = None,
        callbacks: list[keras.callbacks.Callback] | None = None,
        initial_epoch: int = 0,
        steps_per_epoch: int | None = None,
        verbose: int | str = "auto",
    ) -> keras.callbacks.History:
        """Trains like `keras.Model.fit` (same arguments, same `History`)."""
        repeats = steps_per_epoch is not None
        steps = steps_per_epoch if repeats else self._steps_of(train_data)
        # Class indices: accuracy is logged too (float labels, as recipes give
        # multi-label and regression ones: the loss only).
        labels_spec = train_data.element_spec[1]
        self._classes = not isinstance(labels_spec, dict) and (
            not labels_spec.dtype.is_floating
        )
        verbose = 1 if verbose == "auto" else verbose
        callback_list = keras.callbacks.CallbackList(
            callbacks,
            add_history=True,
            add_progbar=verbose != 0,
            model=self.model,
            verbose=verbose,
            epochs=epochs,
            steps=steps,
        )
        train_batches = self._distribute(train_data)
        validation_batches = (
            self._distribute(validation_data) if validation_data is not None else None
        )
        self.model.stop_training = False
        callback_list.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            callback_list.on_epoch_begin(epoch)
            totals = np.zeros(3)
            if not repeats or epoch == initial_epoch:
                iterator = iter(train_batches)
            for step in range(steps):
                callback_list.on_train_batch_begin(step)
                totals += [float(t) for t in self._train_step(iterator)]
                callback_list.on_train_batch_end(step, self._logs(totals))
                if self.model.stop_training:
                    break
            logs = self._logs(totals)
            if validation_batches is not None:
                validation_logs = self._evaluate(validation_batches, validation_data)
                logs.update({f"val_{k}": v for k, v in validation_logs.items()})
            callback_list.on_epoch_end(epoch, logs)
            if self.model.stop_training:
                break
        callback_list.on_train_end()
        return self.model.history

    def _evaluate(self, batches, dataset: tf.data.Dataset) -> dict[str, float]:
        totals = np.zeros(3)
        iterator = iter(batches)
        for _ in range(self._steps_of(dataset)):
            totals += [float(t) for t in self._test_step(iterator)]
        return self._logs(totals)

    def _logs(self, totals: np.ndarray) -> dict[str, float]:
        loss_sum, correct, count = totals
        count = max(count, 1.0)
        logs = {"loss": loss_sum / count}
        if self._classes:
            logs["accuracy"] = correct / count
        return logs

    @staticmethod
    def _steps_of(dataset: tf.data.Dataset) -> int:
        # `fit`'s argument `steps_per_epoch` shadows the function there.
        return steps_per_epoch(dataset)

    def _distribute(self, dataset: tf.data.Dataset):
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        return self.strategy.experimental_distribute_dataset(
            dataset.with_options(options)
        )

    def _distributed(self, replica_step):
        def step(iterator):
            inputs, labels = next(iterator)
            counts = self.strategy.run(_local_count, args=(labels,))
            count = self.strategy.reduce(tf.distribute.ReduceOp.SUM, counts, axis=None)
            per_replica = self.strategy.run(replica_step, args=(inputs, labels, count))
            return [
                self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                for value in per_replica
            ]

        return step

    def _train_replica_step(self, inputs, labels, count):
        model = self.model
        optimizer = model.optimizer
        with tf.GradientTape() as tape:
            predictions = model(inputs, training=True)
            loss_sum = self._loss_sum(labels, predictions)
            loss = loss_sum / tf.maximum(count, 1.0)
            if model.losses:
                replicas = self.strategy.num_replicas_in_sync
                loss += tf.add_n(model.losses) / replicas
            scaled_loss = optimizer.scale_loss(loss)
        variables = model.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        optimizer.apply(gradients, variables)
        return loss_sum, _correct(labels, predictions), _local_count(labels)

    def _test_replica_step(self, inputs, labels, count):
        del count  # Test steps sum over examples; only training divides.
        predictions = self.model(inputs, training=False)
        loss_sum = self._loss_sum(labels, predictions)
        return loss_sum, _correct(labels, predictions), _local_count(labels)

    def _loss_sum(self, labels, predictions) -> tf.Tensor:
        """The summed loss over examples; a model with a dict of outputs
        (such as the head search's candidates) has one loss per output, as
        it was compiled, and they add up."""
        losses = self.model.loss
        if isinstance(predictions, dict):
            return tf.add_n(
                [
                    tf.reduce_sum(losses[name].call(labels[name], predictions[name]))
                    for name in predictions
                ]
            )
        return tf.reduce_sum(losses.call(labels, predictions))


def steps_per_epoch(dataset: tf.data.Dataset) -> int:
    """Returns the number of batches in one pass over `dataset`.

    Uses the dataset's cardinality; where it is unknown (after `filter`,
    for example), counts the batches in one pass over the data.

    Args:
        dataset: a finite `tf.data.Dataset` of batches.

    Raises:
        ConfigError: if `dataset` repeats forever.

    Example:

    >>> steps_per_epoch(tf.data.Dataset.range(10).batch(4))
    3
    """
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ConfigError(
            "Expected a finite dataset (one epoch per pass); received one that "
            "repeats forever. Remove its `.repeat()`."
        )
    if cardinality == tf.data.UNKNOWN_CARDINALITY:
        cardinality = int(dataset.reduce(0, lambda count, _: count + 1))
    return cardinality


def _local_count(labels) -> tf.Tensor:
    return tf.cast(tf.shape(tf.nest.flatten(labels)[0])[0], tf.float32)


def _correct(labels, predictions) -> tf.Tensor:
    """Examples whose top class is their label; 0 for float labels
    (multi-label, regression) and for several outputs, where only the loss
    is logged."""
    if isinstance(labels, dict) or labels.dtype.is_floating:
        return tf.constant(0.0)
    predicted = tf.argmax(predictions, axis=-1, output_type=tf.int64)
    matches = tf.equal(predicted, tf.cast(tf.reshape(labels, [-1]), tf.int64))
    return tf.reduce_sum(tf.cast(matches, tf.float32))


class DistributedPass:
    """One pass over a dataset of batches, distributed under `strategy`:
    each batch is read once and can be given to several `Predictor`s.

    Example:

    >>> batches = DistributedPass(dataset, strategy)
    >>> first = batches.next()
    >>> fast.outputs(batches, first), exact.outputs(batches, first)
    >>> for outputs, labels in fast.rest(batches):
    ...     ...
    """

    def __init__(self, dataset: tf.data.Dataset, strategy: tf.distribute.Strategy):
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        distributed = strategy.experimental_distribute_dataset(
            dataset.with_options(options)
        )
        self.element_spec = distributed.element_spec
        self.steps = steps_per_epoch(dataset)
        self.taken = 0
        self._iterator = iter(distributed)

    def next(self):
        """The next batch (distributed values), counted in `taken`."""
        self.taken += 1
        return next(self._iterator)


class Predictor:
    """Runs `model(inputs, training=False)` over batches, under any strategy.

    Runs the model on every replica (`strategy.run`) and gathers the
    results, so it works under every strategy, including multi-worker ones
    where each worker reads a different shard (every worker receives all
    outputs). The step is traced once per input signature and reused for
    every dataset with that signature.

    Args:
        model: a Keras model or layer built inside `strategy.scope()`, or
            any callable `model(inputs, training=False)`.
        strategy: the strategy `model` was built under.

    Example:

    >>> predictor = Predictor(model, strategy)
    >>> for outputs, labels in predictor.batches(test):
    ...     ...
    """

    def __init__(self, model, strategy: tf.distribute.Strategy):
        self.model = model
        self.strategy = strategy
        self._step = tf.function(self._gathered_step, autograph=False)

    def batches(self, dataset: tf.data.Dataset, verbose: int = 0):
        """Yields `(model outputs, labels)` of every batch, as numpy arrays.

        Args:
            dataset: batches of `(inputs, labels)`; outputs and labels may
                be nested structures (they come back with the same structure).
            verbose: 1 shows a Keras progress bar.
        """
        yield from self.rest(DistributedPass(dataset, self.strategy), verbose)

    def rest(self, batches: DistributedPass, verbose: int = 0):
        """Yields `(model outputs, labels)` of the batches `batches` has
        not given yet, as numpy arrays (see `batches()`)."""
        progress = keras.utils.Progbar(batches.steps - batches.taken, verbose=verbose)
        for index in range(batches.steps - batches.taken):
            outputs = self.outputs(batches, batches.next())
            progress.update(index + 1)
            yield outputs

    def outputs(self, batches: DistributedPass, batch):
        """Returns `(model outputs, labels)` of one `batch` that `batches`
        gave, as numpy arrays. A batch can go through several predictors
        (as the precision guard does), read from the data once."""
        # One trace for all batches, the last (smaller) one included.
        step = self._step.get_concrete_function(*batches.element_spec)
        return tf.nest.map_structure(np.asarray, step(*batch))

    def _gathered_step(self, inputs, labels):
        strategy = self.strategy
        outputs = strategy.run(lambda x: self.model(x, training=False), args=(inputs,))
        return tf.nest.map_structure(
            lambda value: strategy.gather(value, axis=0), (outputs, labels)
        )
