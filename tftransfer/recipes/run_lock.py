"""`RunLock`: one training process per run folder."""

from __future__ import annotations

import os
import socket
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; the run folder is not locked.
    fcntl = None

from tftransfer.errors import TrainingError


class RunLock:
    """An exclusive lock on a run folder, held while a recipe trains.

    Two processes training into one run folder would interleave their
    checkpoints, `history.csv` and TensorBoard files. The lock is an
    operating-system lock (`flock`) on `<run_dir>/.lock`, so it is released
    when the process exits, however it exits: a crashed or killed run never
    leaves the folder locked. The file records who holds it, for the message
    the next process shows. Where the OS has no `flock` (Windows), the folder
    is not locked.

    Args:
        run_dir: the run folder (created if needed).

    Example:

    >>> with RunLock("runs/flowers"):
    ...     recipe.fit(train, validation)
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self._file = None

    def __enter__(self) -> RunLock:
        path = self.run_dir / ".lock"
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")  # noqa: SIM115 (held until __exit__)
        except OSError as error:
            raise TrainingError(
                f"Cannot write to the run folder {str(self.run_dir)!r}: "
                f"{error.strerror or error}. Pass run_dir= a folder you can "
                "write to (checkpoints and logs go there)."
            ) from None
        try:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise TrainingError(
                f"The run folder {str(self.run_dir)!r} is in use by {holder}, "
                "which is training into it. Wait for it to finish, or pass "
                "another run_dir."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc_info) -> None:
        if self._file is not None:
            self._file.truncate(0)
            self._file.close()  # Closing releases the lock.
            self._file = None
