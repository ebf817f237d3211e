"""One writer per run directory: an OS file lock, released even when the holder is killed."""

from __future__ import annotations

import os
from pathlib import Path

import filelock

from learnreg.errors import RunLockedError, StorageError
from learnreg.tracking.atomic import remove_temporaries, storage_error


class RunLock:
    """Exclusive lock on ``run_dir`` for the duration of a ``with`` block.

    Entering creates the directory and removes the temporary files of atomic writes an
    earlier, killed holder left behind (no write can be in flight while the lock is held).

    Raises:
        RunLockedError: another live process holds the directory.
        StorageError: ``run_dir`` is a file, lies below one, is a dangling link, or cannot
            be written.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self.lock = filelock.FileLock(str(self.path), timeout=0)

    def __enter__(self) -> RunLock:
        folder = self.path.parent
        check_run_dir(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        except filelock.Timeout:
            raise RunLockedError(
                f"another process is writing into {folder}. Wait for it to finish, "
                "or choose another output directory (--out)."
            ) from None
        except OSError as exc:
            raise storage_error(exc, self.path) from None
        remove_temporaries(folder)
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()


def check_run_dir(folder: str | Path) -> None:
    """Refuse an output directory that is a file, lies below a file or is a dangling
    symbolic link, before anything is written.

    Raises:
        StorageError: naming the path in the way and the fix.
    """
    folder = Path(folder)
    if folder.is_symlink() and not folder.exists():
        raise StorageError(
            f"--out {folder} is a symbolic link to {folder.readlink()}, which does not exist. "
            "Create its target, remove the link, or choose another --out."
        )
    if folder.exists() and not folder.is_dir():
        raise StorageError(
            f"--out {folder} is an existing file, not a directory. Choose another --out "
            "(a run directory is a folder)."
        )
    for parent in folder.absolute().parents:
        if parent.exists() and not parent.is_dir():
            raise StorageError(
                f"--out {folder} lies below {parent}, which is a file. Choose another --out."
            )
        if parent.is_symlink() and not parent.exists():
            raise StorageError(
                f"--out {folder} lies below {parent}, a symbolic link to a missing target. "
                "Create it or choose another --out."
            )
    if folder.exists() and not _writable(folder):
        raise StorageError(f"--out {folder} is not writable. Choose a directory you may write to.")


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)
