"""One writer per run directory: an OS file lock, released even when the holder is killed."""

from __future__ import annotations

from pathlib import Path

import filelock

from learnreg.errors import RunLockedError


class RunLock:
    """Exclusive lock on ``run_dir`` for the duration of a ``with`` block.

    Raises:
        RunLockedError: another live process holds the directory.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self.lock = filelock.FileLock(str(self.path), timeout=0)

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except filelock.Timeout:
            raise RunLockedError(
                f"another process is writing into {self.path.parent}. Wait for it to finish, "
                "or choose another output directory (--out)."
            ) from None
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()
