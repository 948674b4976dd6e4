"""`ServingArchive`: a trained model and the serving signatures to export.

Built on `tf.Module` rather than `keras.Model.export`, whose signatures fall
short for dict inputs and several named outputs (keras-team/keras#20835,
#21258). Like Keras's `ExportArchive.add_endpoint()`, every signature is
added through one public method, `add_signature()`; the default ones are no
different. The saved module holds only what the signatures capture (the
model's weights, the preparation's tables) and a label table read from the
`labels.txt` asset, so the SavedModel needs neither tftransfer nor Keras.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from tftransfer.errors import ExportError
from tftransfer.export import signatures
from tftransfer.export.model_card import ModelCardInfo

DEFAULT_TOP_K = 5


class SignatureArchive:
    """Serving signatures and what they capture, to save as one SavedModel.

    The base of `ServingArchive` (one model) and
    `tftransfer.export.MultiTaskArchive` (several tasks on one backbone):
    signatures are added with `add_signature()`, and the saved module holds
    only what they capture and the label tables made with `add_labels()`.
    """

    def __init__(self):
        # Asset files must exist until `save()` copies them into `assets/`.
        self._assets_dir = tempfile.TemporaryDirectory(prefix="tftransfer-assets-")
        self._module = _Module()
        self._functions: dict[str, Any] = {}

    def add_labels(
        self, class_names: Sequence[str], file_name: str = "labels.txt"
    ) -> tf.lookup.StaticHashTable:
        """A new table from output index (int64) to name, read from the
        asset `assets/<file_name>` that holds `class_names`, one per line.

        Example:

        >>> table = archive.add_labels(["sport", "tech"], "topic_labels.txt")
        """
        labels_file = Path(self._assets_dir.name) / file_name
        signatures.write_labels(class_names, labels_file)
        return self._module.add_labels(labels_file)

    def add_signature(self, name: str, fn: Callable, input_spec: Any) -> None:
        """Adds a serving signature.

        `fn` is traced once, now, on `input_spec`; the variables and tables
        it captures (the model's weights, a tokenizer's vocabulary) are
        saved with the archive.

        Args:
            name: The signature's name (the `signature_name` of a request).
            fn: Function of one argument, shaped as `input_spec`, returning
                a dict of named output tensors.
            input_spec: A `tf.TensorSpec` (its `name` is the signature's
                input name; without one, `fn`'s argument name) or a dict of
                them (each input named by its key).

        Raises:
            ExportError: if `name` is taken or not a non-empty string,
                `input_spec` is not a `tf.TensorSpec` or a dict of them, or
                `fn` does not return a dict of tensors.

        Example:

        >>> archive.add_signature(
        ...     "probabilities_only",
        ...     lambda text: {"scores": archive.serve(
        ...         archive.prepare(text))["probabilities"]},
        ...     tf.TensorSpec([None], tf.string, name="text"))
        """
        if not isinstance(name, str) or not name:
            raise ExportError(
                "Expected the signature name to be a non-empty string. "
                f"Received: name={name!r}."
            )
        if name in self._functions:
            raise ExportError(
                f"The archive already has a signature named {name!r} (it has "
                f"{sorted(self._functions)}). Choose another name."
            )
        concrete = tf.function(
            fn, input_signature=[_named(name, input_spec)]
        ).get_concrete_function()
        outputs = concrete.structured_outputs
        if not isinstance(outputs, Mapping) or not all(
            isinstance(key, str) and isinstance(value, tf.Tensor)
            for key, value in outputs.items()
        ):
            raise ExportError(
                f"Expected signature {name!r} to return a dict from output "
                f"name to tensor. Received: {outputs!r}. Return, for example, "
                '`{"probabilities": ...}`.'
            )
        self._functions[name] = concrete
        self._module.captured_resources = _owners_of_captures(self._functions.values())

    def signatures(self) -> dict:
        """Returns the concrete functions to save, keyed by signature name."""
        return dict(self._functions)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the SavedModel with every signature into the folder `path`.

        Only the SavedModel: `tftransfer.export()` checks the ops first and
        writes a TF Serving version with its model card.
        """
        tf.saved_model.save(self._module, str(path), signatures=self.signatures())


class ServingArchive(SignatureArchive):
    """A trained model and the serving signatures to export with it.

    Made with the two default signatures (`serving_default` on raw inputs,
    `serving_prepared` on prepared inputs; see `docs/serving.md`), both added
    through `add_signature()` and returning `serve()`'s outputs for the
    model's task. Add your own the same way, then write the
    archive with `tftransfer.export(archive, base_path)`, which checks every
    signature's ops against stock TF Serving and records each in the model
    card.

    Args:
        model_or_recipe: A fitted recipe (`FeatureExtraction`,
            `FineTuning`: `fit()` sets its `model`; its `backbone`,
            `class_names`, `metrics` and `settings` are used too), or a
            built `keras.Model` from prepared inputs to one output per
            class, label or target `[batch, outputs]`.
        backbone: The `Backbone` the model was built on (with a
            `keras.Model`); gives the modality and the preparation.
        class_names: The class, label or target names in output order
            (with a `keras.Model`).
        prepare: The preparation function `raw input -> prepared input`
            (one example or a batch). Defaults to
            `tftransfer.data.prepare_fn(backbone)`.
        top_k: Classification: how many classes `top_k_scores` /
            `top_k_classes` report (at most the number of classes).
        task: What the outputs are, one of `tftransfer.vocabulary.TASKS`:
            `"classification"` (class probabilities), `"multi_label"`
            (one probability per label) or `"regression"` (predicted
            values). Defaults to the recipe's task, else
            `"classification"`.
        explain: Also add the `explain` signature (raw inputs to the
            largest output and its integrated gradients; see
            `tftransfer.export.explain_signature`). Off by default, which
            leaves the archive as it was without it.

    Attributes:
        model: The Keras model.
        backbone: The backbone (`None` if not given).
        class_names: The class, label or target names, in output order.
        task: The task whose outputs the default signatures return.
        modality: `"image"` or `"text"`.
        prepare: The training preparation, from a `[batch]` string tensor of
            raw inputs to the prepared batch.
        prepared_input_spec: The `tf.TensorSpec` (or dict of them) of the
            prepared inputs, which `serving_prepared` takes.
        top_k: How many classes `top_k_*` report (classification).
        card_info: The recipe's `ModelCardInfo` (empty for a Keras model).

    Raises:
        ExportError: if a recipe is not fitted or a model not built, the
            names are missing, malformed or do not match the model's
            outputs, the backbone's modality is unknown, or `task` is
            unknown or not the recipe's.

    Example:

    >>> archive = tftransfer.export.ServingArchive(recipe)
    >>> archive.add_signature(
    ...     "serving_uint8",
    ...     lambda images: archive.serve(tf.cast(images, "float32") / 255),
    ...     tf.TensorSpec([None, 224, 224, 3], tf.uint8, name="images"))
    >>> tftransfer.export(archive, "saved_models/flowers")
    """

    def __init__(
        self,
        model_or_recipe: Any,
        *,
        backbone: Any = None,
        class_names: Sequence[str] | None = None,
        prepare: Callable | None = None,
        top_k: int = DEFAULT_TOP_K,
        task: str | None = None,
        explain: bool = False,
    ):
        super().__init__()
        model, backbone, class_names, card_info = _unpack(
            model_or_recipe, backbone, class_names
        )
        _check_model(model, class_names)
        self.model = model
        self.backbone = backbone
        self.class_names = class_names
        self.modality = _modality(backbone)
        self.card_info = card_info
        self.task = signatures.resolve_task(task, card_info)
        self.prepare = signatures.batched(signatures.preparation(backbone, prepare))
        self.top_k = max(1, min(int(top_k), len(class_names)))
        raw_spec = tf.TensorSpec(
            [None], tf.string, name=signatures.RAW_INPUT_NAMES[self.modality]
        )
        self.prepared_input_spec = signatures.prepared_spec(
            self.prepare, raw_spec, self.modality
        )
        self._labels = self.add_labels(class_names)
        signatures.add_default_signatures(self)
        if explain:
            from tftransfer.export.explain_signature import add_explain_signature

            add_explain_signature(self)

    @property
    def labels_table(self) -> tf.lookup.StaticHashTable:
        """The table from output index (int64) to class, label or target
        name that signatures look names up in (read from `labels.txt`)."""
        return self._labels

    def serve(self, prepared) -> dict:
        """Runs the model on prepared inputs and names its outputs.

        Call it inside a signature function to return what the default
        signatures return.

        Args:
            prepared: A prepared batch, as `prepared_input_spec` describes.

        Returns:
            By `task`: classification, `probabilities` float32
            `[batch, classes]`, `classes` string `[batch]` (top-1 label),
            `top_k_scores` float32 `[batch, k]` and `top_k_classes` string
            `[batch, k]`; multi-label, `probabilities` float32
            `[batch, labels]` and `labels` string `[batch, labels]` (the
            names at or above 0.5, most probable first, then `""`);
            regression, `predictions` float32 `[batch, targets]` and
            `target_names` string `[batch, targets]`.
        """
        outputs = self.model(prepared, training=False)
        return signatures.task_outputs(
            self.task, outputs, self._labels, self.class_names, self.top_k
        )


class _Module(tf.Module):
    """What the SavedModel holds: the label tables and what the signatures
    capture. A Keras model is deliberately not an attribute:
    tracking it would save its optimizer's state, and the weights of a hub
    layer's SavedModel under two owners."""

    def __init__(self):
        super().__init__(name="tftransfer_serving")
        self.label_assets = []
        self.label_tables = []

    def add_labels(self, labels_file: Path) -> tf.lookup.StaticHashTable:
        asset = tf.saved_model.Asset(str(labels_file))
        table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                asset,
                key_dtype=tf.int64,
                key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
                value_dtype=tf.string,
                value_index=tf.lookup.TextFileIndex.WHOLE_LINE,
            ),
            default_value="",
        )
        self.label_assets.append(asset)
        self.label_tables.append(table)
        return table


