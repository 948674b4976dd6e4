"""Learning rates (and the head's weight decay) chosen from the data.

Two methods, one per phase, each picked for what a step costs there:

- `search_head()`: the head trains on cached features, where an epoch costs
  milliseconds, so the candidates are simply trained to convergence (early
  stopping on the validation loss, best epoch restored) and the one with the
  lowest plain validation loss of the task wins (cross-entropy, binary
  cross-entropy or mean squared error; without label smoothing or the
  weight penalty, which would otherwise count against every candidate that
  has one). Learning rate first, then weight decay at that rate: a
  coordinate search of `len(rates) + len(decays) - 1` candidates in two
  rounds. The candidates of a round train together, as independent heads
  of one model (`train_to_best_epochs()`), so a round costs about what one
  head's training does.
- `find_learning_rate()`: fine-tuning steps run the whole backbone, so one
  short run decides (a learning-rate range test, as fastai's `lr_find` and
  Smith, "Cyclical Learning Rates", 2017): the rate grows exponentially
  step by step from `min_lr` to `max_lr` while the training loss is
  recorded; the suggestion is a fifth of the rate at which the smoothed
  loss starts to climb (1.5 times its lowest value since the first fifth of
  the test, the smoothing's warm-up). Fine-tuning starts from a trained
  head, so the loss is often flat until the rate becomes harmful: the edge
  is what a short test with one noisy loss per batch shows reliably, while
  the position of the lowest point in a flat curve is mostly noise (Smith
  takes the rate where the loss starts to rise as the largest usable one).

Both run under the recipe's `tf.distribute` strategy, through the same
training loop as the recipes, so every worker sees the same losses and
picks the same rate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from tftransfer.errors import TrainingError
from tftransfer.recipes import training_loop


@dataclasses.dataclass
class HeadChoice:
    """What `search_head()` chose, and the score of every try.

    Attributes:
        learning_rate: the chosen learning rate.
        weight_decay: the chosen L2 weight decay of the head's kernels.
        trials: `{(learning_rate, weight_decay): validation loss}`.
    """

    learning_rate: float
    weight_decay: float
    trials: dict[tuple[float, float], float]


def search_head(
    train_candidates: Callable[[list[tuple[float, float]]], list[float]],
    learning_rates: Sequence[float],
    weight_decays: Sequence[float],
) -> HeadChoice:
    """Chooses the head's learning rate, then its weight decay.

    Candidates `(learning_rate, weight_decay)` are trained, a round at a
    time, by `train_candidates`, which returns each one's validation loss
    (lower is better; not finite: the candidate failed). The first round
    tries the rates at the first weight decay; the second the decays at the
    best rate. A single value in either list is not searched.

    Args:
        train_candidates: `[(learning_rate, weight_decay), ...] ->
            [validation loss, ...]`.
        learning_rates: candidate learning rates.
        weight_decays: candidate weight decays.

    Returns:
        The `HeadChoice`.

    Raises:
        TrainingError: if no candidate gave a finite validation loss.

    Example:

    >>> choice = search_head(train, (1e-3, 1e-2), (0.0, 1e-4))
    >>> choice.learning_rate, choice.weight_decay
    (0.01, 0.0)
    """
    trials: dict[tuple[float, float], float] = {}

    def best(candidates):
        untried = [candidate for candidate in candidates if candidate not in trials]
        if untried:
            with _quiet_tracing():
                losses = train_candidates(untried)
            trials.update(zip(untried, losses, strict=True))
        return min(candidates, key=lambda c: _finite(trials[c]))

    learning_rate, _ = best([(rate, weight_decays[0]) for rate in learning_rates])
    if not any(math.isfinite(loss) for loss in trials.values()):
        raise TrainingError(
            "Every head learning rate tried "
            f"({', '.join(f'{rate:g}' for rate in learning_rates)}) gave a "
            "validation loss that is not finite: the features or labels are "
            "likely the problem, not the rate. Check the inputs for NaN or "
            "huge values (and the backbone's expected value range)."
        )
    _, weight_decay = best([(learning_rate, decay) for decay in weight_decays])
    return HeadChoice(learning_rate, weight_decay, trials)


def train_to_best_epochs(
    model: keras.Model,
    heads: Sequence[keras.Model],
    train: tf.data.Dataset,
    validation_losses: Callable[[], list[float]],
    *,
    strategy: tf.distribute.Strategy,
    epochs: int,
    patience: int | None,
) -> None:
    """Trains a compiled `model` made of independent `heads` (each with its
    own output and loss) for at most `epochs`, and leaves each head on the
    weights of its own best epoch.

    After every epoch `validation_losses()` gives each head's validation
    loss (the recipes give the task's plain loss, without label smoothing
    or the weight penalty: what the candidates are compared by); training
    stops once none has improved for `patience` epochs (`None`: never
    stops early).
    """
    # One iterator through all epochs (epoch e sees the e-th shuffle, as
    # passes over `train` would), not a new one per epoch.
    training_loop.train(
        model,
        train.repeat(),
        strategy=strategy,
        epochs=epochs,
        callbacks=[_BestEpochs(heads, validation_losses, patience or epochs)],
        steps_per_epoch=training_loop.steps_per_epoch(train),
        verbose=0,
    )


class _BestEpochs(keras.callbacks.Callback):
    """Early stopping for several heads trained in one model: each head's
    best weights are kept (up to the epoch at which it would have stopped
    training alone), and restored when training ends."""

    def __init__(self, heads, validation_losses, patience: int):
        super().__init__()
        self.heads = list(heads)
        self.validation_losses = validation_losses
        self.patience = patience
        self.best = [math.inf] * len(self.heads)
        self.best_weights: list = [None] * len(self.heads)
        self.waited = [0] * len(self.heads)

    def on_epoch_end(self, epoch, logs=None):
        losses = self.validation_losses()
        for index, (head, loss) in enumerate(zip(self.heads, losses, strict=True)):
            if self.waited[index] >= self.patience:
                continue  # Stopped: it would have stopped training alone.
            if math.isfinite(loss) and loss < self.best[index]:
                self.best[index] = loss
                self.best_weights[index] = head.get_weights()
                self.waited[index] = 0
            else:
                self.waited[index] += 1
        if min(self.waited) >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        for head, weights in zip(self.heads, self.best_weights, strict=True):
            if weights is not None:
                head.set_weights(weights)


@dataclasses.dataclass
class RangeTest:
    """The result of `find_learning_rate()`.

    Attributes:
        learning_rate: the suggested rate: `edge_rate / divisor`.
        edge_rate: the first rate at which the smoothed loss exceeded `edge`
            times its lowest value so far, after the first fifth of the
            test, or at which the loss stopped being finite; the last rate
            tried if neither happened (`found` is then `False`).
        found: whether the loss climbed (or diverged) within the test.
        rates: the rate of every recorded point.
        losses: the training loss of every recorded point.
        smoothed: the losses, exponentially smoothed (bias-corrected).
    """

    learning_rate: float
    edge_rate: float
    found: bool
    rates: list[float]
    losses: list[float]
    smoothed: list[float]


def find_learning_rate(
    model: keras.Model,
    compile_with: Callable[[keras.optimizers.schedules.LearningRateSchedule], None],
    train: tf.data.Dataset,
    *,
    strategy: tf.distribute.Strategy,
    steps: int,
    min_lr: float = 1e-7,
    max_lr: float = 1.0,
    smoothing: float = 0.9,
    edge: float = 1.5,
    divisor: float = 5.0,
    divergence: float = 4.0,
) -> RangeTest:
    """Runs a learning-rate range test on `model`; leaves its weights as
    they were.

    The learning rate grows exponentially from `min_lr` to `max_lr` over
    `steps` training steps (on `train`, repeated as needed); the test stops
    early once the smoothed loss exceeds `divergence` times its minimum or
    is not finite. Every variable (BatchNorm statistics and the states of
    random seeds included) is put back afterwards; the optimizer used for
    the test is thrown away.

    Args:
        model: the model to fine-tune, built in `strategy.scope()`.
        compile_with: compiles `model` with an optimizer on the given
            schedule (the recipe's optimizer, so that discriminative rates
            and weight decay are part of the test).
        train: the training batches.
        strategy: the strategy `model` was built under.
        steps: number of steps of the sweep (at least 2).
        min_lr: the first rate.
        max_lr: the last rate.
        smoothing: the exponential smoothing factor of the losses.
        edge: the rise of the smoothed loss over its lowest value so far
            that marks the edge.
        divisor: the suggestion is the edge's rate divided by this.
        divergence: stop once the smoothed loss exceeds this many times its
            minimum.

    Returns:
        A `RangeTest`.

    Example:

    >>> test = find_learning_rate(model, compile_with, train,
    ...                           strategy=strategy, steps=100)
    >>> test.learning_rate
    0.0003
    """
    steps = max(2, int(steps))
    growth = (max_lr / min_lr) ** (1.0 / (steps - 1))
    schedule = keras.optimizers.schedules.ExponentialDecay(
        min_lr, decay_steps=1, decay_rate=growth
    )
    saved = [np.array(v.numpy()) for v in model.variables]
    compile_with(schedule)
    recorder = _LossRecorder(lambda step: min_lr * growth**step, smoothing, divergence)
    try:
        training_loop.train(
            model,
            # Repeated, non-empty data has `steps` batches: say so, so that
            # data of unknown size does not make `fit` count or warn.
            train.repeat()
            .take(steps)
            .apply(tf.data.experimental.assert_cardinality(steps)),
            strategy=strategy,
            epochs=1,
            callbacks=[recorder],
            verbose=0,
        )
    finally:
        for variable, value in zip(model.variables, saved, strict=True):
            variable.assign(value)
    smoothed = recorder.smoothed
    if not smoothed:  # The very first step diverged.
        return RangeTest(min_lr / divisor, min_lr, True, [], [], [])
    # Before the smoothing has seen a few losses, one lucky batch would set
    # the reference: the edge is looked for after the first fifth.
    warm_up = min(len(smoothed), max(3, steps // 5)) - 1
    settled = np.asarray(smoothed[warm_up:])
    climbed = np.flatnonzero(settled > edge * np.minimum.accumulate(settled))
    # A loss that is not finite ends the test: that rate is the edge.
    if climbed.size:
        edge_rate = recorder.rates[warm_up + climbed[0]]
    else:
        edge_rate = recorder.diverged_at or recorder.rates[-1]
    return RangeTest(
        learning_rate=max(min_lr, edge_rate / divisor),
        edge_rate=edge_rate,
        found=bool(climbed.size) or recorder.diverged_at is not None,
        rates=recorder.rates,
        losses=recorder.losses,
        smoothed=smoothed,
    )


class _LossRecorder(keras.callbacks.Callback):
    """Records the loss of each step (or each group of steps run in one
    execution) from the running epoch mean that `fit` logs."""

    def __init__(self, rate_at: Callable[[float], float], smoothing, divergence):
        super().__init__()
        self.rate_at = rate_at
        self.smoothing = smoothing
        self.divergence = divergence
        self.rates: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.diverged_at: float | None = None
        self._steps_done = 0
        self._total = 0.0
        self._average = 0.0

    def on_train_batch_end(self, batch, logs=None):
        mean = float((logs or {}).get("loss", math.nan))
        steps_done = batch + 1
        new_steps = steps_done - self._steps_done
        if new_steps <= 0:
            return
        # The logged loss is the mean over the epoch so far.
        loss = (mean * steps_done - self._total) / new_steps
        self._total = mean * steps_done
        middle = self._steps_done + (new_steps - 1) / 2
        self._steps_done = steps_done
        if not math.isfinite(loss):
            self.diverged_at = self.rate_at(middle)
            self.model.stop_training = True
            return
        self._average = self.smoothing * self._average + (1 - self.smoothing) * loss
        count = len(self.losses) + 1
        smoothed = self._average / (1 - self.smoothing**count)
        self.rates.append(self.rate_at(middle))
        self.losses.append(loss)
        self.smoothed.append(smoothed)
        if smoothed > self.divergence * min(self.smoothed):
            self.model.stop_training = True


@contextlib.contextmanager
def _quiet_tracing():
    """Silences TensorFlow's "retracing" warning: every candidate is a new
    model with its own training function, traced once on purpose."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else math.inf
