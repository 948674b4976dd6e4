"""`model_card.json`: what an exported model is, where it came from, how good."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

CARD_FILE = "model_card.json"
LIBRARIES = ("tftransfer", "tensorflow", "keras", "tensorflow-text", "tensorflow-hub")


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
        modality: `"image"` or `"text"`.
        backbone: The `Backbone` the model was built on, or `None`.
        class_names: The class names, in output order.
        data_source: Where the training data came from, or `None`.
        metrics: Evaluation metrics (for example from `recipe.evaluate()`).
        settings: The recipe's settings.
        signatures: Signature name to `{"inputs": ..., "outputs": ...}`.
        serving_ops: The TF Serving compatibility check's result.
        tflite: The TFLite export's facts (file, quantization, accuracy), if
            any.

    Returns:
        A JSON-serialisable dict.
    """
    card = {
        "name": name,
        "version": int(version),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "task": "classification",
        "modality": modality,
        "backbone": backbone_summary(backbone),
        "data_source": data_source,
        "class_names": list(class_names),
        "metrics": _jsonable(metrics or {}),
        "recipe_settings": _jsonable(settings or {}),
        "signatures": dict(signatures),
        "serving_ops": dict(serving_ops),
        "library_versions": library_versions(),
    }
    if tflite is not None:
        card["tflite"] = _jsonable(tflite)
    return card


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