def _named(signature: str, input_spec: Any):
    """`input_spec` checked; a dict's specs named by their keys."""
    if isinstance(input_spec, tf.TensorSpec):
        return input_spec
    if (
        isinstance(input_spec, Mapping)
        and input_spec
        and all(
            isinstance(key, str) and isinstance(spec, tf.TensorSpec)
            for key, spec in input_spec.items()
        )
    ):
        return {
            key: tf.TensorSpec(spec.shape, spec.dtype, name=key)
            for key, spec in input_spec.items()
        }
    raise ExportError(
        f"Expected the input_spec of signature {signature!r} to be a "
        "`tf.TensorSpec` or a non-empty dict from input name to "
        f"`tf.TensorSpec`. Received: input_spec={input_spec!r}."
    )


def _owners_of_captures(functions) -> list:
    """The variables and resources (lookup tables, ...) that functions capture.

    These are exactly what the serving graph needs saved: the model's weights
    (the `tf.Variable` behind each Keras variable) and what the preparation
    uses, such as a vocabulary table held in a tokenizer's closure, which no
    tracked object owns (`tf.saved_model.save` refuses untracked captures).
    Each captured handle records its owner in `_parent_trackable` (the
    attribute TensorFlow itself reads to explain that error).

    Args:
        functions: The concrete functions to be saved.

    Returns:
        The owners, each once, in order of first capture.
    """
    owners = []
    for function in functions:
        for capture, _ in function.graph.captures:
            parent = getattr(capture, "_parent_trackable", None)
            owner = parent() if parent is not None else None
            if owner is not None and all(owner is not known for known in owners):
                owners.append(owner)
    return owners


