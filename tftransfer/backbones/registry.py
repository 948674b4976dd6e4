"""The registry of backbone sources that `tftransfer.backbone()` consults.

Every module of this package named `*_source.py` is a source: it registers
its `BackboneSource` instances when imported, and the registry imports them
all the first time it is asked (or first registered with). Sources from
outside the package register with `register_source()`.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from typing import Any

from tftransfer.backbones.source import FORMS, BackboneSource
from tftransfer.errors import ConfigError

_SOURCES: dict[str, BackboneSource] = {}
# "pending", then "running" while the `*_source` modules are imported (they
# register themselves meanwhile), then "done" once every import succeeded.
_discovery = "pending"


def register_source(source: BackboneSource) -> BackboneSource:
    """Adds a backbone source, so `tftransfer.backbone()` and
    `Backbone.from_config()` use it.

    Register it in every process that loads backbones built from it (for
    example on import of the module that defines it). Within its `form`,
    `tftransfer.backbone()` asks it after the built-in sources, in the
    order such sources were registered.

    Args:
        source: A `BackboneSource` instance with a `name` no other
            registered source has and a `form` from `FORMS`.

    Returns:
        `source`, so it can be used as `SOURCE = register_source(MySource())`.

    Raises:
        ConfigError: if `source` is not a `BackboneSource`, its `name` is
            not a non-empty string, its `form` is unknown or another
            source (a built-in one too) has its `name`.

    Example:

    >>> tftransfer.backbones.register_source(NpzWeights())
    >>> tftransfer.backbone("weights.npz")
    """
    if not isinstance(source, BackboneSource):
        raise ConfigError(
            "Expected a tftransfer.backbones.BackboneSource instance. "
            f"Received: {source!r}."
        )
    name = getattr(source, "name", None)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(
            f"Expected the `name` of backbone source {type(source).__name__} to "
            f"be a non-empty string. Received: name={name!r}. Set the class "
            "attribute `name`, which `Backbone.get_config()` records."
        )
    if getattr(source, "form", None) not in FORMS:
        raise ConfigError(
            f"Expected the `form` of backbone source {source.name!r} to be one "
            f"of {FORMS}. Received: form={getattr(source, 'form', None)!r}."
        )
    _discover()
    registered = _SOURCES.get(source.name)
    if registered is not None and registered is not source:
        raise ConfigError(
            f"A backbone source named {source.name!r} is already registered "
            f"({type(registered).__name__}). Give {type(source).__name__} "
            "another `name`, or call tftransfer.backbones.unregister_source"
            f"({source.name!r}) first to replace it."
        )
    _SOURCES[source.name] = source
    return source


def unregister_source(name: str) -> None:
    """Removes the source registered as `name` (nothing if there is none).

    For replacing a source with `register_source()`, for example when a
    notebook cell that defines and registers it runs again.

    Args:
        name: The `name` of a registered source.
    """
    _discover()
    _SOURCES.pop(name, None)


def sources() -> list[BackboneSource]:
    """The registered sources in the order `tftransfer.backbone()` tries
    them: by `form` (`FORMS`); within a form the built-in sources (by
    module name), then the others in the order they were registered."""
    _discover()
    return sorted(_SOURCES.values(), key=_rank)


def get_source(name: str) -> BackboneSource:
    """Returns the source registered as `name`.

    Raises:
        ConfigError: naming the registered sources and how to register
            `name`, if none is.
    """
    _discover()
    if name not in _SOURCES:
        raise ConfigError(
            f"No backbone source named {name!r} is registered (registered: "
            f"{sorted(_SOURCES)}). Import the module that defines it and call "
            "tftransfer.backbones.register_source() with an instance before "
            "building or loading its backbones."
        )
    return _SOURCES[name]


def find_source(handle: str, **options: Any) -> BackboneSource | None:
    """The first source, in `sources()` order, that supports `handle`."""
    return next((s for s in sources() if s.is_supported(handle, **options)), None)


def _rank(source: BackboneSource) -> tuple[int, int, str]:
    """Sorts by form, then the built-in sources (the `*_source` modules of
    this package) by module before all others, which keep their order."""
    module = type(source).__module__
    built_in = module.startswith(f"{__package__}.") and module.endswith("_source")
    return FORMS.index(source.form), 0 if built_in else 1, module if built_in else ""


def _discover() -> None:
    """Imports every `*_source` module of this package, once; each registers
    its sources on import (its `register_source()` calls find discovery
    running and register at once). If an import fails, the next call
    tries again."""
    global _discovery
    if _discovery != "pending":
        return
    _discovery = "running"
    try:
        package = os.path.dirname(__file__)
        for info in sorted(pkgutil.iter_modules([package]), key=lambda i: i.name):
            if info.name.endswith("_source"):
                importlib.import_module(f"{__package__}.{info.name}")
    except BaseException:
        _discovery = "pending"
        raise
    _discovery = "done"
