"""Where converted weights are cached, how they are put there, and checked.

A folder of converted weights is written once into a temporary sibling,
with the sha256 of every file it holds recorded in `sha256.json`, and renamed
into place. Every later use checks the files against those digests, so a file
that was changed, truncated or removed in the cache is noticed and the folder
is rebuilt from its pinned source instead of being loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable

DIGESTS = "sha256.json"


def cache_dir() -> str:
    """Returns tftransfer's cache folder.

    `TFTRANSFER_CACHE_DIR` if set, else `$XDG_CACHE_HOME/tftransfer`, else
    `~/.cache/tftransfer`.
    """
    if os.environ.get("TFTRANSFER_CACHE_DIR"):
        return os.path.expanduser(os.environ["TFTRANSFER_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "tftransfer")


def cached_folder(name: str, write: Callable[[str], None]) -> str:
    """Returns `<cache>/<name>`, written by `write` and checked on every use.

    On first use `write(folder)` fills an empty temporary folder; the sha256 of
    every file in it is recorded in `sha256.json` and the folder is renamed
    to `<cache>/<name>`. Later calls check each file against its recorded
    digest. A folder that fails the check (a file changed, truncated, removed
    or added, or no digests recorded) is rebuilt with `write` and replaces
    it, with a warning that names the file; if `write` fails, so does this.

    Args:
        name: The folder's name inside the cache.
        write: Writes the folder's files into the folder it is given.

    Returns:
        The path of the checked folder.

    Example:

    >>> def write(folder):
    ...     save_file(convert(load_state_dict(path, SHA256)), f"{folder}/model.safetensors")
    >>> preset = cached_folder("my_model", write)
    """
    target = os.path.join(cache_dir(), name)
    problem = check_digests(target)
    if problem is None:
        return target
    if os.path.lexists(target):
        warnings.warn(
            f"{problem} Rebuilding {target!r} from its source.",
            UserWarning,
            stacklevel=2,
        )
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.", dir=parent)
    try:
        write(staging)
        digests = {
            path: _sha256(os.path.join(staging, path)) for path in _files(staging)
        }
        with open(os.path.join(staging, DIGESTS), "w") as f:
            json.dump(digests, f, indent=2, sort_keys=True)
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def check_digests(folder: str) -> str | None:
    """Says what is wrong with a cached folder, or returns None if nothing is.

    The folder must hold `sha256.json`, mapping the relative path of each of
    its other files to that file's sha256, and no file besides them.
    """
    if not os.path.isdir(folder):
        return f"The cache folder {folder!r} is missing or not a folder."
    record = os.path.join(folder, DIGESTS)
    try:
        with open(record, "rb") as f:
            digests = json.loads(f.read(1 << 20))
    except FileNotFoundError:
        return f"The cache folder {folder!r} has no {DIGESTS} to check it against."
    except (OSError, ValueError) as error:
        return f"The digests {record!r} cannot be read ({error})."
    if not isinstance(digests, dict) or not all(
        isinstance(value, str) for value in digests.values()
    ):
        return f"The digests {record!r} are not a mapping of file to sha256."
    files = set(_files(folder))
    unknown = sorted(files - set(digests))
    if unknown:
        return (
            f"The cached file {os.path.join(folder, unknown[0])!r} was not "
            "written with the folder."
        )
    for path, expected in sorted(digests.items()):
        file = os.path.join(folder, path)
        if path not in files:
            return f"The cached file {file!r} is missing."
        actual = _sha256(file)
        if actual != expected:
            return (
                f"The cached file {file!r} has sha256 {actual}, but {expected} "
                "was recorded when it was written: it was changed or truncated."
            )
    return None


def _files(folder: str) -> list[str]:
    """Relative paths of the files below `folder`, but for the digests."""
    found = []
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = os.path.relpath(os.path.join(root, name), folder)
            if path != DIGESTS:
                found.append(path)
    return found


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _move_into_place(staging: str, target: str) -> None:
    """Renames a fully written `staging` folder to `target`.

    A `target` that another process put in place first is kept if it passes
    `check_digests`, and replaced otherwise.
    """
    try:
        os.rename(staging, target)
        return
    except OSError:
        if not os.path.isdir(target):
            raise
    if check_digests(target) is None:
        return
    # Move the failing folder aside first: a folder cannot replace a
    # non-empty one in a single rename.
    aside = tempfile.mkdtemp(
        prefix=f".{os.path.basename(target)}.old.", dir=os.path.dirname(target)
    )
    try:
        with contextlib.suppress(FileNotFoundError):  # moved by another process
            os.rename(target, os.path.join(aside, "old"))
        try:
            os.rename(staging, target)
        except OSError:
            if check_digests(target) is not None:
                raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)
