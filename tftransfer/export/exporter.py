"""`tftransfer.export()`: a trained classifier as a TF Serving model version."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from tftransfer.errors import ExportError
from tftransfer.export import model_card, serving_ops, signatures, tflite, writer

DEFAULT_BASE_DIR = "saved_models"
FORMATS = ("saved_model", "tflite")


def export(
    model_or_recipe: Any,
    base_path: str | os.PathLike | None = None,
    version: int | None = None,
    *,
    backbone: Any = None,
    class_names: Sequence[str] | None = None,
    prepare: Callable | None = None,
    name: str | None = None,
    overwrite: bool = False,
    top_k: int = 5,
    data_source: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    allow_ops: Iterable[str] = (),
    format: str = "saved_model",
    quantization: str = "dynamic_range",
    validation_data: tf.data.Dataset | None = None,
) -> Path:
    """Exports a trained classifier as the next version of a served model.

    Writes `<base_path>/<version>/`, a SavedModel in the layout that
    `tensorflow_model_server --model_base_path=<base_path>` watches:
    `saved_model.pb`, `variables/`, `assets/labels.txt` (class names, one per
    line, read by the graph) and `model_card.json`. The version
    is written into a hidden temporary sibling and renamed into place, so
    the server never sees a partial version; earlier versions are left
    alone.

    The `serving_default` signature takes what a client sends (images: the
    encoded bytes as `image_bytes`; text: raw strings as `text`) and
    prepares them inside the graph with the same function that prepared the
    training data. `serving_prepared` takes already-prepared tensors. Both
    return `probabilities`, `classes`, `top_k_scores` and `top_k_classes`.
    Before anything is written, every op of the serving graph is checked
    against those the stock TF Serving build loads (core TensorFlow and its
    bundled TF Text release).

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
            `class_names`, `metrics` and `settings` are used too), or a
            built `keras.Model` from prepared inputs to class probabilities
            `[batch, classes]`.
        base_path: The model's base path. Defaults to
            `saved_models/<name>` under the current directory.
        version: The version to write; `None` writes the next one (one more
            than the highest existing version, or 1).
        backbone: The `Backbone` the model was built on (with a
            `keras.Model`); gives the modality and the preparation.
        class_names: Class names in output order (with a `keras.Model`).
        prepare: The preparation function `raw input -> prepared input`
            (one example or a batch). Defaults to
            `tftransfer.data.prepare_fn(backbone)`.
        name: The model's name; defaults to the base path's last folder, or
            to the Keras model's name.
        overwrite: Replace `version` if it exists.
        top_k: How many classes `top_k_scores` / `top_k_classes` report.
        data_source: Where the training data came from, for the model card.
        metrics: Evaluation metrics for the model card (default: the
            recipe's).
        settings: Training settings for the model card (default: the
            recipe's).
        allow_ops: Op names to accept although stock TF Serving lacks them
            (for a server built with them).
        format: `"saved_model"`, or `"tflite"` to also write `model.tflite`
            (on prepared inputs: images, or a text model's token tensors;
            the preparation itself is not part of it) into the version
            folder.
        quantization: TFLite only: `"dynamic_range"`, `"float16"` or `"none"`.
        validation_data: TFLite only: batched `(prepared inputs, label)`
            pairs (as `tftransfer.data.make_pipeline()` gives them) on which
            the TFLite model's accuracy change is measured and recorded in
            the model card.

    Returns:
        The path of the version folder written.

    Raises:
        ExportError: if a recipe is not fitted or a model not built, the
            class names do not match its outputs, the serving graph uses an
            op stock TF Serving cannot load, the base path is a file, the
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
    """
    model, backbone, class_names, metrics, settings, data_source = _unpack(
        model_or_recipe, backbone, class_names, metrics, settings, data_source
    )
    _check_model(model, class_names)
    if format not in FORMATS:
        raise ExportError(
            f"Expected `format` in {FORMATS}. Received: format={format!r}."
        )
    if format == "tflite" and validation_data is None:
        raise ExportError(
            "`format='tflite'` needs `validation_data` (batched (prepared "
            "inputs, label) pairs) to measure the accuracy change; pass it."
        )
    modality = _modality(backbone)
    prepare = signatures.batched(signatures.preparation(backbone, prepare))
    name = name or (Path(base_path).name if base_path else model.name)
    base = Path(base_path) if base_path else Path(DEFAULT_BASE_DIR) / name
    version = writer.resolve_version(base, version, overwrite)

    with writer.atomic_version_dir(base, version, overwrite) as tmp:
        labels_file = tmp / "labels.txt"
        signatures.write_labels(class_names, labels_file)
        module = signatures.ServingModule(
            model, prepare, modality, labels_file, len(class_names), top_k
        )
        functions = module.signatures()
        ops = serving_ops.graph_ops(functions.values())
        serving_ops.check_serving_ops(ops, allow_ops)
        tf.saved_model.save(module, str(tmp), signatures=functions)
        labels_file.unlink()
        tflite_facts = None
        if format == "tflite":
            tflite_facts = tflite.export_tflite(
                model,
                module.prepared_input_signature(),
                tmp / tflite.TFLITE_FILE,
                quantization,
                validation_data,
            )
        card = model_card.build_model_card(
            name=name,
            version=version,
            modality=modality,
            backbone=backbone,
            class_names=class_names,
            data_source=data_source,
            metrics=metrics,
            settings=settings,
            signatures=signatures.describe(functions),
            serving_ops=serving_ops.summary(ops, allow_ops),
            tflite=tflite_facts,
        )
        model_card.write_model_card(card, tmp / model_card.CARD_FILE)
    return base / str(version)


def _unpack(model_or_recipe, backbone, class_names, metrics, settings, data_source):
    if isinstance(model_or_recipe, keras.Model):
        model = model_or_recipe
    elif hasattr(model_or_recipe, "model"):
        recipe = model_or_recipe
        model = recipe.model
        if not isinstance(model, keras.Model):
            raise ExportError(
                f"The {type(recipe).__name__} recipe is not fitted: its "
                f"`model` is {model!r}. Call `recipe.fit(train, validation)` "
                "first (it trains the model, or restores it from the run's "
                "checkpoint)."
            )
        backbone = backbone or getattr(recipe, "backbone", None)
        class_names = class_names or getattr(recipe, "class_names", None)
        metrics = metrics if metrics is not None else getattr(recipe, "metrics", None)
        settings = (
            settings if settings is not None else getattr(recipe, "settings", None)
        )
        data_source = data_source or (settings or {}).get("data_source")
    else:
        raise ExportError(
            "Expected a fitted recipe (with a `model`) or a `keras.Model`. "
            f"Received: {type(model_or_recipe).__name__}. Pass the recipe "
            "after `recipe.fit()`, or the Keras model with `backbone=` and "
            "`class_names=`."
        )
    if not class_names:
        raise ExportError(
            "Export needs the class names in output order: pass "
            "`class_names=[...]` (a recipe provides them after `fit()`)."
        )
    return model, backbone, list(class_names), metrics, settings, data_source


def _check_model(model: keras.Model, class_names: list) -> None:
    """Refuses a model that was never built, or whose outputs miss names."""
    if not model.built:
        raise ExportError(
            f"Model {model.name!r} is not built: it has no weights yet. Build "
            "it on its inputs and train it (or load trained weights) first."
        )
    classes = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
    if classes is not None and classes != len(class_names):
        raise ExportError(
            f"Model {model.name!r} outputs {classes} class probabilities but "
            f"{len(class_names)} class names were given: {class_names}. "
            "Pass one name per output, in output order."
        )


def _modality(backbone: Any) -> str:
    modality = getattr(backbone, "modality", None)
    if modality in signatures.RAW_INPUT_NAMES:
        return modality
    raise ExportError(
        "Export needs to know whether the model takes images or text: pass "
        "`backbone=` (a `tftransfer.Backbone`, or any object whose "
        f"`modality` is 'image' or 'text'). Received: backbone={backbone!r}."
    )
