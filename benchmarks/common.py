"""Helpers shared by the benchmarks: machine description and side-by-side timing."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def machine() -> str:
    """One line naming the machine the figures came from."""
    if torch.cuda.is_available():
        where = torch.cuda.get_device_name()
    else:
        where = (
            f"{torch.get_num_threads()}-thread CPU ({platform.processor() or platform.machine()})"
        )
    return f"{where}, torch {torch.__version__}, Python {platform.python_version()}"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved_ratio(
    candidate: Callable[[], object],
    reference: Callable[[], object],
    steps: int = 20,
    repeats: int = 7,
    warmup: int = 5,
) -> dict[str, float]:
    """Time ``candidate`` and ``reference`` in alternating blocks; report medians.

    Alternating blocks of ``steps`` calls, ``repeats`` times, make a noisy shared machine
    slow both sides alike, so the ratio of medians is stable even when absolute times drift.

    Returns:
        ``candidate_ms``, ``reference_ms`` (median per call) and ``ratio``.
    """
    for _ in range(warmup):
        candidate()
        reference()
    times: dict[str, list[float]] = {"candidate": [], "reference": []}
    for _ in range(repeats):
        for name, fn in (("candidate", candidate), ("reference", reference)):
            sync()
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            sync()
            times[name].append((time.perf_counter() - start) / steps * 1e3)
    cand, ref = statistics.median(times["candidate"]), statistics.median(times["reference"])
    ratios = [c / r for c, r in zip(times["candidate"], times["reference"])]
    return {"candidate_ms": cand, "reference_ms": ref, "ratio": statistics.median(ratios)}
