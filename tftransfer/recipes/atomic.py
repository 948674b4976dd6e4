"""Atomic writes: a temporary sibling renamed into place.

A reader (or a run restarted after SIGKILL) sees either the previous file or
the complete new one, never a partial write.
"""

from __future__ import annotations

import json
import os
import shutil
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