def _unpack(model_or_recipe, backbone, class_names):
    """The model, backbone, output names and model card facts of a recipe or
    a Keras model."""
    if isinstance(model_or_recipe, keras.Model):
        model = model_or_recipe
        card_info = ModelCardInfo()
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
        card_info = ModelCardInfo(
            metrics=getattr(recipe, "metrics", None),
            settings=getattr(recipe, "settings", None),
        )
    else:
        raise ExportError(
            "Expected a fitted recipe (with a `model`) or a `keras.Model`. "
            f"Received: {type(model_or_recipe).__name__}. Pass the recipe "
            "after `recipe.fit()`, or the Keras model with `backbone=` and "
            "`class_names=`."
        )
    if not class_names:
        raise ExportError(
            "Export needs the names of the model's outputs (classes, labels "
            "or targets) in output order: pass `class_names=[...]` (a recipe "
            "provides them after `fit()`)."
        )
    return model, backbone, list(class_names), card_info


def _check_model(model: keras.Model, class_names: list) -> None:
    """Refuses a model that was never built, or whose outputs miss names."""
    if not model.built:
        raise ExportError(
            f"Model {model.name!r} is not built: it has no weights yet. Build "
            "it on its inputs and train it (or load trained weights) first."
        )
    width = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
    if width is not None and width != len(class_names):
        raise ExportError(
            f"Model {model.name!r} has {width} outputs per example but "
            f"{len(class_names)} class names were given: {class_names}. "
            "Pass one name per output (class, label or target), in output order."
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
