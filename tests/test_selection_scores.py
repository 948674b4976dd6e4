"""Transferability estimators: LogME, LEEP, the linear probe, the H-score."""

import dataclasses
import math

import numpy as np
import pytest

import tftransfer
from tftransfer.errors import ArgumentError, ConfigError, DataError
from tftransfer.selection import scores


def _direct_log_evidence(features, target, alpha, beta):
    """log N(y; 0, F F^T / alpha + I / beta), from the dense covariance."""
    n = len(target)
    covariance = features @ features.T / alpha + np.eye(n) / beta
    _, log_det = np.linalg.slogdet(covariance)
    quadratic = target @ np.linalg.solve(covariance, target)
    return -0.5 * (n * math.log(2 * math.pi) + log_det + quadratic)


def _regression_problem(n, d, seed):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, d))
    target = 0.3 * features @ rng.normal(size=d) + rng.normal(size=n)
    return features, target


def _gaussian_classes(n, d, num_classes, spread, seed):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    means = spread * rng.normal(size=(num_classes, d))
    return means[labels] + rng.normal(size=(n, d)), labels


# LogME ---------------------------------------------------------------------------

# (n, d, seed): n >= d uses F^T F, n < d uses F F^T; seeds whose maximum
# lies inside (0, inf)^2, so that perturbing alpha or beta lowers it.
EVIDENCE_CASES = [(40, 8, 2), (10, 30, 4)]


@pytest.mark.parametrize(("n", "d", "seed"), EVIDENCE_CASES)
def test_logme_evidence_is_the_gaussian_density_at_its_alpha_and_beta(n, d, seed):
    features, target = _regression_problem(n, d, seed)
    evidence, alpha, beta = scores.logme_evidence(features, target)
    direct = _direct_log_evidence(features, target, alpha, beta)
    assert evidence == pytest.approx(direct, rel=1e-6)


@pytest.mark.parametrize(("n", "d", "seed"), EVIDENCE_CASES)
def test_logme_evidence_alpha_and_beta_maximise_the_evidence(n, d, seed):
    features, target = _regression_problem(n, d, seed)
    _, alpha, beta = scores.logme_evidence(features, target)
    best = _direct_log_evidence(features, target, alpha, beta)
    for factor in (0.95, 1.05):
        assert _direct_log_evidence(features, target, alpha * factor, beta) < best
        assert _direct_log_evidence(features, target, alpha, beta * factor) < best


@pytest.mark.parametrize(("n", "d", "seed"), EVIDENCE_CASES)
def test_logme_evidence_meets_the_papers_fixed_point_equations(n, d, seed):
    # alpha = gamma / ||m||^2 and beta = (n - gamma) / ||y - F m||^2, with
    # m = beta A^-1 F^T y, A = alpha I + beta F^T F, gamma = sum of
    # beta sigma_i / (alpha + beta sigma_i) over the eigenvalues of F^T F.
    features, target = _regression_problem(n, d, seed)
    _, alpha, beta = scores.logme_evidence(features, target)
    gram = features.T @ features
    mean = beta * np.linalg.solve(alpha * np.eye(d) + beta * gram, features.T @ target)
    sigma = np.linalg.eigvalsh(gram)
    gamma = np.sum(beta * sigma / (alpha + beta * sigma))
    assert alpha == pytest.approx(gamma / (mean @ mean), rel=1e-6)
    residual = target - features @ mean
    assert beta == pytest.approx((n - gamma) / (residual @ residual), rel=1e-6)


def test_logme_matches_the_hand_derived_maximum_of_a_one_feature_problem():
    # F = (2, 0, 0, 0)^T, y = (3, 1, 1, 1): the covariance F F^T / alpha +
    # I / beta is diag(4 / alpha + 1 / beta, 1 / beta, 1 / beta, 1 / beta).
    # The three residual coordinates give 1 / beta = (1 + 1 + 1) / 3 = 1,
    # the first gives 4 / alpha + 1 = 3^2, so alpha = 1/2, and the evidence
    # is log N(y; 0, diag(9, 1, 1, 1)) = -2 log(2 pi) - log 3 - 2.
    # Following the reference implementation's published iteration
    # (thuml/LogME, alpha = beta = 1, at most 11 steps, 1e-5 added to the
    # denominators) by hand on this input reaches alpha = 0.500025,
    # beta = 0.999981 and LogME -1.69359161, within 3e-9 of this value.
    features = np.array([[2.0], [0.0], [0.0], [0.0]])
    target = np.array([3.0, 1.0, 1.0, 1.0])
    evidence, alpha, beta = scores.logme_evidence(features, target)
    expected = -2 * math.log(2 * math.pi) - math.log(3) - 2
    assert alpha == pytest.approx(0.5, rel=1e-6)
    assert beta == pytest.approx(1.0, rel=1e-6)
    assert evidence == pytest.approx(expected, rel=1e-12)
    per_example = scores.logme(features, target, task="regression")
    assert per_example == pytest.approx(expected / 4, rel=1e-12)
    assert per_example == pytest.approx(-1.69359161, abs=1e-8)


