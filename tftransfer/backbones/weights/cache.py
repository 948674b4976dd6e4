"""Where converted weights are cached, and how they are put there."""

from __future__ import annotations

import os
import shutil


def cache_dir() -> str:
    """Returns tftransfer's cache folder.

    `TFTRANSFER_CACHE_DIR` if set, else `$XDG_CACHE_HOME/tftransfer`, else
    `~/.cache/tftransfer`.
    """
    if os.environ.get("TFTRANSFER_CACHE_DIR"):
        return os.path.expanduser(os.environ["TFTRANSFER_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "tftransfer")


def move_into_place(staging: str, target: str) -> None:
    """Renames a fully written `staging` folder to `target`.

    If another process put `target` in place first, its copy is kept and
    `staging` is removed.
    """
    try:
        os.rename(staging, target)
    except OSError:
        if not os.path.isdir(target):
            raise
        shutil.rmtree(staging, ignore_errors=True)
