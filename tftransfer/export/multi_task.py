"""`export_tasks()`: several tasks fine-tuned from one backbone, one SavedModel.

The source backbone's weights are saved once. A task that did not change
the backbone (feature extraction, `method="head"`, or fine-tuning that kept
the frozen model) runs the shared weights as they are; a task that changed
some (LoRA, BitFit, full fine-tuning) runs the same layer with its changes
applied on the fly through Keras's `stateless_call`: the LoRA factors and
changed weights are all it adds. The default signature returns every
task's outputs, running the backbone once for all the tasks that share the
frozen trunk (and pooling), and once more for each task that changed it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from tftransfer import vocabulary
from tftransfer.errors import ArgumentError, ExportError
from tftransfer.export import model_card, signatures
from tftransfer.export.archive import DEFAULT_TOP_K, SignatureArchive
from tftransfer.export.exporter import DEFAULT_BASE_DIR, write_version
from tftransfer.hub.layer import HubLayer
from tftransfer.recipes import heads
from tftransfer.recipes.backbone_changes import (
    WeightChange,
    backbone_changes,
    source_backbone,
)


@dataclasses.dataclass
class _Task:
    """What a task's signatures need: its head, its table of names and the
    changes it made to the shared backbone."""

    name: str
    recipe: Any
    labels: tf.lookup.StaticHashTable
    # How many backbone weights the task changed (0: it shares the trunk).
    changed_weights: int
    # The changes, in variables, applied to the shared layer's weights...
    changes: tuple[WeightChange, ...] = ()
    # ...or the task's own model, where they cannot be (a TF Hub
    # SavedModel's functions read their own variables).
    own_model: keras.Model | None = None

    @property
    def pooling(self):
        return self.recipe.settings["pooling"]


class MultiTaskArchive(SignatureArchive):
    """Several fitted recipes on one backbone, as the signatures of one
    SavedModel.

    Signatures, all on the raw input a client sends (`image_bytes` or
    `text`): one per task, named after it, returning what a single
    export's `serving_default` returns for that task; and
    `serving_default`, returning every task's outputs as
    `<task>/<output>` (for example `topic/probabilities`). Add your own
    with `add_signature()`, from `prepare(raw)` to `serve(name, prepared)`
    or `serve_all(prepared)`.

    Args:
        tasks: task name to fitted recipe (`FeatureExtraction` or
            `FineTuning`, any `method`), all on the same source backbone
            (the same `Backbone` config and output). Names start with a
            letter and hold letters, digits, `_` and `-`.
        top_k: how many classes `top_k_*` report (classification tasks).

    Attributes:
        task_names: the tasks, in signature order.
        backbone: the source `Backbone`; `modality` its modality.
        prepare: the preparation, from a `[batch]` string tensor of raw
            inputs to the prepared batch.

    Raises:
        ExportError: if `tasks` is empty, a name is not a valid signature
            name (or equals another but for case), a recipe is not fitted or
            its backbone is a plain Keras layer, or the recipes do not share
            one source backbone.

    Example:

    >>> archive = tftransfer.export.MultiTaskArchive(
    ...     {"topic": topic_recipe, "sentiment": lora_recipe})
    >>> tftransfer.export.export_tasks(archive, "saved_models/news")
    """

    def __init__(self, tasks: Mapping[str, Any], *, top_k: int = DEFAULT_TOP_K):
        super().__init__()
        _check_names(tasks)
        backbones = {name: _source(name, recipe) for name, recipe in tasks.items()}
        first, backbone = next(iter(backbones.items()))
        for name, other in backbones.items():
            if other.get_config() != backbone.get_config():
                raise ExportError(
                    f"Tasks {first!r} and {name!r} were trained on different "
                    f"backbones ({backbone.name!r} and {other.name!r}, or "
                    "other settings or outputs of one); a multi-task export "
                    "serves tasks of one source backbone. Export them "
                    "separately, or train both on the same backbone."
                )
        self.backbone = backbone
        self.modality = backbone.modality
        self.top_k = top_k
        self.source = backbone.build(trainable=False)
        self.prepare = signatures.batched(signatures.preparation(backbone, None))
        shared_variables = _keras_reads_the_weights(self.source)
        self._tasks = {}
        for name, recipe in tasks.items():
            changes = backbone_changes(recipe, self.source).changes
            task = _Task(
                name,
                recipe,
                self.add_labels(recipe.class_names, f"{name}_labels.txt"),
                len(changes),
            )
            if changes and shared_variables:
                task.changes = tuple(_as_variables(name, c) for c in changes)
            elif changes:
                task.own_model = recipe.model
            self._tasks[name] = task
        self._feature_models = {}
        raw_spec = tf.TensorSpec(
            [None], tf.string, name=signatures.RAW_INPUT_NAMES[self.modality]
        )
        for name in self._tasks:
            self.add_signature(name, self._signature_of(name), raw_spec)
        self.add_signature(
            signatures.DEFAULT_SIGNATURE,
            lambda raw: self.serve_all(self.prepare(raw)),
            raw_spec,
        )

    @property
    def task_names(self) -> list[str]:
        """The tasks' names, in signature order."""
        return list(self._tasks)

    def _signature_of(self, name: str):
        return lambda raw: self.serve(name, self.prepare(raw))

    def serve(self, name: str, prepared) -> dict:
        """The named outputs of task `name` on prepared inputs, as a single
        export's `serving_default` returns them. Call it inside a signature
        function added with `add_signature()`."""
        return self._serve(self._tasks[name], prepared)

    def serve_all(self, prepared) -> dict:
        """Every task's outputs as `<task>/<output>`: one backbone pass for
        the tasks that share the frozen trunk (and pooling), one more for
        each task that changed it."""
        shared = {}
        outputs = {}
        for task in self._tasks.values():
            features = None
            if not task.changed_weights:
                pooling = repr(task.pooling)
                if pooling not in shared:
                    shared[pooling] = self._features(task, prepared)
                features = shared[pooling]
            for output, value in self._serve(task, prepared, features).items():
                outputs[f"{task.name}/{output}"] = value
        return outputs

    def _serve(self, task: _Task, prepared, features=None) -> dict:
        if task.own_model is not None:
            outputs = task.own_model(prepared, training=False)
        else:
            if features is None:
                features = self._features(task, prepared)
            outputs = task.recipe.head(features, training=False)
        return signatures.task_outputs(
            task.recipe.task,
            outputs,
            task.labels,
            task.recipe.class_names,
            max(1, min(self.top_k, len(task.recipe.class_names))),
        )

    def _features(self, task: _Task, prepared):
        """The pooled backbone outputs of `task`: the shared weights, with
        the task's changes applied."""
        model = self._feature_model(task)
        if not task.changes:
            return model(prepared, training=False)
        changed = {
            id(self.source.weights[c.position]): c.applied_to(
                self.source.weights[c.position]
            )
            for c in task.changes
        }
        trainable, non_trainable = (
            [changed.get(id(v), v) for v in variables]
            for variables in (model.trainable_variables, model.non_trainable_variables)
        )
        features, _ = model.stateless_call(
            trainable, non_trainable, prepared, training=False
        )
        return features

    def _feature_model(self, task: _Task) -> keras.Model:
        """The model from prepared inputs to `task`'s pooled features, on
        the shared layer (one per pooling)."""
        key = repr(task.pooling)
        if key not in self._feature_models:
            inputs = tf.nest.map_structure(
                lambda t: tf.TensorSpec([None, *t.shape[1:]], t.dtype),
                task.recipe.model.input,
            )
            self._feature_models[key] = heads.feature_model(
                self.source,
                heads.model_inputs(inputs),
                pooling=task.pooling,
                backbone_name=repr(self.backbone.name),
            )
        return self._feature_models[key]

    def card_tasks(self) -> dict:
        """Each task's facts for the model card."""
        return {
            task.name: {
                "task": task.recipe.task,
                "class_names": list(task.recipe.class_names),
                "method": task.recipe.settings.get("method", "head"),
                "changed_weights": task.changed_weights,
                "shares_backbone_pass": not task.changed_weights,
                "metrics": getattr(task.recipe, "metrics", None) or {},
                "recipe_settings": task.recipe.settings,
            }
            for task in self._tasks.values()
        }


