"""Transferability scores: how well frozen features suit a labelled dataset.

Each estimator takes what a frozen backbone gives for a target dataset
(features `[n, d]`, or a source classifier's probabilities `[n, z]`) and the
target labels, and returns one number; for every one of them higher means
the backbone is expected to transfer better. They need no training of the
backbone and no TensorFlow: they are NumPy computations in float64 on
features of any float precision, deterministic for a given `seed`.

- `logme`: the log of the maximum evidence of a Bayesian linear model
  (You et al., ICML 2021).
- `leep`: the log expected empirical prediction of a source classifier
  (Nguyen et al., ICML 2020).
- `linear_probe`: the cross-validated accuracy (or R^2) of a linear model.
- `h_score`: how separable the class means are under the features'
  covariance (Bao et al., ICIP 2019), with Ledoit-Wolf shrinkage.

`ESTIMATORS` describes them for code that iterates over them, and `score`
calls one by name after checking that it supports the task.

Example:

>>> rng = np.random.default_rng(0)
>>> labels = rng.integers(0, 3, 200)
>>> features = np.eye(3)[labels] + 0.3 * rng.normal(size=(200, 3))
>>> noise = rng.normal(size=(200, 3))
>>> logme(features, labels) > logme(noise, labels)
True
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

from tftransfer.errors import ArgumentError, ConfigError, DataError
from tftransfer.vocabulary import TASKS

LOGME_SEARCH_SPAN = 1e8
"""How far, as a factor, `logme_evidence` searches for the prior-to-noise
precision ratio `alpha / beta` beyond the smallest and largest nonzero
eigenvalue of `F^T F`. Past it the evidence changes by less than about one
part in `LOGME_SEARCH_SPAN`, so a maximum at infinity (features that say
nothing about the target, or targets fitted exactly) is returned at the
end of the span."""

PROBE_L2 = 1e-3
"""The L2 penalty of `linear_probe`'s logistic regression: the loss is the
mean cross-entropy plus `PROBE_L2 / 2 * ||W||^2` on standardised features
(the bias is not penalised)."""

PROBE_STEPS = 100
"""The most L-BFGS steps `linear_probe`'s logistic regression takes per fold
(it stops earlier once the gradient vanishes)."""

RIDGE_PENALTIES = tuple(10.0 ** (k / 2) for k in range(-8, 7))
"""The ridge penalties, per training example (so `lambda = p * n_train`),
among which `linear_probe` picks one per target and fold by exact
leave-one-out error on the training part: 1e-4 to 1e3, half a decade
apart."""


@dataclasses.dataclass(frozen=True)
class Estimator:
    """A transferability estimator, described for code that iterates over them.

    Args:
        name: its key in `ESTIMATORS`.
        function: the scoring function, called as
            `function(inputs, labels, ...)`.
        input: what it scores: `"features"` (a backbone's `[n, d]` output)
            or `"source_probabilities"` (a source classifier's `[n, z]`
            class probabilities).
        tasks: the tasks (from `tftransfer.vocabulary.TASKS`) it supports.
        higher_is_better: whether a higher score predicts better transfer.
        description: one line for listings.
    """

    name: str
    function: Callable[..., float]
    input: str
    tasks: tuple[str, ...]
    higher_is_better: bool = True
    description: str = ""


# Validation -----------------------------------------------------------------


def _as_matrix(values: ArrayLike, name: str) -> np.ndarray:
    """Returns `values` as a finite float64 `[n, d]` array, or raises."""
    array = np.asarray(values)
    try:
        array = array.astype(np.float64)
    except (TypeError, ValueError) as error:
        raise DataError(
            f"Expected {name} to be numbers. Received: dtype={array.dtype}. "
            f"Pass {name} as a float array."
        ) from error
    if array.ndim != 2:
        raise DataError(
            f"Expected {name} of shape [num_examples, dim]. "
            f"Received: shape={array.shape}. Pool or flatten each example's "
            "output to one vector first."
        )
    if array.size == 0:
        raise DataError(
            f"Expected {name} with at least one example and one dimension. "
            f"Received: shape={array.shape}."
        )
    bad_rows = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if len(bad_rows):
        raise DataError(
            f"Expected finite {name}. Received: NaN or inf in {len(bad_rows)} "
            f"of {len(array)} rows (first: row {bad_rows[0]}). Compute them in "
            "float32 (float16 overflows) or drop those examples."
        )
    return array


def _as_features(values: ArrayLike) -> np.ndarray:
    """Returns features as float64 `[n, d]`, refusing ones no score can use."""
    features = _as_matrix(values, "features")
    if np.all(features == features[0]):
        raise DataError(
            "Expected features that differ between examples. Received: all "
            f"{len(features)} rows are the same. Check that the backbone's "
            "outputs were saved, not an empty or constant buffer."
        )
    return features


def _check_length(labels: np.ndarray, num_examples: int, name: str) -> None:
    if len(labels) != num_examples:
        raise DataError(
            f"Expected one label per row of {name} ({num_examples}). "
            f"Received: {len(labels)} labels. Pass the labels of the same "
            "examples, in the same order."
        )


def _class_indices(
    labels: ArrayLike, num_examples: int, name: str
) -> tuple[np.ndarray, int]:
    """Returns `(indices in [0, num_classes), num_classes)` for class labels."""
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise DataError(
            "Expected class labels of shape [num_examples] (one class index "
            f"per example). Received: shape={array.shape}. For one-hot labels "
            "pass labels.argmax(-1); for multi-hot labels use "
            "task='multi_label'."
        )
    _check_length(array, num_examples, name)
    if array.dtype.kind not in "biu":
        numeric = array.dtype.kind == "f"
        if not numeric or not np.all(np.isfinite(array) & (array == np.round(array))):
            raise DataError(
                "Expected integer class indices as labels. Received: "
                f"dtype={array.dtype}, e.g. {array[:3].tolist()}. Map the "
                "classes to integers, or use task='regression' for numbers."
            )
    classes, indices = np.unique(array, return_inverse=True)
    if len(classes) < 2:
        raise DataError(
            "Expected labels of at least 2 classes. Received: every label is "
            f"{classes.tolist()}. A score needs examples of several classes; "
            "add examples of the other classes."
        )
    return indices.reshape(-1), len(classes)


def _target_matrix(
    labels: ArrayLike, num_examples: int, task: str, name: str
) -> np.ndarray:
    """Returns regression targets or multi-hot labels as float64 `[n, t]`."""
    array = np.asarray(labels)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] == 0:
        raise DataError(
            f"Expected {task} labels of shape [num_examples] or "
            f"[num_examples, num_targets]. Received: shape={array.shape}."
        )
    _check_length(array, num_examples, name)
    array = _as_matrix(array, f"{task} labels")
    if task == "multi_label":
        if not np.isin(array, (0.0, 1.0)).all():
            raise DataError(
                "Expected multi-hot labels of 0s and 1s. Received: values "
                f"such as {np.setdiff1d(array, (0.0, 1.0))[:3].tolist()}. "
                "Pass one 0/1 column per label."
            )
        empty = np.flatnonzero(array.sum(axis=0) == 0)
        if len(empty):
            raise DataError(
                f"Expected every label to occur. Received: label column(s) "
                f"{empty.tolist()} with no positive example. Drop those columns."
            )
    else:
        zero = np.flatnonzero(~array.any(axis=0))
        if len(zero):
            raise DataError(
                f"Expected regression targets that are not all zero. Received: "
                f"target column(s) {zero.tolist()} all zero. Drop those columns."
            )
    return array


def _supporting(task: str) -> list[str]:
    return [name for name, e in ESTIMATORS.items() if task in e.tasks]


def _check_task(estimator: str, task: str) -> None:
    """Raises a `ConfigError` unless `ESTIMATORS[estimator]` supports `task`."""
    if task not in TASKS:
        raise ConfigError(
            f"Expected task to be one of {TASKS}. Received: task={task!r}."
        )
    if task not in ESTIMATORS[estimator].tasks:
        raise ConfigError(
            f"The estimator {estimator!r} does not support task={task!r} (it "
            f"supports {ESTIMATORS[estimator].tasks}). Estimators for "
            f"{task!r}: {_supporting(task)}."
        )


# Linear algebra ---------------------------------------------------------------


def _thin_svd(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns `(u [n, k], s [k], v [d, k])` with `matrix = u @ diag(s) @ v.T`.

    One symmetric eigendecomposition of the smaller Gram matrix
    (`matrix.T @ matrix` when n >= d, else `matrix @ matrix.T`); directions
    whose squared singular value is below `max(n, d) * eps` of the largest
    are dropped, so `k` is the numerical rank (0 for a zero matrix).
    """
    n, d = matrix.shape
    gram = matrix.T @ matrix if n >= d else matrix @ matrix.T
    eigenvalues, vectors = np.linalg.eigh(gram)
    keep = eigenvalues > eigenvalues[-1] * max(n, d) * np.finfo(np.float64).eps
    s = np.sqrt(eigenvalues[keep])
    if n >= d:
        v = vectors[:, keep]
        return (matrix @ v) / s, s, v
    u = vectors[:, keep]
    return u, s, (matrix.T @ u) / s


# LogME --------------------------------------------------------------------------


def _logme_profile(t: np.ndarray, sigma, x2, outside, n) -> np.ndarray:
    """The log evidence at ratio `t = alpha / beta` and the best beta for it."""
    t = np.asarray(t, dtype=np.float64)[..., None]
    fit = np.sum(x2 * t / (sigma + t), axis=-1) + outside
    return (
        -n / 2 * np.log(fit / n)
        - 0.5 * np.sum(np.log1p(sigma / t), axis=-1)
        - n / 2 * (1 + math.log(2 * math.pi))
    )


def _max_evidence(
    sigma: np.ndarray, projection: np.ndarray, outside: float, n: int
) -> tuple[float, float, float]:
    """Maximises the evidence of one target; returns (evidence, alpha, beta)."""
    x2 = projection**2
    lowest = math.log(sigma.min() / LOGME_SEARCH_SPAN)
    highest = math.log(sigma.max() * LOGME_SEARCH_SPAN)
    grid = np.linspace(lowest, highest, 129)
    values = _logme_profile(np.exp(grid), sigma, x2, outside, n)
    best = int(np.argmax(values))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    # Golden-section search for the best log(t) in the grid cell pair.
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low + (1 - ratio) * (high - low), low + ratio * (high - low)
    value_a, value_b = (
        float(_logme_profile(math.exp(u), sigma, x2, outside, n)) for u in (a, b)
    )
    while high - low > 1e-12 * max(1.0, abs(low)):
        if value_a >= value_b:
            high, b, value_b = b, a, value_a
            a = low + (1 - ratio) * (high - low)
            value_a = float(_logme_profile(math.exp(a), sigma, x2, outside, n))
        else:
            low, a, value_a = a, b, value_b
            b = low + ratio * (high - low)
            value_b = float(_logme_profile(math.exp(b), sigma, x2, outside, n))
    t = math.exp((low + high) / 2)
    beta = n / (float(np.sum(x2 * t / (sigma + t))) + outside)
    evidence = float(_logme_profile(t, sigma, x2, outside, n))
    return evidence, t * beta, beta


def _logme_columns(
    features: np.ndarray, targets: np.ndarray
) -> list[tuple[float, float, float]]:
    """(log evidence, alpha, beta) of each column of `targets [n, t]`."""
    u, s, _ = _thin_svd(features)
    projections = u.T @ targets
    outside = np.sum((targets - u @ projections) ** 2, axis=0)
    return [
        _max_evidence(s**2, projections[:, j], float(outside[j]), len(features))
        for j in range(targets.shape[1])
    ]


def logme_evidence(
    features: ArrayLike, target: ArrayLike
) -> tuple[float, float, float]:
    """Returns the maximum log evidence of one target and where it is reached.

    The model is LogME's (You et al., ICML 2021): `y = F w + noise` with a
    prior `w ~ N(0, I / alpha)` and noise `N(0, I / beta)`, so that
    `y ~ N(0, F F^T / alpha + I / beta)`. The evidence is that density at
    `y`; it is maximised over `alpha, beta > 0` from one eigendecomposition
    of `F^T F` (or `F F^T` when n < d): the maximum over `beta` for a given
    ratio `t = alpha / beta` has a closed form, so the search is over `t`
    alone (a grid, then golden-section search in log t). At the result the
    paper's fixed-point equations hold, `alpha = gamma / ||m||^2` and
    `beta = (n - gamma) / ||y - F m||^2`. (The paper iterates them from
    `alpha = beta = 1`, which can take hundreds of steps to converge and
    diverges where the maximum is at infinity; the reference
    implementation stops after at most 11 steps.) A maximum at infinity
    is returned at the end of the searched span (`LOGME_SEARCH_SPAN`).

    Args:
        features: `[n, d]` features `F`, any float dtype (computed in float64).
        target: `[n]` target `y`, used as given (not centred or scaled).

    Returns:
        `(log_evidence, alpha, beta)`: the log evidence (not divided by n) and
        the prior and noise precisions that maximise it.

    Example:

    >>> features = np.array([[2.0], [0.0], [0.0], [0.0]])
    >>> evidence, alpha, beta = logme_evidence(features, [3.0, 1.0, 1.0, 1.0])
    >>> round(alpha, 6), round(beta, 6)
    (0.5, 1.0)
    """
    features = _as_features(features)
    target = np.asarray(target)
    if target.ndim != 1:
        raise DataError(
            f"Expected one target of shape [num_examples]. Received: "
            f"shape={target.shape}. Call it once per target column."
        )
    targets = _target_matrix(target, len(features), "regression", "features")
    return _logme_columns(features, targets)[0]


def logme(
    features: ArrayLike, labels: ArrayLike, *, task: str = "classification"
) -> float:
    """Returns LogME: the mean per-example log of the maximum evidence.

    LogME (You et al., ICML 2021, "LogME: Practical Assessment of
    Pre-trained Models for Transfer Learning") fits a Bayesian linear model
    from the features to each target and takes its maximum log evidence
    (`logme_evidence`), divided by the number of examples, averaged over
    the targets, as in the paper and its reference implementation:

    - `"classification"`: one target per class that occurs in `labels`, its
      one-hot column (1 for the class, 0 otherwise);
    - `"multi_label"`: one target per label column, its 0/1 values;
    - `"regression"`: one target per column, used as given. Nothing is
      standardised (the paper does not): the score depends on the targets'
      units, so compare backbones on the same targets only.

    Features are used as given too (no centring), in float64.

    Args:
        features: `[n, d]` features of the target examples.
        labels: class indices `[n]` (`"classification"`), multi-hot `[n, c]`
            (`"multi_label"`) or numbers `[n]` or `[n, t]` (`"regression"`).
        task: one of `tftransfer.vocabulary.TASKS`.

    Returns:
        The LogME score; higher predicts better transfer. Typical values lie
        between -2 and 2 for standardised targets.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> labels = rng.integers(0, 2, 100)
    >>> round(logme(labels[:, None] + 0.1 * rng.normal(size=(100, 4)), labels), 3)
    0.292
    """
    _check_task("logme", task)
    features = _as_features(features)
    if task == "classification":
        indices, num_classes = _class_indices(labels, len(features), "features")
        targets = np.eye(num_classes)[indices]
    else:
        targets = _target_matrix(labels, len(features), task, "features")
    evidences = [e for e, _, _ in _logme_columns(features, targets)]
    return float(np.mean(evidences) / len(features))


# LEEP ---------------------------------------------------------------------------


def leep(source_probabilities: ArrayLike, labels: ArrayLike) -> float:
    """Returns LEEP: the log expected empirical prediction of a source classifier.

    LEEP (Nguyen et al., ICML 2020) turns a source classifier into a target
    classifier without training: from the source-class probabilities
    `theta(x)` of the target examples it builds the empirical joint
    `P(y, z) = mean over examples of theta(x)_z [label = y]`, the conditional
    `P(y | z) = P(y, z) / P(z)`, and predicts `P(y | x) = sum_z
    P(y | z) theta(x)_z`. LEEP is the mean log of that prediction at the
    true labels. A source class that no example gives any probability to is
    left out (it predicts nothing).

    Args:
        source_probabilities: `[n, z]` probabilities over the source classes;
            each row sums to 1 (a softmax of the source head's logits).
        labels: `[n]` target class indices.

    Returns:
        The LEEP score, at most 0; higher predicts better transfer.

    Example:

    >>> round(leep([[0.9, 0.1], [0.2, 0.8]], [0, 1]), 4)
    -0.2911
    """
    theta = _as_matrix(source_probabilities, "source_probabilities")
    sums = theta.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1)))
    if theta.min() < 0 or abs(sums[worst] - 1) > 1e-3:
        raise DataError(
            "Expected source_probabilities whose rows are probabilities "
            f"(non-negative, summing to 1). Received: row {worst} sums to "
            f"{sums[worst]:.6g} and the smallest value is {theta.min():.6g}. "
            "Pass probabilities (softmax of the logits), not logits."
        )
    indices, num_classes = _class_indices(labels, len(theta), "source_probabilities")
    joint = np.eye(num_classes)[indices].T @ theta / len(theta)
    marginal = joint.sum(axis=0)
    conditional = np.divide(
        joint, marginal, out=np.zeros_like(joint), where=marginal > 0
    )
    predicted = np.sum(theta * conditional[indices], axis=1)
    return float(np.mean(np.log(predicted)))


