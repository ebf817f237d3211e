"""A watchdog that kills a local Ray instance's processes once the driver is gone.

Run as a script (``python reaper.py ROOT_PID...``; it imports nothing but psutil), in a
session of its own, with a pipe from the driver on stdin. While the pipe is open it
records, every half second, the Ray processes the driver started (``ROOT_PID...``) and
all their descendants; at end of file (the driver closed the pipe or died, even by
SIGKILL, since the kernel closes a dead process's pipes) it kills every recorded process
that is still the same process. Ray's own clean-up misses some of them: when the driver
is killed, its ``DashboardAgent`` and ``RuntimeEnvAgent`` outlive it.
"""

from __future__ import annotations

import contextlib
import sys
import threading

import psutil

#: seconds between two looks at the process tree.
INTERVAL = 0.5


def _record(seen: dict[int, psutil.Process], roots: list[psutil.Process]) -> None:
    """Add ``roots`` and their current descendants to ``seen`` (pid -> process)."""
    for root in roots:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:  # exited already
            continue
        for proc in tree:
            seen.setdefault(proc.pid, proc)


def _kill(seen: dict[int, psutil.Process]) -> None:
    """SIGKILL every recorded process still running (``is_running`` compares start times,
    so a reused pid is left alone)."""
    alive = [p for p in seen.values() if p.is_running()]
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def main(root_pids: list[int]) -> None:
    roots = []
    for pid in root_pids:
        with contextlib.suppress(psutil.Error):
            roots.append(psutil.Process(pid))
    seen: dict[int, psutil.Process] = {}
    closed = threading.Event()

    def wait_for_eof() -> None:
        while sys.stdin.buffer.read(1024):
            pass
        closed.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    while not closed.is_set():
        _record(seen, roots)
        closed.wait(INTERVAL)
    _kill(seen)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]])
