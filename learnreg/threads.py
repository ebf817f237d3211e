"""How many intra-op CPU threads a run uses: ``$LEARNREG_THREADS``, the config's
``threads`` key, or one.

The models meta-learned here are small (an MLP on digits, a Conv-4 on 28x28 images):
each operation is too short for a thread pool to pay off, and when other processes
hold the cores, OpenMP workers that spin waiting for each other burn CPU without
progress. Measured on 2 shared cores (BENCHMARKS.md §6), torch's default pool took
about 9x the CPU time of one thread for the same run and over 10x its wall time under
load, while near idle the two were within noise; one thread is the default, ``0`` keeps
torch's default.
"""

from __future__ import annotations

import os

import torch

from learnreg.errors import ConfigError

ENV = "LEARNREG_THREADS"


def resolve_threads(configured: int | None = None) -> int | None:
    """The thread count a run should use.

    Args:
        configured: the config's ``threads`` (None: not set).

    Returns:
        ``$LEARNREG_THREADS`` when set (it is the machine's setting, so it wins over a
        config that travels between machines), else ``configured``, else 1; ``None``
        when the answer is 0 (keep torch's default).

    Raises:
        ConfigError: when ``$LEARNREG_THREADS`` is not a non-negative integer.
    """
    text = os.environ.get(ENV, "").strip()
    if text:
        if not text.isdigit():
            raise ConfigError(
                f"${ENV}={text!r} is not a thread count; set it to a whole number "
                "(1: one thread, 0: torch's default of one per core) or unset it."
            )
        value = int(text)
    else:
        value = 1 if configured is None else configured
    return value or None


def configure_threads(configured: int | None = None) -> int:
    """Set torch's intra-op thread count for this process (see :func:`resolve_threads`).

    Args:
        configured: the config's ``threads`` (None: not set).

    Returns:
        The number of intra-op threads torch now uses.
    """
    count = resolve_threads(configured)
    if count is not None and count != torch.get_num_threads():
        torch.set_num_threads(count)
    return torch.get_num_threads()
