"""`tftransfer run` and `tftransfer export`: a whole job from a recipe file.

The job: read and split the data, build the backbone, train with the chosen
recipe under the chosen strategy, evaluate on the held-out split, write the
run folder (report, metrics, plots, TensorBoard logs, the recipe as run, a
record of what was trained) and export. Each step prints what it does and
how long it took.

`check_run()` and `check_export()` check what can be checked before anything
runs (paths, writable folders, the run folder's record) without importing
TensorFlow; the command calls them first, then `check_recipe()` (the recipe
options against the recipe class, once TensorFlow has started, before any
data or backbone is loaded).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tftransfer import config as config_lib
from tftransfer import vocabulary
from tftransfer.cli import ranking, sources
from tftransfer.config import RunConfig, short_repr
from tftransfer.errors import ConfigError, ExportError

RECIPE_FILE = "recipe.yaml"
# What the last finished training used: settings, data digest, checkpoints.
TRAINED_FILE = "trained.json"
_RECORD_KEYS = {"settings", "data", "checkpoints"}
# The recipe file's sections that change what is trained.
_TRAINING_SECTIONS = ("backbone.", "data.", "recipe.")
# Free space a run folder or an export needs at the least.
MIN_FREE_BYTES = 64 * 2**20


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


def export_base(config: RunConfig) -> Path:
    """The folder of the exported versions: `export.base_path`, or
    `saved_models/<name>`."""
    return Path(config.export.base_path or Path("saved_models") / config.name)


def check_writable(folder: Path, key: str) -> None:
    """Checks that `folder` is, or can be created as, a folder this process
    can write to, on a disk with at least `MIN_FREE_BYTES` free. Creates
    nothing (the test file has no name).

    Args:
        folder: The folder to write to.
        key: The recipe setting that chose it, for the message.

    Raises:
        ConfigError: naming `key`, the folder and why it cannot be written.
    """
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    fix = f"Set {key} to a folder you can write to."
    if not existing.is_dir():
        raise ConfigError(
            f"{key}: cannot create {folder}: {existing} is a file, not a folder. {fix}"
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ConfigError(
            f"{key}: cannot write to {existing} ({error.strerror or error}), "
            f"where {folder} goes. {fix}"
        ) from None
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(
            f"{key}: the disk holding {existing}, where {folder} goes, has "
            f"{free / 2**20:.1f} MiB free; at least {MIN_FREE_BYTES // 2**20} MiB "
            "are needed (checkpoints, logs, report, export). Free some space, "
            f"or set {key} to a folder on another disk."
        )


def check_run(config: RunConfig) -> None:
    """Checks, before anything runs, that the job can read its data and
    write its outputs: `data.path` exists and the run folder, the export
    folder (where the run exports) and `cache_dir` (where set) can be
    written. Imports no TensorFlow and creates nothing.

    Raises:
        ConfigError: naming the setting and what is wrong with it.
    """
    sources.check_path(config.data)
    check_writable(run_dir(config), "runs_dir")
    if config.backbone.handle == ranking.BEST:
        if config.backbone.options or config.backbone.seq_length is not None:
            raise ConfigError(
                f"backbone.handle: {ranking.BEST} trains the top candidate of "
                "rank.json with that candidate's own options, so the file's "
                "backbone.options and backbone.seq_length would be ignored. "
                "Remove them, or set them on the candidates under rank.candidates."
            )
        ranking.best_candidate(config)
    if config.export.enabled:
        check_writable(export_base(config), "export.base_path")
    if config.cache_dir is not None:
        check_writable(Path(config.cache_dir), "cache_dir")


def build_backbone(config: RunConfig):
    """The `Backbone` the recipe file's `backbone:` section names."""
    import tftransfer

    if config.backbone.handle == ranking.BEST:
        return ranking.build_best(config)
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


def _recipe_classes() -> dict[str, type]:
    """`recipe.kind` -> the recipe class (importing them starts TensorFlow)."""
    from tftransfer.recipes import FeatureExtraction, FineTuning

    return {cls.kind: cls for cls in (FeatureExtraction, FineTuning)}


