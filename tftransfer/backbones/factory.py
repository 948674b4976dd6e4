"""`tftransfer.backbone()`: one entry point from a handle or name to a `Backbone`."""

from __future__ import annotations

import os
from typing import Any

from tftransfer.backbones import registry
from tftransfer.backbones.description import Backbone
from tftransfer.errors import HandleError


def backbone(handle: str, **kwargs: Any) -> Backbone:
    """Returns the `Backbone` for a handle or catalogue name.

    Asks the registered backbone sources (`tftransfer.backbones.register_source`)
    in turn whether they support `handle`; the first that does builds it,
    with `kwargs`. They are asked by the form of handle they recognise:

    - a catalogue name or alias: `"efficientnetv2-b0"`,
      `"mobilenet_v2_100_224"`, `"bert-small"`, `"all-minilm-l6-v2"`,
      `"efficientnet-lite0"` (see `tftransfer.backbones.catalogue`);
    - an explicit prefix: `"keras_hub:<preset>"`, a `"kaggle://..."` /
      `"hf://..."` KerasHub handle, `"keras.applications.<Name>"` or
      `"keras:<Name>"`, `"offline:<weights module>"`;
    - an `http(s)://`, `gs://` or `file://` URL of a TF Hub model (with
      `preprocessor=` for a BERT-family text encoder);
    - a local path: a TF Hub SavedModel folder (`saved_model.pb`), a
      KerasHub, Hugging Face or timm checkpoint folder (`metadata.json` or
      `config.json`), or a file that a registered source reads.

    The error for an unknown handle lists what every registered source
    takes (docs/backbones.md: "Backbone sources and the registry").

    Args:
        handle: The handle, path or catalogue name.
        **kwargs: Passed to the source that builds it (for example
            `seq_length=64`, `weights=None`, `image_size=(160, 160)`).

    Returns:
        A `Backbone` whose `get_config()` records the source, `handle` and
        `kwargs`.

    Raises:
        HandleError: if no source supports `handle`; the message lists the
            forms the sources take and close catalogue names.
        ConfigError: if the source takes none of `kwargs`.

    Example:

    >>> tftransfer.backbone("efficientnetv2-b0").image_size
    (224, 224)
    >>> tftransfer.backbone("keras:MobileNetV2", weights=None).feature_dim
    1280
    """
    if isinstance(handle, os.PathLike):
        handle = os.fspath(handle)
    if not isinstance(handle, str) or not handle.strip():
        raise HandleError(
            f"Expected a backbone handle or catalogue name. Received: "
            f"handle={handle!r}. Accepted forms:\n{_accepted_forms()}"
        )
    source = registry.find_source(handle, **kwargs)
    if source is None:
        raise HandleError(_unknown_message(handle))
    return Backbone.from_source(source.name, handle, **kwargs)


def _accepted_forms() -> str:
    return "\n".join(f"- {source.accepts}" for source in registry.sources())


def _unknown_message(handle: str) -> str:
    close = [name for s in registry.sources() for name in s.suggest(handle)]
    hint = f" Did you mean {', '.join(repr(name) for name in close)}?" if close else ""
    if os.path.exists(handle):
        hint += " The path exists, but no backbone source reads what it holds."
    return (
        f"No backbone matches handle={handle!r}.{hint} Accepted forms:\n"
        f"{_accepted_forms()}"
    )
