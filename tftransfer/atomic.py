"""Atomic writes: a temporary sibling renamed into place.

A reader (or a run restarted after SIGKILL) sees either the previous file or
the complete new one, never a partial write. Temporary folders carry the
writer's process id and host name (`temporary_dir`), so that a later run on
the same host removes those a killed process left behind
(`remove_stale_temporaries`) without touching those of a writer still at
work, on this host or on another one sharing the folder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Writes `arrays` to `path` (`.npz`) atomically."""
    with _temporary_sibling(path) as handle:
        np.savez(handle, **arrays)


def write_json(path: str | os.PathLike, value) -> None:
    """Writes `value` as JSON to `path` atomically."""
    with _temporary_sibling(path) as handle:
        handle.write(json.dumps(value, indent=2, sort_keys=True).encode())


def replace_dir(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Moves the finished directory `source` to `target`, replacing it."""
    target = Path(target)
    if target.exists():
        stale = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.replace(target, stale / target.name)
        os.replace(source, target)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(source, target)


class _temporary_sibling:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, self.temporary = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
        )
        self.handle = os.fdopen(descriptor, "wb")
        return self.handle

    def __exit__(self, exc_type, exc, traceback):
        try:
            if exc_type is None:
                self.handle.flush()
                os.fsync(self.handle.fileno())
            self.handle.close()
            if exc_type is None:
                os.replace(self.temporary, self.path)
        finally:
            if os.path.exists(self.temporary):
                os.unlink(self.temporary)
        return False


def temporary_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """Creates `<parent>/<prefix><pid>@<host>@<random>`, a temporary folder
    that `remove_stale_temporaries(parent, prefix)` removes once this
    process has died."""
    owner = f"{os.getpid()}@{socket.gethostname()}@"
    return Path(tempfile.mkdtemp(dir=parent, prefix=f"{prefix}{owner}"))


def remove_stale_temporaries(parent: str | os.PathLike, prefix: str) -> list[Path]:
    """Removes the `temporary_dir(parent, prefix)` folders of processes of
    this host that are no longer running; returns them. Folders of other
    hosts are left alone: whether their writer runs cannot be seen here.

    Example:

    >>> remove_stale_temporaries(cache / key, ".train.partial-")
    """
    removed = []
    host = socket.gethostname()
    for entry in Path(parent).glob(f"{prefix}*"):
        pid, _, rest = entry.name[len(prefix) :].partition("@")
        owner_host = rest.partition("@")[0]
        if owner_host != host or not pid.isdigit() or process_alive(int(pid)):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with id `pid` is running (on this machine).

    Always `True` on Windows, where `os.kill` would end the process.
    """
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
