"""`tftransfer.export()`: a trained model as a TF Serving model version."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from tftransfer import serving_ops
from tftransfer.errors import ExportError
from tftransfer.export import model_card, signatures, writer
from tftransfer.export.archive import DEFAULT_TOP_K, ServingArchive, SignatureArchive
from tftransfer.export.model_card import ModelCardInfo
from tftransfer.export.tflite import TFLITE_FILE, TFLiteOptions, export_tflite

DEFAULT_BASE_DIR = "saved_models"


def export(
    model_or_recipe: Any,
    base_path: str | os.PathLike | None = None,
    version: int | None = None,
    *,
    backbone: Any = None,
    class_names: Sequence[str] | None = None,
    prepare: Callable | None = None,
    top_k: int | None = None,
    task: str | None = None,
    name: str | None = None,
    overwrite: bool = False,
    card: ModelCardInfo | None = None,
    allow_ops: Iterable[str] = (),
    tflite: TFLiteOptions | None = None,
    explain: bool = False,
) -> Path:
    """Exports a trained model as the next version of a served model.

    Writes `<base_path>/<version>/`, a SavedModel in the layout that
    `tensorflow_model_server --model_base_path=<base_path>` watches:
    `saved_model.pb`, `variables/`, `assets/labels.txt` (the class, label or
    target names, one per line) and `model_card.json`. The version
    is written into a hidden temporary sibling and renamed into place, so
    the server never sees a partial version; earlier versions are left
    alone.

    The SavedModel is a `ServingArchive`'s signatures. By default these
    are `serving_default`, which takes what a client sends (images: the
    encoded bytes as `image_bytes`; text: raw strings as `text`) and
    prepares them inside the graph with the same function that prepared the
    training data, and `serving_prepared`, which takes already-prepared
    tensors. Both return the outputs of the model's task: classification,
    `probabilities`, `classes`, `top_k_scores` and `top_k_classes`;
    multi-label, `probabilities` and `labels` (the names at or above 0.5);
    regression, `predictions` and `target_names`. The model card records
    the same task. To add signatures of your own, make the archive,
    call its `add_signature()` and pass the archive here. Before anything is
    written, every op of every signature is checked against those the stock
    TF Serving build loads (core TensorFlow and its bundled TF Text
    release).

    Like `tf.saved_model.save` and `keras.Model.export`, export writes the
    weights the model has and does not judge whether they were trained:
    weights restored with `load_weights()`, a `tf.train.Checkpoint` or
    `keras.models.load_model(..., compile=False)`, or trained by another
    model or optimizer (a recipe's head), look no different from fresh ones,
    and an optimizer's step count says nothing about them. It refuses only
    what cannot be a trained model: a recipe that has not been fitted (its
    `model` is unset) and a Keras model that was never built (it has no
    weights at all). Check what a model predicts with
    `tftransfer.export.verify()` and the metrics in its model card.

    `tftransfer.export` is a callable module: `tftransfer.export(...)` calls
    this function, and `tftransfer.export.verify(...)` checks the result.

    Args:
        model_or_recipe: A fitted recipe (`FeatureExtraction`,
            `FineTuning`: `fit()` sets its `model`; its `backbone`,
            `class_names`, `metrics` and `settings` are used too), a built
            `keras.Model` from prepared inputs to one output per class,
            label or target `[batch, outputs]`, or a `ServingArchive` (made
            of either).
        base_path: The model's base path. Defaults to
            `saved_models/<name>` under the current directory.
        version: The version to write; `None` writes the next one (one more
            than the highest existing version, or 1).
        backbone, class_names, prepare, top_k, task: What the
            `ServingArchive` made of a recipe or a Keras model takes (see
            there: a Keras model needs `backbone` and `class_names`; `top_k`
            defaults to 5; `task` to the recipe's, else
            `"classification"`). With an archive, give them to the archive
            instead.
        name: The model's name; defaults to the base path's last folder, or
            to the Keras model's name.
        overwrite: Replace `version` if it exists.
        card: A `ModelCardInfo`: data source, metrics and training settings
            for the model card (each defaults to the recipe's). A task its
            settings or metrics record must be the one served.
        allow_ops: Op names to accept although stock TF Serving lacks them
            (for a server built with them).
        tflite: A `TFLiteOptions` to also write `model.tflite` (on prepared
            inputs: images, or a text model's token tensors; the
            preparation is not part of it) into the version folder, with
            the change of the task's main metric (classification: accuracy;
            multi-label: micro F1; regression: MAE) and the largest output
            difference on the options' validation data recorded in the
            model card.
        explain: Also serve the `explain` signature: raw inputs to the
            largest output and its integrated gradients (images: per
            pixel; text: per word), checked against TF Serving's ops like
            the others (see `docs/serving.md`). With an archive, pass it to
            `ServingArchive(..., explain=True)` instead.

    Returns:
        The path of the version folder written.

    Raises:
        ExportError: if a recipe is not fitted or a model not built, the
            names do not match its outputs, an archive comes with
            `backbone`, `class_names`, `prepare`, `top_k`, `task` or
            `explain`, `explain` meets a text model whose embedding lookup
            is hidden, `card`
            records another task than the one served, a signature
            uses an op stock TF Serving cannot load, the base path is a file, the
            version exists (without `overwrite`), or the folder cannot be
            written (no permission, no space left).

    Examples:

    A fitted recipe:

    >>> recipe = tftransfer.recipes.FeatureExtraction(backbone)
    >>> recipe.fit(train, validation)
    >>> path = tftransfer.export(recipe, "saved_models/flowers")
    >>> tftransfer.export.verify(path, [open("rose.jpg", "rb").read()],
    ...                          model=recipe)

    A Keras model whose trained weights are loaded from a file:

    >>> model = keras.Sequential([
    ...     keras.Input((224, 224, 3)),
    ...     backbone.build(),
    ...     keras.layers.Dense(5, activation="softmax"),
    ... ])
    >>> model.load_weights("flowers.weights.h5")
    >>> tftransfer.export(model, "saved_models/flowers", backbone=backbone,
    ...                   class_names=["daisy", "dandelion", "roses",
    ...                                "sunflowers", "tulips"])

    An extra signature, and a TFLite model beside the SavedModel:

    >>> archive = tftransfer.export.ServingArchive(recipe)
    >>> archive.add_signature(
    ...     "serving_uint8",
    ...     lambda images: archive.serve(tf.cast(images, "float32") / 255),
    ...     tf.TensorSpec([None, 224, 224, 3], tf.uint8, name="images"))
    >>> tftransfer.export(
    ...     archive, "saved_models/flowers",
    ...     tflite=tftransfer.export.TFLiteOptions(validation_batches))

    A Keras model that predicts prices:

    >>> tftransfer.export(model, "saved_models/prices", backbone=backbone,
    ...                   class_names=["price"], task="regression")
    """
    archive = _archive(
        model_or_recipe, backbone, class_names, prepare, top_k, task, explain
    )
    if card is not None and not isinstance(card, ModelCardInfo):
        raise ExportError(
            "Expected `card` to be a `tftransfer.export.ModelCardInfo`. "
            f"Received: card={card!r}."
        )
    if tflite is not None and not isinstance(tflite, TFLiteOptions):
        raise ExportError(
            "Expected `tflite` to be None or a `tftransfer.export.TFLiteOptions`"
            f". Received: tflite={tflite!r}; pass "
            "`tflite=TFLiteOptions(validation_data)`."
        )
    info = (card or ModelCardInfo()).or_else(archive.card_info)
    # The card must record the task the signatures serve, or none.
    signatures.resolve_task(archive.task, info)
    name = name or (Path(base_path).name if base_path else archive.model.name)
    base = Path(base_path) if base_path else Path(DEFAULT_BASE_DIR) / name

    def card_of(folder: Path, version: int, described: dict, ops: dict) -> dict:
        tflite_facts = None
        if tflite is not None:
            tflite_facts = export_tflite(archive, folder / TFLITE_FILE, tflite)
        return model_card.build_model_card(
            name=name,
            version=version,
            task=archive.task,
            modality=archive.modality,
            backbone=archive.backbone,
            class_names=archive.class_names,
            data_source=info.data_source,
            metrics=info.metrics,
            settings=info.settings,
            signatures=described,
            serving_ops=ops,
            tflite=tflite_facts,
        )

    return write_version(archive, base, version, overwrite, allow_ops, card_of)


def write_version(
    archive: SignatureArchive,
    base: Path,
    version: int | None,
    overwrite: bool,
    allow_ops: Iterable[str],
    card_of: Callable[[Path, int, dict, dict], dict],
) -> Path:
    """Checks the ops of `archive`'s signatures against stock TF Serving,
    then writes it as `base/<version>` (`None`: the next one) atomically,
    with the model card `card_of(folder, version, signatures, serving_ops)`
    returns (it may write more files into the folder first).

    Example:

    >>> write_version(archive, Path("saved_models/news"), None, False, (), card_of)
    PosixPath('saved_models/news/1')
    """
    version = writer.resolve_version(base, version, overwrite)
    functions = archive.signatures()
    ops = serving_ops.graph_ops(functions.values())
    serving_ops.check_serving_ops(ops, allow_ops)
    with writer.atomic_version_dir(base, version, overwrite) as tmp:
        archive.save(tmp)
        card = card_of(
            tmp,
            version,
            signatures.describe(functions),
            serving_ops.summary(ops, allow_ops),
        )
        model_card.write_model_card(card, tmp / model_card.CARD_FILE)
    return base / str(version)


def _archive(
    model_or_recipe, backbone, class_names, prepare, top_k, task, explain
) -> ServingArchive:
    """`model_or_recipe` if it is an archive, else an archive made of it."""
    if not isinstance(model_or_recipe, ServingArchive):
        return ServingArchive(
            model_or_recipe,
            backbone=backbone,
            class_names=class_names,
            prepare=prepare,
            top_k=DEFAULT_TOP_K if top_k is None else top_k,
            task=task,
            explain=explain,
        )
    given = {
        "backbone": backbone,
        "class_names": class_names,
        "prepare": prepare,
        "top_k": top_k,
        "task": task,
        "explain": explain or None,
    }
    given = sorted(key for key, value in given.items() if value is not None)
    if given:
        raise ExportError(
            f"Received a ServingArchive and {', '.join(given)}; the archive "
            "already has them. Pass them to `ServingArchive(...)` instead."
        )
    return model_or_recipe