def export_tasks(
    tasks: Mapping[str, Any] | MultiTaskArchive,
    base_path: str | os.PathLike | None = None,
    version: int | None = None,
    *,
    top_k: int | None = None,
    name: str | None = None,
    overwrite: bool = False,
    allow_ops: Iterable[str] = (),
) -> Path:
    """Exports several tasks on one backbone as the next version of one
    served model.

    Writes `<base_path>/<version>/` as `tftransfer.export()` does (atomic,
    versioned, every signature's ops checked against stock TF Serving), with
    a `MultiTaskArchive`'s signatures: one per task and `serving_default`
    with all of them. The backbone's weights are stored once; each task
    adds its head and what it changed of the backbone (see
    `tftransfer.deltas`). The model card's `task` is `"multi_task"` and its
    `tasks` describe each task; `assets/<task>_labels.txt` hold the names.

    Args:
        tasks: task name to fitted recipe, or a `MultiTaskArchive`.
        base_path: the model's base path (default
            `saved_models/<name>`).
        version: the version to write (`None`: the next one).
        top_k: classification: how many classes `top_k_*` report (default
            5; with an archive, give it to the archive).
        name: the model's name (default: the base path's last folder, or
            the task names joined by `+`).
        overwrite: replace `version` if it exists.
        allow_ops: op names to accept although stock TF Serving lacks them.

    Returns:
        The path of the version folder written.

    Raises:
        ExportError: as `MultiTaskArchive`, or as `tftransfer.export()`
            for the ops and the folder.

    Example:

    >>> path = tftransfer.export.export_tasks(
    ...     {"topic": topic_recipe, "sentiment": lora_recipe}, "saved_models/news")
    >>> tftransfer.export.verify_tasks(path, ["A late goal won the cup."],
    ...     {"topic": topic_recipe, "sentiment": lora_recipe})
    """
    if isinstance(tasks, MultiTaskArchive):
        if top_k is not None:
            raise ExportError(
                "Received a MultiTaskArchive and top_k; pass top_k to "
                "MultiTaskArchive(...) instead."
            )
        archive = tasks
    else:
        archive = MultiTaskArchive(
            tasks, top_k=DEFAULT_TOP_K if top_k is None else top_k
        )
    default_name = "+".join(archive.task_names)
    name = name or (Path(base_path).name if base_path else default_name)
    base = Path(base_path) if base_path else Path(DEFAULT_BASE_DIR) / name

    def card_of(folder: Path, version: int, described: dict, ops: dict) -> dict:
        return model_card.build_multi_task_card(
            name=name,
            version=version,
            modality=archive.modality,
            backbone=archive.backbone,
            tasks=archive.card_tasks(),
            signatures=described,
            serving_ops=ops,
        )

    return write_version(archive, base, version, overwrite, allow_ops, card_of)