# Linear probe -------------------------------------------------------------------


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(axis=0)
    scale = train.std(axis=0)
    scale[scale == 0] = 1.0
    return (train - mean) / scale, (test - mean) / scale


def _row_space(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both parts in the coordinates of the training rows' span, where there
    are fewer rows than features.

    An L2-regularised linear model's weights lie in that span (its loss
    gradient `x.T @ residual` does, and the penalty removes the rest), so
    the fit and its predictions are the same, from `k <= n` coordinates
    instead of `d`.
    """
    if train.shape[1] <= len(train):
        return train, test
    _, _, basis = _thin_svd(train)
    return train @ basis, test @ basis


def _fit_softmax(
    x: np.ndarray, indices: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """L2-regularised multinomial logistic regression by L-BFGS; (W, b)."""
    n, d = x.shape
    onehot = np.eye(num_classes)[indices]

    def loss_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        weights, bias = (
            theta[:-num_classes].reshape(d, num_classes),
            theta[-num_classes:],
        )
        logits = x @ weights + bias
        logits -= logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(axis=1, keepdims=True))
        loss = -np.sum(onehot * (logits - log_norm)) / n
        loss += PROBE_L2 / 2 * np.sum(weights**2)
        residual = (np.exp(logits - log_norm) - onehot) / n
        gradient = np.concatenate(
            [(x.T @ residual + PROBE_L2 * weights).ravel(), residual.sum(axis=0)]
        )
        return float(loss), gradient

    theta = np.zeros((d + 1) * num_classes)
    loss, gradient = loss_and_gradient(theta)
    steps, changes = [], []
    for _ in range(PROBE_STEPS):
        if np.max(np.abs(gradient)) < 1e-6:
            break
        # Two-loop recursion: direction = -(inverse Hessian estimate) @ gradient.
        direction = -gradient
        coefficients = []
        for step, change in zip(reversed(steps), reversed(changes), strict=True):
            rho = 1.0 / (change @ step)
            coefficient = rho * (step @ direction)
            direction = direction - coefficient * change
            coefficients.append((rho, coefficient))
        if steps:
            direction *= (steps[-1] @ changes[-1]) / (changes[-1] @ changes[-1])
        else:
            direction /= max(1.0, float(np.linalg.norm(gradient)))
        for (step, change), (rho, coefficient) in zip(
            zip(steps, changes, strict=True), reversed(coefficients), strict=True
        ):
            direction = direction + step * (coefficient - rho * (change @ direction))
        # Backtracking line search (Armijo condition).
        slope = float(gradient @ direction)
        rate = 1.0
        while True:
            new_loss, new_gradient = loss_and_gradient(theta + rate * direction)
            if new_loss <= loss + 1e-4 * rate * slope or rate < 1e-10:
                break
            rate /= 2
        step, change = rate * direction, new_gradient - gradient
        theta, loss, gradient = theta + step, new_loss, new_gradient
        if change @ step > 1e-12:
            steps, changes = (steps + [step])[-10:], (changes + [change])[-10:]
    return theta[:-num_classes].reshape(d, num_classes), theta[-num_classes:]


def _fit_ridge(x: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression, penalty per target by leave-one-out; (W, b)."""
    n = len(x)
    mean = targets.mean(axis=0)
    centred = targets - mean
    u, s, v = _thin_svd(x)
    penalties = n * np.asarray(RIDGE_PENALTIES)
    shrink = s**2 / (s**2 + penalties[:, None])  # [penalties, k]
    projections = u.T @ centred  # [k, t]
    fitted = u @ (shrink[:, :, None] * projections)  # [penalties, n, t]
    leverage = 1.0 / n + (u**2) @ shrink.T  # [n, penalties]
    loo_errors = np.sum(
        ((centred - fitted) / (1 - leverage.T[:, :, None])) ** 2, axis=1
    )
    chosen = np.argmin(loo_errors, axis=0)  # [t]
    ratios = s / (s**2 + penalties[chosen][:, None])  # [t, k]
    weights = v @ (ratios.T * projections)
    return weights, mean