def test_logme_evidence_of_an_unpredictable_target_is_the_noise_models():
    # y is orthogonal to the only feature: the evidence grows with alpha up
    # to the noise-only model y ~ N(0, I / beta), beta = n / ||y||^2.
    features = np.array([[1.0], [0.0], [0.0], [0.0]])
    target = np.array([0.0, 1.0, -1.0, 2.0])
    evidence, alpha, beta = scores.logme_evidence(features, target)
    noise_only = -2 * math.log(2 * math.pi * 6 / 4) - 2
    assert evidence == pytest.approx(noise_only, rel=1e-7)
    assert beta == pytest.approx(4 / 6)
    assert alpha / beta == pytest.approx(scores.LOGME_SEARCH_SPAN, rel=1e-6)


def test_logme_classification_averages_the_one_hot_columns_per_example():
    features, labels = _gaussian_classes(60, 5, 3, 1.0, seed=0)
    per_class = [
        scores.logme_evidence(features, (labels == c).astype(float))[0] / 60
        for c in range(3)
    ]
    assert scores.logme(features, labels) == pytest.approx(np.mean(per_class))


def test_logme_scores_informative_features_above_shuffled_labels_and_noise():
    features, labels = _gaussian_classes(300, 16, 4, 1.5, seed=0)
    rng = np.random.default_rng(1)
    informative = scores.logme(features, labels)
    assert informative > scores.logme(features, rng.permutation(labels)) + 0.1
    assert informative > scores.logme(rng.normal(size=(300, 16)), labels) + 0.1


def test_logme_regression_takes_one_target_or_several():
    features, target = _regression_problem(200, 6, seed=3)
    noise = np.random.default_rng(4).normal(size=(200, 6))
    one = scores.logme(features, target, task="regression")
    assert one > scores.logme(noise, target, task="regression")
    both = scores.logme(features, np.stack([target, 2 * target], 1), task="regression")
    twice = scores.logme(features, 2 * target, task="regression")
    assert both == pytest.approx((one + twice) / 2)
    assert scores.logme(features, target[:, None], task="regression") == one


def test_logme_multi_label_scores_each_label_column_as_a_binary_target():
    features, labels = _gaussian_classes(120, 5, 3, 1.5, seed=5)
    multi_hot = np.stack([labels == 0, labels != 1], axis=1).astype(np.float32)
    expected = np.mean(
        [scores.logme(features, column, task="regression") for column in multi_hot.T]
    )
    assert scores.logme(features, multi_hot, task="multi_label") == pytest.approx(
        expected
    )


def test_logme_reads_float16_features_as_their_float64_values():
    features, labels = _gaussian_classes(50, 4, 2, 1.0, seed=6)
    half = features.astype(np.float16)
    assert scores.logme(half, labels) == scores.logme(half.astype(np.float64), labels)


# LEEP ----------------------------------------------------------------------------


def test_leep_matches_a_hand_computed_example():
    # theta rows (1, 0), (0, 1), (1/2, 1/2); labels 0, 1, 1.
    # P(y, z) = [[1/3, 0], [1/6, 1/2]], P(z) = (1/2, 1/2), so
    # P(y | z=0) = (2/3, 1/3) and P(y | z=1) = (0, 1).
    # Predictions at the true labels: 2/3, 1, 1/2 * 1/3 + 1/2 * 1 = 2/3.
    theta = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]
    value = scores.leep(theta, [0, 1, 1])
    assert value == pytest.approx(2 / 3 * math.log(2 / 3), rel=1e-12)


