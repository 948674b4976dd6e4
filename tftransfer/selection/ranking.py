"""`rank()`: which backbone, layer and pooling to use, before training.

Each candidate's frozen features are computed on a stratified sample of the
training data through the recipes' feature cache (a rerun reuses them) and
scored by
transferability estimators (`tftransfer.selection.scores`). Nothing is
fine-tuned: ranking costs one backbone pass over the sample per candidate.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tftransfer import atomic, defaults
from tftransfer.errors import ConfigError
from tftransfer.selection import scores as estimators

FREEZE_PROBE_ACCURACY = 0.95
"""The cross-validated linear-probe accuracy (R^2 for regression) from which
`rank()` recommends feature extraction: the frozen features already
separate the classes. Below it, it recommends fine-tuning. Set from
`benchmarks/transfer_quality.py`: fine-tuning beat the frozen model where
the probe scores 0.81-0.91 (MNIST 100 a class, 0.954 vs 0.942; the `shift`
task, 0.92 vs 0.87) and BBC News's frozen MiniLM (probe 0.95-0.96) reaches
0.965."""

LEARNED_POOLINGS = ("attention",)
"""Poolings trained with the head: `rank()` scores frozen features, so it
ranks their backbone and layer with a fixed pooling instead."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One choice to rank: a backbone, and which of its features to use.

    Args:
        backbone: A `tftransfer.Backbone`; a handle or catalogue name for
            `tftransfer.backbone()`; or a dict `{"handle": ..., **options}`
            of its arguments (for example `{"handle": "all-minilm-l6-v2",
            "layers": [3]}`).
        features: The recipes' `features=`: which backbone output to use
            (for example `"sequence_output"`), `None` for its feature output.
        pooling: The recipes' `pooling=` for a sequence output (`"mean"`,
            `"max"` or `"first"`).
        classifier: The source model's classifier, in the same forms as
            `backbone`: a backbone whose "features" are the source task's
            class probabilities (for LEEP), or `None`.
        name: Its label in the table; by default made from the backbone's
            name and the options that tell candidates apart.

    Example:

    >>> Candidate({"handle": "all-minilm-l6-v2", "layers": [2]}, name="minilm-l3")
    """

    backbone: Any
    features: str | None = None
    pooling: str | None = None
    classifier: Any = None
    name: str | None = None

    def __post_init__(self):
        if self.pooling in LEARNED_POOLINGS:
            raise ConfigError(
                f"Candidate {self.label!r} has pooling={self.pooling!r}, which "
                "is learned with the head; rank() scores frozen features. Rank "
                "its backbone and layer with pooling='mean', then train the "
                f"best one with pooling={self.pooling!r}."
            )

    @property
    def label(self) -> str:
        """`name`, or one made from the backbone and the feature choice."""
        if self.name:
            return self.name
        parts = [_backbone_label(self.backbone)]
        parts += [f"{key}={value}" for key, value in self.recipe_arguments().items()]
        return " ".join(parts)

    def recipe_arguments(self) -> dict[str, str]:
        """The recipe keyword arguments (`features`, `pooling`) it sets."""
        arguments = {"features": self.features, "pooling": self.pooling}
        return {key: value for key, value in arguments.items() if value is not None}

    def to_dict(self) -> dict[str, Any]:
        """The candidate as JSON: backbone and classifier as their configs."""
        return {
            "name": self.label,
            "backbone": _backbone_spec(self.backbone),
            **self.recipe_arguments(),
            "classifier": (
                _backbone_spec(self.classifier) if self.classifier is not None else None
            ),
        }


@dataclasses.dataclass(frozen=True)
class RankedCandidate:
    """A candidate's row of a `Ranking`.

    Attributes:
        candidate: The `Candidate`.
        scores: Each estimator's score (`None` where it does not apply: LEEP
            without a classifier, an estimator that does not take the task).
        feature_dim: The size of its feature vector.
        feature_seconds: Time to compute (or read from the cache) its
            features on the sample (and its classifier's probabilities).
        score_seconds: Time to compute its scores.
    """

    candidate: Candidate
    scores: dict[str, float | None]
    feature_dim: int
    feature_seconds: float
    score_seconds: float

    @property
    def name(self) -> str:
        return self.candidate.label


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """What `rank()` advises: the candidate, and whether to freeze it.

    Attributes:
        candidate: The top-ranked `Candidate`.
        recipe: `"feature_extraction"` (freeze it) or `"fine_tuning"`, the
            recipe file's `recipe.kind`.
        reason: One sentence saying why, with the score it rests on.
    """

    candidate: Candidate
    recipe: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Ranking:
    """The candidates of `rank()`, best first by the score `by`.

    Attributes:
        rows: One `RankedCandidate` per candidate, best first (candidates
            without a `by` score last, in the order given).
        by: The estimator the rows are sorted by.
        task: The task the labels are for.
        num_examples: The examples of the sample the features were scored on.
        recommendation: The `Recommendation`.
    """

    rows: list[RankedCandidate]
    by: str
    task: str
    num_examples: int
    recommendation: Recommendation

    @property
    def best(self) -> Candidate:
        """The top-ranked candidate."""
        return self.rows[0].candidate

    def table(self) -> str:
        """The rows as a plain-text table: rank, candidate, scores, times."""
        names = [name for name in estimators.ESTIMATORS if self._has(name)]
        header = ["#", "candidate", *names, "dim", "features s", "scores s"]
        lines = [header]
        for index, row in enumerate(self.rows, 1):
            values = [_format(row.scores.get(name)) for name in names]
            lines.append(
                [
                    str(index),
                    row.name,
                    *values,
                    str(row.feature_dim),
                    f"{row.feature_seconds:.1f}",
                    f"{row.score_seconds:.2f}",
                ]
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        return "\n".join(
            "  ".join(
                cell.ljust(width) for cell, width in zip(line, widths, strict=True)
            )
            for line in lines
        )

    def to_dict(self) -> dict[str, Any]:
        """The ranking as JSON-serialisable data (what `save()` writes)."""
        return {
            "by": self.by,
            "task": self.task,
            "num_examples": self.num_examples,
            "recommendation": {
                "candidate": self.recommendation.candidate.to_dict(),
                "recipe": self.recommendation.recipe,
                "reason": self.recommendation.reason,
            },
            "rows": [
                {
                    **row.candidate.to_dict(),
                    "scores": row.scores,
                    "feature_dim": row.feature_dim,
                    "feature_seconds": row.feature_seconds,
                    "score_seconds": row.score_seconds,
                }
                for row in self.rows
            ],
        }

    def save(self, folder: str | os.PathLike) -> Path:
        """Writes `rank.json` into `folder`, atomically, and a bar chart of
        the scores, `rank.png`, where matplotlib is installed (the `report`
        extra).

        Returns:
            The path of `rank.json`.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "rank.json"
        atomic.write_json(path, self.to_dict())
        if importlib.util.find_spec("matplotlib") is not None:
            from tftransfer.evaluation import plot_scores

            names = [name for name in estimators.ESTIMATORS if self._has(name)]
            plot_scores(
                [row.name for row in self.rows],
                {name: [row.scores.get(name) for row in self.rows] for name in names},
                folder / "rank.png",
                title=f"Candidates on {self.num_examples} examples, best first by "
                f"{self.by}",
            )
        return path

    def _has(self, name: str) -> bool:
        return any(row.scores.get(name) is not None for row in self.rows)


def rank(
    candidates: Sequence[Candidate | Any],
    data,
    *,
    scores: Sequence[str] = defaults.RANK_SCORES,
    by: str = defaults.RANK_BY,
    examples: int = defaults.RANK_EXAMPLES,
    batch_size: int = defaults.BATCH_SIZE,
    precision: str = "float32",
    strategy: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    verbose: int = 1,
) -> Ranking:
    """Ranks backbones (layers, poolings) for `data` from frozen features.

    Each candidate's features are computed once on a stratified sample of
    `data` (`tftransfer.data.sample`), through the feature cache of
    `FeatureExtraction`, and scored by each estimator of `scores`
    (`tftransfer.selection.scores.ESTIMATORS`). The rows are sorted by `by`;
    the top one is recommended, frozen (`"feature_extraction"`) where its
    cross-validated linear probe reaches `FREEZE_PROBE_ACCURACY`, else
    fine-tuned (multi-label data has no probe, so it is recommended frozen).

    Args:
        candidates: `Candidate`s, or what a `Candidate` takes as `backbone`
            (a `Backbone`, a handle, an arguments dict).
        data: The training data, a `tftransfer.data.LabeledData`.
        scores: The estimators to compute. LEEP applies to candidates with a
            `classifier`.
        by: The estimator that orders the rows (`"logme"` by default: it
            needs no training and no folds, so it is the cheapest and is
            deterministic).
        examples: The size of the stratified sample scored (the whole data
            if smaller; at least 2 examples of each class).
        batch_size: Batch size of the backbone pass.
        precision: The backbone pass's precision (see `FeatureExtraction`).
            float32 by default: on a sample of a few hundred examples the
            `"auto"` guard's probe (its first batches in both precisions)
            costs more than a reduced precision saves.
        strategy: A strategy kind or a `tf.distribute.Strategy`.
        cache_dir: The feature cache (tftransfer's cache folder by default).
        seed: Seed of the sample and of the estimators' folds.
        verbose: 1 prints a line per candidate; 0 is silent.

    Returns:
        A `Ranking`.

    Raises:
        ConfigError: for no candidates, two with one name, an unknown
            estimator, `by` not among `scores`, or a learned pooling.

    Example:

    >>> ranking = tftransfer.rank(
    ...     ["efficientnet-lite0", {"handle": "efficientnet-lite0", "layers": [-2]}],
    ...     train,
    ... )
    >>> print(ranking.table())
    >>> ranking.recommendation.recipe
    'feature_extraction'
    """
    from tftransfer import distribute
    from tftransfer.data import sample

    candidates = [_as_candidate(candidate) for candidate in candidates]
    _check_arguments(candidates, scores, by)
    if not isinstance(strategy, str):
        resolved = strategy
    else:
        resolved = distribute.resolve_strategy(strategy)
    _check_task(by, data.task)
    subset = sample(data, examples, seed=seed)

    def features_of(backbone, arguments: dict):
        return _features(
            backbone,
            arguments,
            subset,
            resolved,
            cache_dir,
            batch_size,
            precision,
            seed,
        )

    rows = []
    for candidate in candidates:
        started = time.perf_counter()
        features, labels = features_of(candidate.backbone, candidate.recipe_arguments())
        probabilities = None
        if candidate.classifier is not None and "leep" in scores:
            probabilities, _ = features_of(candidate.classifier, {})
        featured = time.perf_counter()
        row_scores = {
            name: _score(name, features, probabilities, labels, data.task, seed)
            for name in scores
        }
        rows.append(
            RankedCandidate(
                candidate=candidate,
                scores=row_scores,
                feature_dim=int(features.shape[-1]),
                feature_seconds=featured - started,
                score_seconds=time.perf_counter() - featured,
            )
        )
        if verbose:
            shown = ", ".join(f"{k} {_format(v)}" for k, v in row_scores.items())
            print(f"rank: {candidate.label}: {shown}", flush=True)
    if all(row.scores.get(by) is None for row in rows):
        raise ConfigError(
            f"No candidate has a {by!r} score to order them by (LEEP needs a "
            "candidate's `classifier`). Give the candidates classifiers, or "
            "order them by another estimator (`by=`)."
        )
    rows.sort(key=lambda row: _sort_key(row.scores.get(by)))
    return Ranking(
        rows=rows,
        by=by,
        task=data.task,
        num_examples=int(len(labels)),
        recommendation=_recommend(rows[0], data.task),
    )


def _features(
    backbone, arguments, subset, strategy, cache_dir, batch_size, precision, seed
):
    """`(features, labels)` of `subset` through a frozen `FeatureExtraction`
    with the recipe `arguments` (`features`, `pooling`)."""
    from tftransfer.recipes import FeatureExtraction

    recipe = FeatureExtraction(
        as_backbone(backbone),
        **arguments,
        cache_dir=cache_dir,
        batch_size=batch_size,
        precision=precision,
        strategy=strategy,
        seed=seed,
        verbose=0,
    )
    features, labels = recipe.cached_features(subset, "rank").arrays()
    return np.asarray(features, np.float32), labels


def _score(name, features, probabilities, labels, task, seed) -> float | None:
    estimator = estimators.ESTIMATORS[name]
    if task not in estimator.tasks:
        return None
    if estimator.input == "source_probabilities":
        if probabilities is None:
            return None
        return float(
            estimators.score(name, probabilities, labels, task=task, seed=seed)
        )
    return float(estimators.score(name, features, labels, task=task, seed=seed))


def _recommend(best: RankedCandidate, task: str) -> Recommendation:
    probe = best.scores.get("linear_probe")
    measure = "R^2" if task == "regression" else "accuracy"
    if probe is None:
        return Recommendation(
            best.candidate,
            "feature_extraction",
            "No linear probe was scored, so nothing says the frozen features fall "
            "short: start frozen (feature extraction is the cheaper run).",
        )
    if probe >= FREEZE_PROBE_ACCURACY:
        return Recommendation(
            best.candidate,
            "feature_extraction",
            f"Its frozen features already reach a cross-validated linear-probe "
            f"{measure} of {probe:.3f} (>= {FREEZE_PROBE_ACCURACY}): freeze it.",
        )
    return Recommendation(
        best.candidate,
        "fine_tuning",
        f"Its frozen features reach a cross-validated linear-probe {measure} of "
        f"only {probe:.3f} (< {FREEZE_PROBE_ACCURACY}): the source and target "
        "domains differ, so fine-tune it (FineTuning keeps the frozen model "
        "where fine-tuning does not help).",
    )


def _as_candidate(value) -> Candidate:
    if isinstance(value, Candidate):
        return value
    if isinstance(value, dict) and "backbone" in value:
        return Candidate(**value)
    return Candidate(value)


def as_backbone(value):
    """A candidate's `backbone` (or `classifier`) as a `Backbone`: one
    given, built from a handle, or from `{"handle": ..., **options}`."""
    from tftransfer.backbones import Backbone, backbone

    if isinstance(value, Backbone):
        return value
    if isinstance(value, str):
        return backbone(value)
    if isinstance(value, dict) and isinstance(value.get("handle"), str):
        options = dict(value)
        return backbone(options.pop("handle"), **options)
    raise ConfigError(
        "Expected a candidate backbone to be a tftransfer.Backbone, a handle or "
        f"a dict {{'handle': ..., **options}}. Received: {value!r}."
    )


def _backbone_spec(value) -> Any:
    """A JSON description of a candidate's backbone: its config or handle."""
    from tftransfer.backbones import Backbone

    if isinstance(value, Backbone):
        try:
            return value.get_config()
        except ConfigError:
            return {"handle": value.handle, "name": value.name}
    return value


def _backbone_label(value) -> str:
    from tftransfer.backbones import Backbone

    if isinstance(value, str):
        return value
    if isinstance(value, Backbone):
        try:
            options = value.get_config()["arguments"]
        except ConfigError:
            options = {}
        label = value.name
    elif isinstance(value, dict):
        options, label = value, str(value.get("handle"))
    else:
        return repr(value)
    shown = {k: v for k, v in options.items() if k not in ("handle", "name")}
    return label + "".join(f" {key}={value}" for key, value in sorted(shown.items()))


def _check_arguments(candidates: list[Candidate], scores: Sequence[str], by: str):
    if not candidates:
        raise ConfigError("rank() needs at least one candidate. Received none.")
    labels = [candidate.label for candidate in candidates]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(
            f"Two candidates are both named {repeated[0]!r}; give them distinct "
            "`name`s."
        )
    unknown = [name for name in scores if name not in estimators.ESTIMATORS]
    if unknown or not scores:
        raise ConfigError(
            f"Expected `scores` to name estimators of {sorted(estimators.ESTIMATORS)}. "
            f"Received: scores={list(scores)!r}."
        )
    if by not in scores:
        raise ConfigError(
            f"Expected `by` to be one of the computed scores {list(scores)}. "
            f"Received: by={by!r}."
        )


def _check_task(by: str, task: str) -> None:
    """Refuses an ordering estimator that does not score `task`."""
    estimator = estimators.ESTIMATORS[by]
    if task not in estimator.tasks:
        takers = [n for n, e in estimators.ESTIMATORS.items() if task in e.tasks]
        raise ConfigError(
            f"by={by!r} cannot order the candidates: it does not score "
            f"{task!r} data. Order them by one of {takers}."
        )


def _sort_key(value: float | None) -> tuple[int, float]:
    if value is None or math.isnan(value):
        return (1, 0.0)
    return (0, -value)


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