def check_recipe(config: RunConfig, source: str = "<recipe>") -> None:
    """Checks `recipe.options` against the keyword arguments of the recipe
    class (`tftransfer.config.check_recipe_options`), before any data or
    backbone is loaded. Imports the recipes, so TensorFlow.

    Args:
        config: The validated settings.
        source: The recipe file, for the message.

    Raises:
        ConfigError: naming the option and the closest argument.
    """
    arguments = {kind: cls.argument_names() for kind, cls in _recipe_classes().items()}
    config_lib.check_recipe_options(config, arguments, source)


def build_recipe(config: RunConfig, backbone, folder: Path, callbacks: Sequence = ()):
    """The `FeatureExtraction` or `FineTuning` recipe the file describes,
    training into the run folder `folder` with Keras `callbacks`."""
    recipe_class = _recipe_classes()[config.recipe.kind]
    arguments = config_lib.recipe_arguments(config)
    if config.backbone.handle == ranking.BEST:
        arguments = {**ranking.best_recipe_arguments(config), **arguments}
    return recipe_class(
        backbone,
        **arguments,
        run_dir=folder,
        verbose=2,
        callbacks=list(callbacks),
    )


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
    """Returns `(labels, outputs)` of the trained recipe on `data`, in the
    order of `data` (feature extraction reuses cached features); outputs
    are class or label probabilities, or predicted values."""
    labels = np.array([label for _, label in data.dataset.as_numpy_iterator()])
    return labels, recipe.predict(data)


def _train(config: RunConfig, folder: Path, trained: dict | None = None):
    """Steps shared by `run` and `export`: data, backbone, recipe, fit.

    Without `trained`, trains (resuming from the checkpoints in `folder`)
    and records what it trained in `folder`'s `TRAINED_FILE`. With the
    record `trained`, only restores: the data must be the data it names, and
    the recipe must resume every phase from its checkpoints; the first
    training step would raise `ExportError` instead.
    """
    with step(f"Reading {config.data.format} data from {config.data.path}"):
        data, parts = read_splits(config)
        sizes = ", ".join(
            f"{name} {part.num_examples}"
            for name, part in zip(parts._fields, parts, strict=True)
            if part
        )
        outputs = {
            "classification": "classes",
            "multi_label": "labels",
            "regression": "targets",
        }[data.task]
        print(
            f"    {data.num_examples} examples, {data.num_classes} {outputs} "
            f"({sizes}; task {data.task})"
        )
        for count, what in (
            (len(data.skipped), "skipped"),
            (len(data.fallbacks), "read by a fallback"),
        ):
            if count:
                print(f"    {count} inputs {what} (listed in the report)")
        digest = data_digest(data)
    if trained is not None and digest != trained["data"]:
        raise ExportError(
            f"The data at data.path={short_repr(config.data.path)} changed since "
            f"the run in {folder} trained on it, so its checkpoints do not hold "
            "a model of this data and exporting would retrain. Nothing was "
            "exported. Restore the data, or pass --retrain to train on the data "
            "as it is now and export that."
        )
    with step(f"Backbone {config.backbone.handle}"):
        backbone = build_backbone(config)
    callbacks = [] if trained is None else [_refuse_training(folder)]
    recipe = build_recipe(config, backbone, folder, callbacks)
    print(f"    strategy: {type(recipe.strategy).__name__}")
    kind = config.recipe.kind.replace("_", " ")
    message = f"Training: {kind}" if trained is None else f"Restoring: {kind}"
    with step(message):
        recipe.fit(parts.train, parts.validation)
    if trained is None:
        _write_record(folder, config, digest)
    return data, parts, recipe


def data_digest(data) -> str:
    """A digest of a `LabeledData`'s examples, in order (and, for image
    files, their sizes and modification times)."""
    from tftransfer.recipes.feature_cache import DataDigest, fingerprint, paths_digest

    parts = [DataDigest.of(data.dataset.batch(1024)), data.class_names]
    if data.input_format == "file_path":
        paths = data.dataset.map(lambda path, label: path).batch(4096)
        parts.append(
            paths_digest(p.decode() for b in paths.as_numpy_iterator() for p in b)
        )
    return fingerprint(*parts)


def _checkpoint_digests(folder: Path) -> dict[str, str]:
    """`{path: content digest}` of every file under `folder/checkpoints`."""
    root = folder / "checkpoints"
    digests = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            while block := f.read(2**20):
                digest.update(block)
        digests[path.relative_to(root).as_posix()] = digest.hexdigest()
    return digests


