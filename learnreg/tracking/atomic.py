"""Crash-safe file writes: write a temporary file, fsync it, rename it over the target,
fsync the directory. A reader sees the old file or the new one, never a torn one.

Files get the mode ``open()`` gives (0666 less the umask), like every other file of a
run directory; a write that fails (a full or read-only file system) leaves the previous
file intact, removes its temporary and raises :class:`~learnreg.errors.StorageError`.
"""

from __future__ import annotations

import errno
import io
import os
import re
import tempfile
from pathlib import Path

import torch

from learnreg.errors import StorageError

_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # mkstemp(prefix=".NAME.", suffix=".tmp")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise storage_error(exc, path) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise storage_error(exc, path) from None
        raise
    fsync_dir(path.parent)


def atomic_torch_save(obj, path: str | Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files interrupted atomic writes left below ``folder``.

    Only safe while holding the folder's :class:`~learnreg.tracking.lock.RunLock` (no
    write can be in flight). Returns the removed paths.
    """
    removed = []
    for path in Path(folder).rglob(".*.tmp"):
        if _TEMPORARY.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def storage_error(exc: OSError, path: str | Path) -> StorageError:
    """An ``OSError`` met writing ``path`` as one line naming the cause and the fix."""
    fix = {
        errno.ENOSPC: "free some space or choose another --out",
        errno.EDQUOT: "free some space or choose another --out",
        errno.EROFS: "the file system is read-only: choose a writable --out",
        errno.EACCES: "choose a directory you may write to (--out)",
        errno.EPERM: "choose a directory you may write to (--out)",
        errno.ENOTDIR: "a parent of it is a file: choose another --out",
        errno.EEXIST: "a file is in the way: remove it or choose another --out",
    }.get(exc.errno, "check the file system, or choose another --out")
    error = StorageError(f"cannot write {path}: {exc.strerror or exc}. To fix: {fix}.")
    error.errno = exc.errno
    return error


def _umask() -> int:
    try:  # Linux reports it without changing it (no window where other threads see 0)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)  # elsewhere reading the umask means setting it: put it back
    os.umask(mask)
    return mask


def fsync_dir(path: str | Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_figure(fig, path: str | Path) -> Path:
    """Render ``fig`` to a PNG with the Agg canvas (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # only figures need it

    fig.tight_layout()
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
