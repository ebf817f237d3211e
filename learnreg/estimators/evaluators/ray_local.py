"""A private local Ray instance: on the loopback interface, and gone with its driver.

Everything learnreg does with Ray's private interface lives here (Ray's supported range
is pinned in ``pyproject.toml``'s ``ray`` extra):

* ``ray.init(_node_ip_address=...)`` and the cluster-mode switch
  (``ray._private.ray_constants.ENABLE_RAY_CLUSTER`` with its environment variable), so
  the instance listens on 127.0.0.1 only. Where a Ray version no longer honours them,
  :func:`start` notices that the instance is not on the loopback interface and refuses
  it rather than serve on the network.
* A watchdog (:mod:`.reaper`) kills the instance's processes when the driver dies,
  however it dies; :func:`stop` shuts Ray down and stops the watchdog.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from learnreg.errors import ConfigError

LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def _loopback_only(ray):
    """While a private local instance starts, keep it on 127.0.0.1: on Linux Ray replaces
    a loopback node address by the machine's network address (so that other nodes could
    join) unless its cluster mode is off, which it reads from this variable (in the
    processes it starts) and constant (in this one). Both are restored afterwards."""
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    saved_env = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    saved_constant = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if saved_constant is not None:
        constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        else:
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = saved_env
        if saved_constant is not None:
            constants.ENABLE_RAY_CLUSTER = saved_constant


def _children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children()}


def start(ray, num_cpus: int | None, options: dict) -> subprocess.Popen:
    """Start a local Ray instance on the loopback interface and its watchdog.

    Args:
        ray: the imported ``ray`` module.
        num_cpus: the instance's CPUs (None: Ray's default).
        options: further ``ray.init`` arguments (``runtime_env``, ``log_to_driver``).

    Returns:
        The watchdog process (pass it to :func:`stop`).

    Raises:
        ConfigError: psutil is missing, or this Ray put the instance elsewhere than on
            127.0.0.1 (the instance is shut down first).
    """
    try:
        import psutil  # noqa: F401  (the watchdog needs it)
    except ImportError:
        raise ConfigError(
            "the ray evaluator needs psutil to clean up its local Ray instance: "
            "`pip install 'learnreg[ray]'`"
        ) from None
    before = _children()
    with _loopback_only(ray):
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address=LOOPBACK, **options)
    roots = sorted(_children() - before)
    watchdog = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("reaper.py")), *map(str, roots)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the driver's process group: Ctrl-C spares it
    )
    address = ray.get_runtime_context().gcs_address
    if not address.startswith(LOOPBACK):
        stop(ray, watchdog)
        raise ConfigError(
            f"Ray {ray.__version__} started its local instance on {address}, not on "
            f"{LOOPBACK}: this Ray version is outside the range learnreg supports "
            "(see the `ray` extra in pyproject.toml). Install a supported Ray or give the "
            "ray evaluator the `address` of a cluster you run."
        )
    return watchdog


def stop(ray, watchdog: subprocess.Popen | None) -> None:
    """Shut the local instance down; the watchdog then kills anything Ray left behind."""
    ray.shutdown()
    if watchdog is not None:
        with contextlib.suppress(OSError):
            watchdog.stdin.close()
        watchdog.wait()
