"""The versioned, atomic on-disk layout that TF Serving watches.

A model's base path holds one folder per version, named by a positive
integer (`1/`, `2/`, ...). TF Serving's file system watcher loads any such
folder as soon as it sees it, so a version is first written in full into a
hidden temporary sibling (`.tmp-<version>-<pid>-<random>/`, a name the
watcher ignores) and then renamed into place in one step. Earlier versions
are never touched; a version is only replaced when asked, again by renames.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from tftransfer import atomic
from tftransfer.errors import ExportError

_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"


def versions(base_path: str | os.PathLike) -> list[int]:
    """Lists the complete versions under a base path, in ascending order.

    Args:
        base_path: The model's base path (`saved_models/<name>`).

    Returns:
        The integer names of the version folders; `[]` if the base path does
        not exist yet. Temporary folders of unfinished exports are not
        versions and are never listed.
    """
    base = Path(base_path)
    if not base.is_dir():
        return []
    return sorted(
        int(entry.name)
        for entry in base.iterdir()
        if entry.is_dir() and entry.name.isdigit() and int(entry.name) > 0
    )


def _check_base_path(base: Path) -> None:
    for parent in (base, *base.parents):
        if parent.exists() and not parent.is_dir():
            raise ExportError(
                f"Cannot export to {str(base)!r}: {str(parent)!r} is a file, "
                "not a folder. Pass a `base_path` that is a folder (or does "
                "not exist yet), for example 'saved_models/<name>'."
            )


def _remove_stale_temporaries(base: Path) -> None:
    """Deletes temporary folders left by exports whose process has died."""
    for entry in base.iterdir():
        if not entry.name.startswith((_TMP_PREFIX, _OLD_PREFIX)):
            continue
        parts = entry.name.split("-")
        pid = int(parts[2]) if len(parts) == 4 and parts[2].isdigit() else None
        if pid is not None and atomic.process_alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)


def _os_error(error: OSError, base: Path, version: int) -> ExportError:
    if error.errno == errno.ENOSPC:
        reason = "no space left on the device"
        fix = "free some space or choose another `base_path`"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = "no permission to write there"
        fix = "fix the folder's permissions or choose another `base_path`"
    else:
        reason = f"{error.strerror or error} ({error.filename or base})"
        fix = "check the folder and try again"
    return ExportError(
        f"Could not write version {version} under {str(base)!r}: {reason}. "
        f"Earlier versions are unchanged and no partial version was left; "
        f"{fix}."
    )


def resolve_version(
    base_path: str | os.PathLike, version: int | None, overwrite: bool
) -> int:
    """Chooses the version to write and checks that it may be written.

    Args:
        base_path: The model's base path.
        version: The version asked for, or `None` for the next one (one more
            than the highest existing version, or 1).
        overwrite: Whether an existing `version` may be replaced.

    Returns:
        The version number to write.

    Raises:
        ExportError: if the base path is a file, `version` is not a positive
            integer, or it exists and `overwrite` is false.
    """
    base = Path(base_path)
    _check_base_path(base)
    existing = versions(base)
    if version is None:
        return existing[-1] + 1 if existing else 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ExportError(
            "Expected `version` to be a positive integer (TF Serving only "
            f"loads integer folder names). Received: version={version!r}."
        )
    if version in existing and not overwrite:
        raise ExportError(
            f"Version {version} already exists at {str(base / str(version))!r}. "
            "Pass `overwrite=True` to replace it, or `version=None` to write "
            f"the next version ({existing[-1] + 1})."
        )
    return version


@contextlib.contextmanager
def atomic_version_dir(
    base_path: str | os.PathLike, version: int, overwrite: bool = False
) -> Iterator[Path]:
    """Yields a temporary folder that becomes `<base_path>/<version>` on exit.

    Everything written into the yielded folder appears under the version
    folder at once, when the `with` block ends without an error. On an error
    the temporary folder is deleted and the error is raised again (an
    `OSError` becomes an `ExportError` that says what went wrong).

    Args:
        base_path: The model's base path; created if missing.
        version: The version folder to create.
        overwrite: Whether an existing version folder may be replaced.

    Yields:
        The temporary folder to write into.

    Raises:
        ExportError: if the folder cannot be written or the version exists
            and `overwrite` is false.

    Example:

    >>> with atomic_version_dir("saved_models/flowers", 3) as tmp:
    ...     tf.saved_model.save(module, str(tmp))
    """
    base = Path(base_path)
    _check_base_path(base)
    target = base / str(version)
    tmp = base / f"{_TMP_PREFIX}{version}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        base.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(base)
        tmp.mkdir()
    except OSError as error:
        raise _os_error(error, base, version) from error
    try:
        yield tmp
        _move_into_place(tmp, target, overwrite)
    except OSError as error:
        raise _os_error(error, base, version) from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, target: Path, overwrite: bool) -> None:
    if not target.exists():
        os.rename(tmp, target)
        return
    if not overwrite:
        raise ExportError(
            f"Version folder {str(target)!r} appeared while exporting. "
            "Pass `overwrite=True` to replace it or export again to write "
            "the next version."
        )
    old = target.with_name(
        f"{_OLD_PREFIX}{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    )
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