def test_leep_is_higher_when_the_source_classes_predict_the_targets():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    # Source classes 2c and 2c + 1 fire for target class c; 6 source classes.
    logits = 3.0 * np.eye(6)[2 * labels + rng.integers(0, 2, 300)]
    logits += rng.normal(size=(300, 6))
    informative = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    random = rng.dirichlet(np.ones(6), size=300)
    assert scores.leep(informative, labels) > scores.leep(random, labels) + 0.3
    assert scores.leep(informative, labels) <= 0


def test_leep_leaves_out_source_classes_with_no_probability():
    theta = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    padded = np.concatenate([theta, np.zeros((3, 1))], axis=1)
    assert scores.leep(padded, [0, 1, 0]) == pytest.approx(
        scores.leep(theta, [0, 1, 0])
    )


def test_leep_refuses_logits():
    with pytest.raises(DataError, match="not logits"):
        scores.leep([[2.0, -1.0], [0.5, 0.3]], [0, 1])
    with pytest.raises(DataError, match="row 1 sums to 0.9"):
        scores.leep([[0.5, 0.5], [0.5, 0.4]], [0, 1])


# Linear probe ---------------------------------------------------------------------


def test_linear_probe_is_perfect_on_linearly_separable_classes():
    # Three classes cut by hyperplanes, with a margin of 0.5 kept empty.
    rng = np.random.default_rng(0)
    features = rng.normal(size=(900, 10))
    margins = np.sort(features[:, :3] * [1.0, 1.2, 0.8], axis=1)
    features = features[margins[:, -1] - margins[:, -2] > 0.5]
    labels = np.argmax(features[:, :3] * [1.0, 1.2, 0.8], axis=1)
    assert len(features) > 300
    assert scores.linear_probe(features, labels) >= 0.99


def test_linear_probe_is_near_the_bayes_accuracy_on_noisy_classes():
    # Two Gaussians N(+-e_1, I) in 5-D: the Bayes accuracy is Phi(1).
    rng = np.random.default_rng(1)
    labels = np.arange(1000) % 2
    features = rng.normal(size=(1000, 5))
    features[:, 0] += 2.0 * labels - 1.0
    bayes = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    assert scores.linear_probe(features, labels) == pytest.approx(bayes, abs=0.03)


def test_linear_probe_is_near_chance_on_noise():
    rng = np.random.default_rng(2)
    labels = np.arange(400) % 4
    accuracy = scores.linear_probe(rng.normal(size=(400, 8)), labels)
    assert accuracy == pytest.approx(0.25, abs=0.07)


def test_linear_probe_is_deterministic_for_a_seed():
    features, labels = _gaussian_classes(200, 20, 4, 0.4, seed=3)
    first = scores.linear_probe(features, labels, seed=7)
    assert scores.linear_probe(features, labels, seed=7) == first


def test_linear_probe_regression_r2_is_near_the_explained_variance():
    # y = x . w + noise with var(x . w) = var(noise) = 1: R^2 = 1/2.
    rng = np.random.default_rng(3)
    features = rng.normal(size=(1000, 5))
    target = features @ np.array([0.6, 0.8, 0.0, 0.0, 0.0]) + rng.normal(size=1000)
    r2 = scores.linear_probe(features, target, task="regression")
    assert r2 == pytest.approx(0.5, abs=0.05)
    noise_r2 = scores.linear_probe(
        rng.normal(size=(1000, 5)), target, task="regression"
    )
    assert -0.05 < noise_r2 < 0.02
    both = np.stack([target, rng.normal(size=1000)], axis=1)
    two = scores.linear_probe(features, both, task="regression")
    assert two == pytest.approx((r2 + 0.0) / 2, abs=0.03)


def test_linear_probe_lowers_folds_to_the_smallest_class_count():
    features, labels = _gaussian_classes(40, 3, 2, 2.0, seed=4)
    labels[:-2] = np.where(labels[:-2] == 1, 0, labels[:-2])
    labels[-2:] = 1  # class 1 has 2 examples
    lowered = scores.linear_probe(features, labels, folds=5, seed=1)
    assert lowered == scores.linear_probe(features, labels, folds=2, seed=1)


def test_linear_probe_refuses_a_class_with_one_example():
    features = np.random.default_rng(0).normal(size=(7, 3))
    with pytest.raises(DataError, match=r"class 7 has 1\. Add at least 1"):
        scores.linear_probe(features, [3] * 6 + [7])