def _check_names(tasks: Mapping[str, Any]) -> None:
    if not isinstance(tasks, Mapping) or not tasks:
        raise ExportError(
            "Expected tasks to be a non-empty dict from task name to fitted "
            f"recipe. Received: {type(tasks).__name__}."
        )
    seen = set()
    for name in tasks:
        if (
            not isinstance(name, str)
            or not re.fullmatch(vocabulary.TASK_NAME, name)
            or name == signatures.DEFAULT_SIGNATURE
        ):
            raise ExportError(
                f"Task name {name!r} cannot name a signature: use a letter "
                "followed by letters, digits, '_' or '-' (and not "
                f"{signatures.DEFAULT_SIGNATURE!r})."
            )
        if name.lower() in seen:
            raise ExportError(
                f"Two tasks are named {name!r} but for case; their label "
                "files would collide. Rename one."
            )
        seen.add(name.lower())


def _source(name: str, recipe):
    try:
        return source_backbone(recipe)
    except ArgumentError as error:
        raise ExportError(f"Task {name!r}: {error}") from error


def _as_variables(task: str, change: WeightChange) -> WeightChange:
    """`change` with its arrays held in variables, which the SavedModel
    saves once and the signatures read."""
    arrays = tuple(
        tf.Variable(array, trainable=False, name=f"{task}_{change.kind}_{i}")
        for i, array in enumerate(change.arrays)
    )
    return dataclasses.replace(change, arrays=arrays)


def _keras_reads_the_weights(layer: keras.Layer) -> bool:
    """Whether `layer`'s computation reads its weights through Keras (so
    `stateless_call` can substitute them): not so in a TF Hub SavedModel,
    whose restored functions read their own variables."""
    return not any(
        isinstance(sub, HubLayer)
        for sub in layer._flatten_layers(include_self=True, recursive=True)
    )
