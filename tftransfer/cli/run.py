"""`tftransfer run` and `tftransfer export`: a whole job from a recipe file.

The job: build the backbone, read and split the data, train with the chosen
recipe under the chosen strategy, evaluate on the held-out split, write the
run folder (report, metrics, plots, TensorBoard logs, the recipe as run) and
export. Each step prints what it does and how long it took.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tftransfer import config as config_lib
from tftransfer.cli import sources
from tftransfer.config import RunConfig

RECIPE_FILE = "recipe.yaml"


@contextlib.contextmanager
def step(message: str):
    """Prints `message`, runs the block, then prints how long it took."""
    print(f"==> {message}", flush=True)
    start = time.perf_counter()
    yield
    print(f"    done in {time.perf_counter() - start:.1f} s", flush=True)


def run_dir(config: RunConfig) -> Path:
    """The run folder: `<runs_dir>/<name>`."""
    return Path(config.runs_dir) / config.name


def build_backbone(config: RunConfig):
    """The `Backbone` the recipe file's `backbone:` section names."""
    import tftransfer

    options = dict(config.backbone.options)
    if config.backbone.seq_length is not None:
        options["seq_length"] = config.backbone.seq_length
    return tftransfer.backbone(config.backbone.handle, **options)


def read_splits(config: RunConfig):
    """Reads the data and splits it; returns `(data, Splits)`."""
    from tftransfer.data import split

    data = sources.read(config.data)
    parts = split(
        data,
        validation=config.data.validation,
        test=config.data.test,
        seed=config.data.seed,
    )
    return data, parts


def build_recipe(config: RunConfig, backbone):
    """The `FeatureExtraction` or `FineTuning` recipe the file describes."""
    from tftransfer.recipes import FeatureExtraction, FineTuning

    settings = config.recipe
    arguments = {
        "dropout": settings.dropout,
        "patience": settings.patience,
        "batch_size": config.data.batch_size,
        "learning_rate": settings.learning_rate,
        "run_dir": run_dir(config),
        "strategy": config.distribute.strategy,
        "tpu": config.distribute.tpu,
        "seed": config.data.seed,
        "cache_dir": config.cache_dir,
        "verbose": 2,
        **settings.options,
    }
    if settings.kind == "fine_tuning":
        return FineTuning(
            backbone,
            head_epochs=settings.epochs,
            epochs=settings.fine_tune_epochs,
            fine_tune_learning_rate=settings.fine_tune_learning_rate,
            **arguments,
        )
    return FeatureExtraction(backbone, epochs=settings.epochs, **arguments)


def held_out_split(config: RunConfig, parts) -> tuple[str, Any]:
    """The split the final evaluation uses, and its name.

    `evaluation.split: test` is the test part, or the validation part where
    the data has none (`data.test: null`); `validation` is the validation
    part.

    Returns:
        `(name, LabeledData)`, the name being `"test"` or `"validation"`.
    """
    if config.evaluation.split == "test" and parts.test:
        return "test", parts.test
    return "validation", parts.validation


def predictions(recipe, data) -> tuple[np.ndarray, np.ndarray]:
    """Returns `(labels, probabilities)` of the trained recipe on `data`,
    in the order of `data` (feature extraction reuses cached features)."""
    labels = np.array([label for _, label in data.dataset.as_numpy_iterator()])
    return labels, recipe.predict(data)


def _train(config: RunConfig):
    """Steps shared by `run` and `export`: backbone, data, recipe, fit."""
    with step(f"Backbone {config.backbone.handle}"):
        backbone = build_backbone(config)
    with step(f"Reading {config.data.format} data from {config.data.path}"):
        data, parts = read_splits(config)
        sizes = ", ".join(
            f"{name} {part.num_examples}"
            for name, part in zip(parts._fields, parts, strict=True)
            if part
        )
        print(f"    {data.num_examples} examples, {data.num_classes} classes ({sizes})")
    recipe = build_recipe(config, backbone)
    print(f"    strategy: {type(recipe.strategy).__name__}")
    with step(f"Training: {config.recipe.kind.replace('_', ' ')}"):
        recipe.fit(parts.train, parts.validation)
    return data, parts, recipe


def _serving_examples(data, count: int = 4) -> list:
    """A few raw inputs as a client sends them (text, or encoded image bytes)."""
    examples = [x for x, _ in data.dataset.take(count).as_numpy_iterator()]
    if data.input_format == "file_path":
        return [Path(x.decode()).read_bytes() for x in examples]
    if data.input_format == "pixels":
        import tensorflow as tf

        return [tf.io.encode_png(tf.cast(x, tf.uint8)).numpy() for x in examples]
    return examples


