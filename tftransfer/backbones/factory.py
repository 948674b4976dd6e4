"""`tftransfer.backbone()`: one entry point from a handle or name to a `Backbone`."""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from collections.abc import Callable
from typing import Any

from tftransfer.backbones import catalogue
from tftransfer.backbones.description import Backbone
from tftransfer.errors import ConfigError, HandleError

_KERAS_HUB_PREFIX = "keras_hub:"
_KERAS_HUB_SCHEMES = ("kaggle://", "hf://")
_APPLICATION_PREFIXES = ("keras.applications.", "keras:")
_HUB_SCHEMES = ("http://", "https://", "gs://", "file://")

ACCEPTED_FORMS = """\
- a catalogue name or alias: "efficientnetv2-b0", "mobilenet_v2_100_224",
  "bert-small", "all-minilm-l6-v2" (see `tftransfer.backbones.catalogue`);
- "keras_hub:<preset>" (a KerasHub preset name or folder), or a
  "kaggle://..." / "hf://..." KerasHub handle;
- "keras.applications.<Name>" or "keras:<Name>" (e.g. "keras:EfficientNetV2B0");
- an http(s), gs:// or file:// URL of a TF Hub model (add preprocessor=...
  for a BERT-family text encoder);
- a local folder: a TF Hub SavedModel (saved_model.pb), or a KerasHub,
  Hugging Face or timm checkpoint (metadata.json or config.json)."""


def backbone(handle: str, **kwargs: Any) -> Backbone:
    """Returns the `Backbone` for a handle or catalogue name.

    Picks the constructor from the form of `handle` and passes `kwargs` on
    to it. Accepted forms, tried in this order:

    - a catalogue name or alias: `"efficientnetv2-b0"`,
      `"mobilenet_v2_100_224"`, `"bert-small"`, `"all-minilm-l6-v2"`,
      `"efficientnet-lite0"` (see `tftransfer.backbones.catalogue`);
    - `"keras_hub:<preset>"` (a KerasHub preset name or folder), or a
      `"kaggle://..."` / `"hf://..."` KerasHub handle:
      `Backbone.from_keras_hub`;
    - `"keras.applications.<Name>"` or `"keras:<Name>"`:
      `Backbone.from_keras_application`;
    - an `http(s)://`, `gs://` or `file://` URL: `Backbone.from_hub`, or
      `Backbone.from_hub_text` when `preprocessor=` is given;
    - a local folder: `Backbone.from_hub` for a SavedModel
      (`saved_model.pb`), `Backbone.from_keras_hub` for a KerasHub, Hugging
      Face or timm checkpoint (`metadata.json` or `config.json`).

    Args:
        handle: The handle, path or catalogue name.
        **kwargs: Passed to the chosen constructor (for example
            `seq_length=64`, `weights=None`, `image_size=(160, 160)`).

    Returns:
        A `Backbone`.

    Raises:
        HandleError: if `handle` matches none of the forms.
        ConfigError: if the chosen constructor takes none of `kwargs`.

    Example:

    >>> tftransfer.backbone("efficientnetv2-b0").image_size
    (224, 224)
    >>> tftransfer.backbone("keras:MobileNetV2", weights=None).feature_dim
    1280
    """
    if not isinstance(handle, str) or not handle.strip():
        raise HandleError(
            f"Expected a backbone handle or catalogue name. Received: "
            f"handle={handle!r}. Accepted forms:\n{ACCEPTED_FORMS}"
        )
    found = catalogue.lookup(handle)
    if found:
        result = _from_catalogue(*found, **kwargs)
        result._config = {
            "constructor": "backbone",
            "arguments": {"handle": found[0], **kwargs},
        }
        return result
    if handle.startswith(_KERAS_HUB_PREFIX):
        preset = handle[len(_KERAS_HUB_PREFIX) :]
        return _call(handle, Backbone.from_keras_hub, preset, **kwargs)
    if handle.startswith(_KERAS_HUB_SCHEMES):
        return _call(handle, Backbone.from_keras_hub, handle, **kwargs)
    for prefix in _APPLICATION_PREFIXES:
        if handle.startswith(prefix):
            name = handle[len(prefix) :]
            return _call(handle, Backbone.from_keras_application, name, **kwargs)
    if handle.startswith(_HUB_SCHEMES):
        return _from_hub(handle, **kwargs)
    if os.path.isdir(handle):
        if os.path.exists(os.path.join(handle, "saved_model.pb")):
            return _from_hub(handle, **kwargs)
        if any(
            os.path.exists(os.path.join(handle, name))
            for name in ("metadata.json", "config.json")
        ):
            return _call(handle, Backbone.from_keras_hub, handle, **kwargs)
    raise HandleError(_unknown_message(handle))


def _call(handle: str, constructor: Callable, *args: Any, **kwargs: Any) -> Backbone:
    """Calls `constructor(*args, **kwargs)`, first checking that it takes
    every keyword in `kwargs` (a `ConfigError` naming those it takes, not a
    `TypeError`)."""
    parameters = list(inspect.signature(constructor).parameters.values())[len(args) :]
    accepted = [
        parameter.name
        for parameter in parameters
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    ]
    takes_any = any(parameter.kind == parameter.VAR_KEYWORD for parameter in parameters)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown and not takes_any:
        takes = f"takes {accepted}" if accepted else "takes no keyword arguments"
        raise ConfigError(
            f"Backbone {handle!r} {takes}. Received unknown keyword "
            f"arguments: {unknown}."
        )
    return constructor(*args, **kwargs)


def _from_hub(handle: str, preprocessor: str | None = None, **kwargs) -> Backbone:
    if preprocessor is not None:
        return _call(handle, Backbone.from_hub_text, preprocessor, handle, **kwargs)
    return _call(handle, Backbone.from_hub, handle, **kwargs)


def _from_catalogue(name: str, entry: dict, **kwargs: Any) -> Backbone:
    source = entry["source"]
    if source == "hub":
        options = {
            "image_size": entry["image_size"],
            "value_range": entry["value_range"],
            "name": name,
            **kwargs,
        }
        return _call(name, Backbone.from_hub, entry["handle"], **options)
    if source == "hub_text":
        return _call(
            name,
            Backbone.from_hub_text,
            entry["preprocessor"],
            entry["encoder"],
            **{"name": name, **kwargs},
        )
    return _call(name, importlib.import_module(entry["loader"]).backbone, **kwargs)


def _unknown_message(handle: str) -> str:
    names = {
        catalogue.normalize_name(a): k
        for k, e in catalogue.CATALOGUE.items()
        for a in (k, *e["aliases"])
    }
    close = difflib.get_close_matches(catalogue.normalize_name(handle), names, n=3)
    hint = f" Did you mean {', '.join(repr(names[c]) for c in close)}?" if close else ""
    if os.path.isdir(handle):
        hint += (
            " The folder exists but holds neither saved_model.pb nor a "
            "metadata.json/config.json checkpoint."
        )
    return (
        f"No backbone matches handle={handle!r}.{hint} Accepted forms:\n"
        f"{ACCEPTED_FORMS}"
    )