def _settings(config: RunConfig) -> dict:
    """The settings as JSON reads them back (lists, not tuples); with
    `backbone: best`, the candidate of `rank.json` it stood for too."""
    settings = json.loads(json.dumps(config.to_dict()))
    if config.backbone.handle == ranking.BEST:
        settings["backbone"]["best"] = ranking.best_candidate(config)
    return settings


def _write_record(folder: Path, config: RunConfig, digest: str) -> None:
    """Writes `TRAINED_FILE`: the settings, data digest and checkpoints of
    the training just finished (through a temporary sibling)."""
    record = {
        "settings": _settings(config),
        "data": digest,
        "checkpoints": _checkpoint_digests(folder),
    }
    temporary = folder / f".{TRAINED_FILE}.tmp"
    temporary.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(temporary, folder / TRAINED_FILE)


def _refuse_training(folder: Path):
    """A Keras callback that raises `ExportError` before the first step."""
    import keras

    class RefuseTraining(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            raise ExportError(
                f"Exporting {folder} would retrain: the recipe found no "
                "finished checkpoint for its settings in "
                f"{folder / 'checkpoints'} (tftransfer, the backbone or its "
                "weights changed since the run). Nothing was trained or "
                "exported. Pass --retrain to train again and export."
            )

    return RefuseTraining()


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
    """Returns `(labels, outputs, metrics)` on the held-out split (the
    task's metrics); `metrics["split"]` names it."""
    from tftransfer.recipes.tasks import task_metrics

    labels, outputs = predictions(recipe, held_out)
    metrics = task_metrics(recipe.task, labels, outputs, recipe.class_names)
    return labels, outputs, {**metrics, "split": split_name, **recipe.choices}


def _export(config: RunConfig, recipe, data, metrics, held_out) -> Path:
    """Exports the trained recipe; the held-out split gives the examples that
    `verify` serves and, for TFLite, the batches its accuracy is measured on."""
    import tftransfer
    from tftransfer.data import make_pipeline

    base = str(export_base(config))
    tflite = None
    if config.export.tflite:
        tflite = tftransfer.export.TFLiteOptions(
            make_pipeline(held_out, recipe.backbone, config.data.batch_size)
        )
    with step(f"Exporting to {base}"):
        path = tftransfer.export(
            recipe,
            base,
            card=tftransfer.export.ModelCardInfo(
                data_source=data.source,
                metrics=metrics,
                settings={**recipe.settings, "recipe_file": config.to_dict()},
            ),
            tflite=tflite,
            explain=config.export.explain,
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

    Call `check_run(config)` first (the `tftransfer run` command does,
    before TensorFlow starts), and `check_recipe(config)`.

    Example:

    >>> run(tftransfer.config.load("recipes/default.yaml"))
    PosixPath('runs/bbc-news-topics')
    """
    from tftransfer import evaluation
    from tftransfer.explain import explain
    from tftransfer.recipes.tasks import get_task

    folder = run_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RECIPE_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    started = time.perf_counter()
    data, parts, recipe = _train(config, folder)
    split_name, held_out = held_out_split(config, parts)
    if split_name != config.evaluation.split:
        print("    (the data has no test part: data.test is null)")
    attributions = (
        " (with the attributions of its worst and typical predictions)"
        if config.evaluation.explain
        else ""
    )
    with step(
        f"Evaluating on the {split_name} split and writing the report{attributions}"
    ):
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
            skipped=data.skipped,
            fallbacks=data.fallbacks,
            explainer=(
                functools.partial(explain, recipe)
                if config.evaluation.explain
                else None
            ),
        )
    print(f"\n{split_name} {get_task(recipe.task).headline(metrics)}")
    export_path = None
    if config.export.enabled:
        export_path = _export(config, recipe, data, metrics, held_out)
    print(f"\nFinished in {time.perf_counter() - started:.0f} s.")
    print(f"Report:      {report.resolve()}")
    print(f"TensorBoard: tensorboard --logdir {(folder / 'logs').resolve()}")
    if export_path is not None:
        _print_serving(export_path)
    return folder


def check_export(
    folder: str | Path, *, retrain: bool = False, with_others: bool = False
):
    """Checks, before anything runs, that `tftransfer export` can export
    the model the run in `folder` trained without training again.

    The folder must hold the recipe the run saved and, unless `retrain`,
    the record of its finished training (`TRAINED_FILE`), with the same
    settings and every checkpoint file unchanged. `data.path` must exist
    and the export folder must be writable. Imports no TensorFlow.

    Args:
        folder: The run folder (`runs/<name>`).
        retrain: Whether training again is allowed (`--retrain`).
        with_others: Whether it is exported with other runs (`--tasks`):
            then its own export folder is not checked, and the advice is
            to finish its training first.

    Returns:
        `(config, record)`: the recipe as run, and the training record
        (`None` with `retrain`).

    Raises:
        ConfigError: if `folder` is not a run folder, its recipe is invalid,
            `data.path` does not exist or a folder cannot be written.
        ExportError: if the model cannot be exported without training:
            the run did not finish (or an older tftransfer ran it), the
            recipe was edited, or checkpoints are missing or changed.
    """
    folder = Path(folder)
    if not (folder / RECIPE_FILE).is_file():
        raise ConfigError(
            f"{folder} is not a run folder: it has no {RECIPE_FILE}. Pass a "
            "folder that `tftransfer run` wrote, such as runs/<name>."
        )
    config = config_lib.load(folder / RECIPE_FILE)
    sources.check_path(config.data)
    check_writable(folder, "RUN_DIR")
    if not with_others:
        check_writable(export_base(config), "export.base_path")
    if retrain:
        return config, None
    fix = (
        f"Nothing was exported. Run `tftransfer export {folder} --retrain` to "
        "train what its checkpoints do not hold, then export the tasks."
        if with_others
        else "Nothing was exported. Pass --retrain to train (resuming from the "
        "checkpoints that still fit) and export."
    )
    try:
        record = json.loads((folder / TRAINED_FILE).read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or set(record) != _RECORD_KEYS:
        raise ExportError(
            f"{folder} has no record of a finished training ({TRAINED_FILE}): "
            f"its run did not finish, or an older tftransfer ran it. {fix}"
        )
    settings = _settings(config)
    edited = [
        key
        for key in [*config_lib.known_keys(), "backbone.best"]
        if key.startswith(_TRAINING_SECTIONS)
        and _lookup(settings, key) != _lookup(record["settings"], key)
    ]
    if edited:
        raise ExportError(
            f"{folder / RECIPE_FILE} is not the recipe the model in {folder} was "
            f"trained with: {', '.join(edited[:5])} changed (a later run, or an "
            f"edit, that did not finish training). {fix}"
        )
    current = _checkpoint_digests(folder)
    changed = [
        name
        for name, digest in record["checkpoints"].items()
        if current.get(name) != digest
    ]
    if changed:
        raise ExportError(
            f"Checkpoints of the trained model in {folder / 'checkpoints'} are "
            f"missing or changed since its training: {', '.join(changed[:3])}"
            f"{' ...' if len(changed) > 3 else ''}. {fix}"
        )
    return config, record


def _lookup(settings: dict, key: str) -> Any:
    """The value of dotted `key` in nested `settings` (`None` if absent)."""
    for part in key.split("."):
        settings = settings.get(part) if isinstance(settings, dict) else None
    return settings


def export_run(config: RunConfig, folder: str | Path, record: dict | None) -> Path:
    """Repeats a run's export from its checkpoints; returns the new version.

    Rebuilds the recipe, which restores its trained weights from the run's
    checkpoints and its features from the cache, evaluates it on the split
    that `evaluation.split` names (for the model card) and exports again as
    the next version, with `model.tflite` where `export.tflite` is set.

    Call `check_export()` first: it returns `config` and `record`; then
    `check_recipe(config)`.

    Args:
        config: The recipe as run.
        folder: The run folder.
        record: The record of the run's training: then nothing is trained
            (`ExportError` if the data changed, or if a phase finds no
            finished checkpoint). `None` (`--retrain`) trains what the
            checkpoints do not hold, then records that training.
    """
    data, parts, recipe = _train(config, Path(folder), record)
    split_name, held_out = held_out_split(config, parts)
    _, _, metrics = _evaluate(recipe, split_name, held_out)
    path = _export(config, recipe, data, metrics, held_out)
    _print_serving(path)
    return path


def check_export_tasks(
    folders: Sequence[str | Path], base_path: str | None = None
) -> list[tuple[RunConfig, dict]]:
    """Checks, before anything runs, that `tftransfer export --tasks` can
    export the models of the runs in `folders` together: each as
    `check_export()` checks one, their names (the folders' names, which
    name the tasks) valid and distinct, their backbones the same, and the
    export folder writable. Imports no TensorFlow.

    Returns:
        `(config, record)` of each run, in order.

    Raises:
        ConfigError: as `check_export()`, or for a name that cannot name a
            task, two runs of one name, two backbones, or an export folder
            that cannot be written.
        ExportError: as `check_export()`.
    """
    names = [task_name(folder) for folder in folders]
    repeated = sorted(
        {n for n in names if [m.lower() for m in names].count(n.lower()) > 1}
    )
    if repeated:
        raise ConfigError(
            f"Runs named {repeated} are given more than once (names are "
            "compared ignoring case): each task is named after its run "
            "folder, so the names must differ. Copy a run folder under "
            "another name."
        )
    checked = [check_export(folder, with_others=True) for folder in folders]
    first = checked[0][0].backbone
    for name, (config, _) in zip(names, checked, strict=True):
        if config.backbone != first:
            raise ConfigError(
                f"Runs {names[0]!r} and {name!r} were trained on different "
                f"backbones ({first.handle!r} and {config.backbone.handle!r}, or "
                "other backbone settings): a multi-task export serves tasks of "
                "one backbone. Export them separately."
            )
    base = Path(base_path) if base_path else Path("saved_models") / "+".join(names)
    check_writable(base, "--base-path")
    return checked


def task_name(folder: str | Path) -> str:
    """The task name of a run folder: its name, checked.

    Raises:
        ConfigError: if the name cannot name a signature.
    """
    name = Path(folder).resolve().name
    if not re.fullmatch(vocabulary.TASK_NAME, name):
        raise ConfigError(
            f"The run folder name {name!r} cannot name a task (its signature "
            "and outputs): a task name is a letter, then letters, digits, "
            "'_' or '-'. Copy the run folder under such a name."
        )
    return name


def export_tasks(
    folders: Sequence[str | Path],
    checked: Sequence[tuple[RunConfig, dict]],
    base_path: str | None = None,
) -> Path:
    """Restores the trained recipe of each run (as `restore()` does),
    evaluates it on its held-out split for the model card, and exports them
    all as one multi-task SavedModel (`tftransfer.export.export_tasks`),
    each task named after its run folder; then checks it in a fresh
    process on a few held-out examples of the first run.

    Call `check_export_tasks()` first: it returns `checked`.

    Returns:
        The version folder written.
    """
    import tftransfer

    recipes, examples = {}, None
    for folder, (config, record) in zip(folders, checked, strict=True):
        check_recipe(config, os.path.join(folder, RECIPE_FILE))
        _, parts, recipe = _train(config, Path(folder), record)
        _, held_out = held_out_split(config, parts)
        recipe.evaluate(held_out)
        recipes[task_name(folder)] = recipe
        examples = examples or _serving_examples(held_out)
    with step(f"Exporting {len(recipes)} tasks on one backbone"):
        path = tftransfer.export.export_tasks(recipes, base_path)
        tftransfer.export.verify_tasks(path, examples, recipes, print_signatures=False)
    print(f"Model:       {Path(path).resolve()}")
    print(f"Signatures:  serving_default (every task), {', '.join(recipes)}")
    return path


def restore(folder: str | Path):
    """The trained recipe of the run in `folder`, restored from its
    checkpoints without training (for `tftransfer explain`).

    Checks the folder as `check_export()` does, then reads the data and
    rebuilds the recipe, which restores every phase from the checkpoints.

    Raises:
        ConfigError: if `folder` is not a run folder or its recipe is invalid.
        ExportError: if the run did not finish, or its recipe, data or
            checkpoints changed since (restoring would retrain).
    """
    config, record = check_export(folder)
    check_recipe(config, os.path.join(folder, RECIPE_FILE))
    _, _, recipe = _train(config, Path(folder), record)
    return recipe


def _print_serving(path: Path) -> None:
    base = Path(path).resolve().parent
    print(f"Model:       {Path(path).resolve()}")
    print("Serve it with TF Serving:")
    print(
        f"  docker run -p 8501:8501 -v {base}:/models/{base.name} "
        f"-e MODEL_NAME={base.name} tensorflow/serving"
    )
    print(f"or try it here: tftransfer predict {path} FILE...")