def _evaluate(recipe, split_name: str, held_out) -> tuple[np.ndarray, np.ndarray, dict]:
    """Returns `(labels, probabilities, metrics)` on the held-out split;
    `metrics["split"]` names it."""
    from tftransfer.recipes.metrics import classification_metrics

    labels, probabilities = predictions(recipe, held_out)
    metrics = classification_metrics(labels, probabilities, recipe.class_names)
    return labels, probabilities, {**metrics, "split": split_name, **recipe.choices}


def _export(config: RunConfig, recipe, data, metrics, held_out) -> Path:
    """Exports the trained recipe; the held-out split gives the examples that
    `verify` serves and, for TFLite, the batches its accuracy is measured on."""
    import tftransfer
    from tftransfer.data import make_pipeline

    base = config.export.base_path or str(Path("saved_models") / config.name)
    validation_data = None
    if config.export.format == "tflite":
        validation_data = make_pipeline(
            held_out, recipe.backbone, config.data.batch_size
        )
    with step(f"Exporting to {base}"):
        path = tftransfer.export(
            recipe,
            base,
            metrics=metrics,
            data_source=data.source,
            settings={**recipe.settings, "recipe_file": config.to_dict()},
            format=config.export.format,
            validation_data=validation_data,
        )
        if config.export.verify:
            tftransfer.export.verify(
                path,
                _serving_examples(held_out),
                model=recipe.model,
                backbone=recipe.backbone,
                print_signatures=False,
            )
    return path


def run(config: RunConfig) -> Path:
    """Runs the whole job; returns the run folder.

    Example:

    >>> run(tftransfer.config.load("recipes/default.yaml"))
    PosixPath('runs/bbc-news-topics')
    """
    from tftransfer import evaluation

    folder = run_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RECIPE_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    started = time.perf_counter()
    data, parts, recipe = _train(config)
    split_name, held_out = held_out_split(config, parts)
    if split_name != config.evaluation.split:
        print("    (the data has no test part: data.test is null)")
    with step(f"Evaluating on the {split_name} split and writing the report"):
        labels, probabilities, metrics = _evaluate(recipe, split_name, held_out)
        inputs = [x for x, _ in held_out.dataset.as_numpy_iterator()]
        report = evaluation.write_report(
            folder,
            metrics=metrics,
            history=recipe.history.history,
            labels=labels,
            probabilities=probabilities,
            inputs=inputs,
            input_format=held_out.input_format,
            title=config.name,
            settings=config.to_dict(),
            confidently_wrong_count=config.evaluation.confidently_wrong,
        )
    print(
        f"\n{split_name} accuracy: {metrics['accuracy']:.4f} "
        f"(macro F1 {metrics['macro_f1']:.4f}, {metrics['num_examples']} examples)"
    )
    export_path = None
    if config.export.enabled:
        export_path = _export(config, recipe, data, metrics, held_out)
    print(f"\nFinished in {time.perf_counter() - started:.0f} s.")
    print(f"Report:      {report.resolve()}")
    print(f"TensorBoard: tensorboard --logdir {(folder / 'logs').resolve()}")
    if export_path is not None:
        _print_serving(export_path)
    return folder


def export_run(folder: str | Path) -> Path:
    """Repeats a run's export from its checkpoint (no retraining).

    Reads the recipe the run saved in its folder, rebuilds the recipe, which
    restores its trained weights from the run's checkpoint and its features
    from the cache, evaluates it on the split that `evaluation.split` names
    (for the model card) and exports again as the next version, in the
    recipe's `export.format`.
    """
    config = config_lib.load(Path(folder) / RECIPE_FILE)
    data, parts, recipe = _train(config)
    split_name, held_out = held_out_split(config, parts)
    _, _, metrics = _evaluate(recipe, split_name, held_out)
    path = _export(config, recipe, data, metrics, held_out)
    _print_serving(path)
    return path


def _print_serving(path: Path) -> None:
    base = Path(path).resolve().parent
    print(f"Model:       {Path(path).resolve()}")
    print("Serve it with TF Serving:")
    print(
        f"  docker run -p 8501:8501 -v {base}:/models/{base.name} "
        f"-e MODEL_NAME={base.name} tensorflow/serving"
    )
    print(f"or try it here: tftransfer predict {path} FILE...")
