"""`model_card.json`: what an exported model is, where it came from, how good."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

CARD_FILE = "model_card.json"
# The `task` of a model card whose version serves several tasks.
MULTI_TASK = "multi_task"
LIBRARIES = ("tftransfer", "tensorflow", "keras", "tensorflow-text", "tensorflow-hub")


@dataclasses.dataclass(frozen=True)
class ModelCardInfo:
    """Where a model came from and how good it is, for its model card.

    A fitted recipe provides all three (its `settings` hold its data
    source); pass this to `tftransfer.export(..., card=...)` to state them
    for a Keras model, or to replace a recipe's.

    Args:
        data_source: Where the training data came from (for example
            `"image_folder:/data/flowers"`). Defaults to
            `settings["data_source"]`.
        metrics: Evaluation metrics (for example from `recipe.evaluate()`).
        settings: The training settings.

    Example:

    >>> card = tftransfer.export.ModelCardInfo(
    ...     data_source="image_folder:/data/flowers",
    ...     metrics={"accuracy": 0.93})
    >>> tftransfer.export(model, "saved_models/flowers", backbone=backbone,
    ...                   class_names=class_names, card=card)
    """

    data_source: str | None = None
    metrics: Mapping[str, Any] | None = None
    settings: Mapping[str, Any] | None = None

    def or_else(self, defaults: ModelCardInfo) -> ModelCardInfo:
        """Each field given here, else `defaults`' (a recipe's facts)."""
        metrics = self.metrics if self.metrics is not None else defaults.metrics
        settings = self.settings if self.settings is not None else defaults.settings
        data_source = (
            self.data_source
            or defaults.data_source
            or (settings or {}).get("data_source")
        )
        return ModelCardInfo(data_source, metrics, settings)


def library_versions() -> dict[str, str | None]:
    """Returns the installed versions of the libraries an export depends on.

    Returns:
        A dict from distribution name to version (`None` if not installed),
        plus `"python"`.
    """
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def backbone_summary(backbone: Any) -> dict[str, Any] | None:
    """Returns the JSON-serialisable facts of a `Backbone` (or `None`)."""
    if backbone is None:
        return None
    fields = (
        "name",
        "handle",
        "source",
        "modality",
        "feature_dim",
        "image_size",
        "value_range",
        "seq_length",
    )
    return _jsonable({field: getattr(backbone, field, None) for field in fields})


def build_model_card(
    *,
    name: str,
    version: int,
    task: str,
    modality: str,
    backbone: Any,
    class_names: Sequence[str],
    data_source: str | None,
    metrics: Mapping[str, Any] | None,
    settings: Mapping[str, Any] | None,
    signatures: Mapping[str, Any],
    serving_ops: Mapping[str, Any],
    tflite: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assembles the model card of one exported version.

    Args:
        name: The model's name (the base path's last folder).
        version: The version number written.
        task: The task the signatures serve (`"classification"`,
            `"multi_label"` or `"regression"`).
        modality: `"image"` or `"text"`.
        backbone: The `Backbone` the model was built on, or `None`.
        class_names: The class, label or target names, in output order.
        data_source: Where the training data came from, or `None`.
        metrics: Evaluation metrics (for example from `recipe.evaluate()`).
        settings: The recipe's settings.
        signatures: Signature name to `{"inputs": ..., "outputs": ...}`.
        serving_ops: The TF Serving compatibility check's result.
        tflite: The TFLite export's facts (file, quantization, the task's
            main metric on Keras and TFLite), if any.

    Returns:
        A JSON-serialisable dict.
    """
    card = _card(
        name,
        version,
        task,
        modality,
        backbone,
        signatures,
        serving_ops,
        data_source=data_source,
        class_names=list(class_names),
        metrics=_jsonable(metrics or {}),
        recipe_settings=_jsonable(settings or {}),
    )
    if tflite is not None:
        card["tflite"] = _jsonable(tflite)
    return card


def build_multi_task_card(
    *,
    name: str,
    version: int,
    modality: str,
    backbone: Any,
    tasks: Mapping[str, Mapping[str, Any]],
    signatures: Mapping[str, Any],
    serving_ops: Mapping[str, Any],
) -> dict[str, Any]:
    """Assembles the model card of a version that serves several tasks on
    one backbone: `task` is `"multi_task"`, and `tasks` holds each task's
    facts (its task, class names, metrics, settings, what it changed of
    the backbone), by task name.

    Example:

    >>> build_multi_task_card(name="news", version=1, modality="text",
    ...     backbone=backbone, tasks={"topic": {...}}, signatures=described,
    ...     serving_ops=summary)["task"]
    'multi_task'
    """
    return _card(
        name,
        version,
        MULTI_TASK,
        modality,
        backbone,
        signatures,
        serving_ops,
        tasks=_jsonable(dict(tasks)),
    )


def _card(
    name, version, task, modality, backbone, signatures, serving_ops, **fields
) -> dict:
    """A model card: what every card has, around the `fields` of its kind."""
    return {
        "name": name,
        "version": int(version),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "task": task,
        "modality": modality,
        "backbone": backbone_summary(backbone),
        **fields,
        "signatures": dict(signatures),
        "serving_ops": dict(serving_ops),
        "library_versions": library_versions(),
    }


def _jsonable(value: Any) -> Any:
    """Round-trips through JSON, turning numpy scalars and tuples into JSON."""
    return json.loads(json.dumps(value, default=_to_builtin))


def _to_builtin(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def write_model_card(card: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Writes a model card as indented JSON."""
    with open(path, "w", encoding="utf-8") as file:
        json.dump(card, file, indent=2, sort_keys=False)
        file.write("\n")