def test_linear_probe_refuses_fewer_than_two_folds():
    features, labels = _gaussian_classes(20, 3, 2, 1.0, seed=0)
    with pytest.raises(ArgumentError, match="folds=1"):
        scores.linear_probe(features, labels, folds=1)


# H-score --------------------------------------------------------------------------


def _direct_shrunk_h_score(features, labels):
    """H-score from the dense Ledoit-Wolf covariance and class-mean covariance."""
    n, d = features.shape
    centred = features - features.mean(axis=0)
    sample = centred.T @ centred / n
    mu = np.trace(sample) / d
    dispersion = np.sum((sample - mu * np.eye(d)) ** 2) / d
    spread = sum(np.sum((np.outer(x, x) - sample) ** 2) / d for x in centred) / n**2
    shrinkage = min(spread, dispersion) / dispersion
    covariance = (1 - shrinkage) * sample + shrinkage * mu * np.eye(d)
    class_means = np.stack([centred[labels == c].mean(0) for c in np.unique(labels)])
    weights = np.bincount(labels) / n
    between = (class_means.T * weights) @ class_means
    return np.trace(np.linalg.solve(covariance, between))


@pytest.mark.parametrize(("n", "d"), [(60, 5), (12, 30)])
def test_h_score_equals_the_dense_shrunk_covariance_formula(n, d):
    features, labels = _gaussian_classes(n, d, 3, 1.0, seed=n)
    expected = _direct_shrunk_h_score(features, labels)
    assert scores.h_score(features, labels) == pytest.approx(expected, rel=1e-8)


def test_h_score_is_higher_for_better_separated_classes():
    near, labels = _gaussian_classes(200, 8, 3, 0.3, seed=1)
    far, _ = _gaussian_classes(200, 8, 3, 3.0, seed=1)
    assert scores.h_score(far, labels) > 3 * scores.h_score(near, labels)


# Registry ----------------------------------------------------------------------


def test_estimators_describe_each_score():
    assert set(scores.ESTIMATORS) == {"logme", "leep", "linear_probe", "h_score"}
    for name, estimator in scores.ESTIMATORS.items():
        assert estimator.name == name
        assert estimator.input in ("features", "source_probabilities")
        assert set(estimator.tasks) <= set(tftransfer.vocabulary.TASKS)
        assert estimator.higher_is_better and estimator.description
    assert scores.ESTIMATORS["leep"].input == "source_probabilities"
    with pytest.raises(dataclasses.FrozenInstanceError):
        scores.ESTIMATORS["logme"].name = "other"


def test_score_calls_the_named_estimator_with_its_task_and_seed():
    features, labels = _gaussian_classes(60, 4, 3, 1.0, seed=2)
    assert scores.score("logme", features, labels, task="classification") == (
        scores.logme(features, labels)
    )
    assert scores.score(
        "linear_probe", features, labels, task="classification", seed=3
    ) == scores.linear_probe(features, labels, seed=3)
    target = features[:, 0] + 1.0
    assert scores.score("logme", features, target, task="regression") == (
        scores.logme(features, target, task="regression")
    )


def test_score_refuses_an_unknown_estimator_listing_the_known_ones():
    with pytest.raises(
        ConfigError, match=r"\['h_score', 'leep', 'linear_probe', 'logme'\]"
    ):
        scores.score("logmee", np.ones((4, 2)), [0, 1, 0, 1], task="classification")


def test_score_refuses_a_task_the_estimator_does_not_support():
    with pytest.raises(
        ConfigError,
        match=r"'h_score' does not support task='regression'.*'logme', 'linear_probe'",
    ):
        scores.score("h_score", np.ones((4, 2)), [0.5, 1, 2, 3], task="regression")
    with pytest.raises(ConfigError, match="multi_label"):
        scores.linear_probe(np.ones((4, 2)), [[0, 1]] * 4, task="multi_label")
    with pytest.raises(ConfigError, match=r"task='ranking'"):
        scores.logme(np.ones((4, 2)), [0, 1, 0, 1], task="ranking")


# Input errors --------------------------------------------------------------------

FEATURE_ESTIMATORS = ["logme", "linear_probe", "h_score"]