def _folds(groups: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """A fold number per example, each group spread evenly over the folds."""
    assignment = np.empty(len(groups), dtype=np.int64)
    offset = 0
    for group in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == group))
        assignment[members] = (offset + np.arange(len(members))) % folds
        offset += len(members)
    return assignment


def linear_probe(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    task: str = "classification",
    folds: int = 5,
    seed: int = 0,
) -> float:
    """Returns the cross-validated score of a linear model on the features.

    The examples are split into `folds` parts (stratified by class for
    classification, at random otherwise, by `seed`); each part is predicted
    by a model fitted on the others, on features standardised with the
    training part's mean and standard deviation.

    - `"classification"`: multinomial logistic regression, the mean
      cross-entropy plus `PROBE_L2 / 2 * ||W||^2`, at most `PROBE_STEPS`
      L-BFGS steps from zero. The score is the accuracy over all
      out-of-fold predictions (the mean of the folds' accuracies, weighted
      by their sizes). `folds` is lowered to the smallest class's count.
    - `"regression"`: ridge regression, with the penalty chosen per target
      and fold among `RIDGE_PENALTIES` by exact leave-one-out error on the
      training part. The score is the R^2 of all out-of-fold predictions,
      averaged over the targets. `folds` is lowered to n // 2.

    Args:
        features: `[n, d]` features of the target examples.
        labels: class indices `[n]` or regression targets `[n]`/`[n, t]`.
        task: `"classification"` or `"regression"`.
        folds: the number of cross-validation folds, at least 2.
        seed: seeds the split into folds; the same seed gives the same score.

    Returns:
        The out-of-fold accuracy (classification) or R^2 (regression).

    Example:

    >>> rng = np.random.default_rng(0)
    >>> labels = np.arange(100) % 2
    >>> linear_probe(labels[:, None] + 0.1 * rng.normal(size=(100, 3)), labels)
    1.0
    """
    _check_task("linear_probe", task)
    if not isinstance(folds, int) or folds < 2:
        raise ArgumentError(
            f"Expected folds to be an integer of at least 2. Received: folds={folds!r}."
        )
    features = _as_features(features)
    rng = np.random.default_rng(seed)
    if task == "classification":
        indices, num_classes = _class_indices(labels, len(features), "features")
        counts = np.bincount(indices)
        smallest = int(np.argmin(counts))
        if counts[smallest] < 2:
            name = np.unique(np.asarray(labels)).tolist()[smallest]
            raise DataError(
                f"Expected at least 2 examples of every class for a "
                f"cross-validated probe. Received: class {name!r} has "
                f"{counts[smallest]}. Add at least {2 - counts[smallest]} "
                "example of it, or drop the class."
            )
        assignment = _folds(indices, min(folds, int(counts.min())), rng)
        correct = 0
        for fold in np.unique(assignment):
            test = assignment == fold
            train_x, test_x = _row_space(*_standardise(features[~test], features[test]))
            weights, bias = _fit_softmax(train_x, indices[~test], num_classes)
            predicted = np.argmax(test_x @ weights + bias, axis=1)
            correct += int(np.sum(predicted == indices[test]))
        return correct / len(features)
    targets = _target_matrix(labels, len(features), task, "features")
    if len(features) < 4:
        raise DataError(
            "Expected at least 4 examples for a cross-validated regression "
            f"probe. Received: {len(features)}. Add examples."
        )
    total = np.sum((targets - targets.mean(axis=0)) ** 2, axis=0)
    if not np.all(total > 0):
        raise DataError(
            "Expected regression targets that vary. Received: constant "
            f"target column(s) {np.flatnonzero(total <= 0).tolist()}. Drop them."
        )
    assignment = _folds(np.zeros(len(features)), min(folds, len(features) // 2), rng)
    predictions = np.empty_like(targets)
    for fold in np.unique(assignment):
        test = assignment == fold
        train_x, test_x = _standardise(features[~test], features[test])
        weights, bias = _fit_ridge(train_x, targets[~test])
        predictions[test] = test_x @ weights + bias
    residual = np.sum((targets - predictions) ** 2, axis=0)
    return float(np.mean(1 - residual / total))


# H-score ------------------------------------------------------------------------


def h_score(features: ArrayLike, labels: ArrayLike) -> float:
    """Returns the H-score of the features for the classes, with shrinkage.

    The H-score (Bao et al., ICIP 2019) is `tr(cov(f)^-1 cov(E[f | y]))`:
    how far apart the class means are, measured in the features' own
    covariance. The covariance is estimated with Ledoit-Wolf shrinkage
    towards a multiple of the identity (as Ibrahim et al., ICLR 2023,
    recommend), `(1 - a) S + a tr(S) / d I` with the closed-form `a`, which
    keeps it invertible when there are fewer examples than dimensions.

    Args:
        features: `[n, d]` features of the target examples.
        labels: `[n]` class indices.

    Returns:
        The H-score, at least 0; higher predicts better transfer. (With
        the unshrunk covariance it would be at most the number of classes
        minus one; shrinkage lifts that bound, as do noisy class means.)

    Example:

    >>> rng = np.random.default_rng(0)
    >>> labels = np.arange(200) % 2
    >>> near = labels[:, None] + rng.normal(size=(200, 3))
    >>> far = 5 * labels[:, None] + rng.normal(size=(200, 3))
    >>> h_score(far, labels) > h_score(near, labels)
    True
    """
    features = _as_features(features)
    indices, num_classes = _class_indices(labels, len(features), "features")
    n, d = features.shape
    centred = features - features.mean(axis=0)
    _, s, v = _thin_svd(centred)
    eigenvalues = s**2 / n  # of the sample covariance S, on its row space
    mean_eigenvalue = float(np.sum(eigenvalues)) / d
    squared_norm = float(np.sum(eigenvalues**2))  # ||S||_F^2
    dispersion = (squared_norm - d * mean_eigenvalue**2) / d
    spread = (np.sum(np.sum(centred**2, axis=1) ** 2) - n * squared_norm) / (n**2 * d)
    shrinkage = (
        1.0 if dispersion <= 0 else min(max(spread, 0.0), dispersion) / dispersion
    )
    shrunk = (1 - shrinkage) * eigenvalues + shrinkage * mean_eigenvalue
    counts = np.bincount(indices, minlength=num_classes)
    class_means = (np.eye(num_classes)[indices].T @ centred) / counts[:, None]
    # The class means lie in the row space of the centred features, so the
    # covariance's inverse is needed only there.
    coordinates = class_means @ v
    return float(np.sum(counts / n * np.sum(coordinates**2 / shrunk, axis=1)))


# Registry -----------------------------------------------------------------------

ESTIMATORS: dict[str, Estimator] = {
    estimator.name: estimator
    for estimator in (
        Estimator(
            "logme",
            logme,
            "features",
            TASKS,
            description="log maximum evidence of a Bayesian linear model",
        ),
        Estimator(
            "leep",
            leep,
            "source_probabilities",
            ("classification",),
            description="log expected empirical prediction of the source classes",
        ),
        Estimator(
            "linear_probe",
            linear_probe,
            "features",
            ("classification", "regression"),
            description="cross-validated accuracy or R^2 of a linear model",
        ),
        Estimator(
            "h_score",
            h_score,
            "features",
            ("classification",),
            description="class-mean separation in the shrunk feature covariance",
        ),
    )
}
"""The transferability estimators by name, for code that iterates over them."""


def score(
    name: str,
    features_or_probabilities: ArrayLike,
    labels: ArrayLike,
    *,
    task: str,
    seed: int = 0,
) -> float:
    """Returns one estimator's score, after checking that it supports the task.

    Args:
        name: a key of `ESTIMATORS`.
        features_or_probabilities: what the estimator's `input` says: `[n, d]`
            features or `[n, z]` source-class probabilities.
        labels: the target labels, as the estimator takes them.
        task: one of `tftransfer.vocabulary.TASKS`.
        seed: passed to estimators that take one (`linear_probe`).

    Returns:
        The score; for every estimator in `ESTIMATORS` higher is better.

    Example:

    >>> labels = np.arange(40) % 2
    >>> features = labels[:, None] + np.linspace(0, 0.1, 40)[:, None]
    >>> score("linear_probe", features, labels, task="classification")
    1.0
    """
    if name not in ESTIMATORS:
        raise ConfigError(
            f"Expected an estimator name among {sorted(ESTIMATORS)}. "
            f"Received: name={name!r}."
        )
    _check_task(name, task)
    function = ESTIMATORS[name].function
    parameters = inspect.signature(function).parameters
    options = {"task": task, "seed": seed}
    return function(
        features_or_probabilities,
        labels,
        **{key: value for key, value in options.items() if key in parameters},
    )