def _call(name, features, labels, task="classification"):
    if name == "leep":
        with np.errstate(invalid="ignore"):  # inf / inf where a test put inf
            features = np.abs(features) / np.abs(features).sum(1, keepdims=True)
    return scores.score(name, features, labels, task=task)


@pytest.mark.parametrize("name", [*FEATURE_ESTIMATORS, "leep"])
def test_estimators_refuse_labels_of_another_length(name):
    features, labels = _gaussian_classes(20, 3, 2, 1.0, seed=0)
    with pytest.raises(DataError, match=r"one label per row .*\(20\). Received: 19"):
        _call(name, features, labels[:19])


@pytest.mark.parametrize("name", [*FEATURE_ESTIMATORS, "leep"])
def test_estimators_refuse_nan_and_inf(name):
    features, labels = _gaussian_classes(20, 3, 2, 1.0, seed=0)
    features[5, 1] = np.nan
    features[9, 0] = np.inf
    with pytest.raises(DataError, match=r"NaN or inf in 2 of 20 rows \(first: row 5\)"):
        _call(name, features, labels)


@pytest.mark.parametrize("name", [*FEATURE_ESTIMATORS, "leep"])
def test_estimators_refuse_a_single_class(name):
    features, _ = _gaussian_classes(20, 3, 2, 1.0, seed=0)
    with pytest.raises(DataError, match=r"at least 2 classes.*every label is \[3\]"):
        _call(name, features, np.full(20, 3))


@pytest.mark.parametrize("name", [*FEATURE_ESTIMATORS, "leep"])
def test_estimators_refuse_empty_input(name):
    with pytest.raises(DataError, match=r"at least one example.*shape=\(0, 3\)"):
        scores.score(name, np.zeros((0, 3)), [], task="classification")


@pytest.mark.parametrize("name", FEATURE_ESTIMATORS)
def test_estimators_refuse_features_that_are_not_a_matrix(name):
    with pytest.raises(DataError, match=r"shape \[num_examples, dim\].*\(4, 2, 2\)"):
        _call(name, np.ones((4, 2, 2)), [0, 1, 0, 1])


@pytest.mark.parametrize("name", FEATURE_ESTIMATORS)
def test_estimators_refuse_constant_features(name):
    with pytest.raises(DataError, match="differ between examples.*all 6 rows"):
        _call(name, np.full((6, 3), 0.5), [0, 1] * 3)


def test_classification_refuses_one_hot_and_non_integer_labels():
    features = np.random.default_rng(0).normal(size=(4, 2))
    with pytest.raises(DataError, match=r"labels.argmax\(-1\)"):
        scores.logme(features, np.eye(2)[[0, 1, 0, 1]])
    with pytest.raises(DataError, match="integer class indices"):
        scores.h_score(features, [0.5, 1.0, 0.0, 1.0])


def test_multi_label_and_regression_refuse_unusable_targets():
    features = np.random.default_rng(0).normal(size=(4, 2))
    with pytest.raises(DataError, match=r"0s and 1s.*\[0\.5\]"):
        scores.logme(features, [[0, 1], [1, 0.5], [0, 1], [1, 0]], task="multi_label")
    with pytest.raises(DataError, match=r"label column\(s\) \[1\] with no positive"):
        scores.logme(features, [[0, 0], [1, 0], [0, 0], [1, 0]], task="multi_label")
    with pytest.raises(DataError, match=r"target column\(s\) \[0\] all zero"):
        scores.logme(features, np.zeros(4), task="regression")
    with pytest.raises(DataError, match=r"constant target column\(s\) \[0\]"):
        scores.linear_probe(features, np.ones(4), task="regression")


def test_linear_probe_fits_in_the_row_space_when_features_outnumber_examples(
    monkeypatch,
):
    # Fewer examples than features: the probe fits in the span of each
    # fold's training rows, which must give the same predictions as the
    # fit in all the features' coordinates.
    rng = np.random.default_rng(3)
    labels = np.arange(120) % 6
    centres = rng.normal(size=(6, 400))
    features = rng.normal(size=(120, 400)) + 0.15 * centres[labels]
    reduced = scores.linear_probe(features, labels, seed=1)
    monkeypatch.setattr(scores, "_row_space", lambda train, test: (train, test))
    full = scores.linear_probe(features, labels, seed=1)
    assert 0.3 < reduced < 0.95  # neither chance nor trivially separable
    assert reduced == full
