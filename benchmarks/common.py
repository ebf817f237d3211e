"""Helpers shared by the benchmarks: machine description and side-by-side timing."""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device`` (default ``cpu``): where the timed work runs."""
    parser.add_argument(
        "--device", default="cpu", help="where the timed work runs: cpu, cuda or cuda:N"
    )


def device_of(name: str | torch.device) -> torch.device:
    """``name`` as a device, refusing CUDA where there is none."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: this machine has no CUDA device")
    return device


def machine(device: str | torch.device | None = None) -> str:
    """One line naming the machine (and the device the figures came from; ``None``: CUDA
    when there is one, as the ``auto`` device setting)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
        cuda = f"+CUDA {torch.version.cuda}" if "+" not in torch.__version__ else ""
        return f"{where}, torch {torch.__version__}{cuda}, Python {platform.python_version()}"
    where = f"{torch.get_num_threads()}-thread CPU ({platform.processor() or platform.machine()})"
    return f"{where}, torch {torch.__version__}, Python {platform.python_version()}"


def sync(device: str | torch.device | None = None) -> None:
    """Wait for queued GPU work, so a wall-clock timer covers it (no-op on the CPU).

    ``None``: every CUDA device there is (when it is unknown where the work ran)."""
    if device is None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    elif torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_time(
    fn: Callable[[], object],
    repeats: int,
    warmup: int = 1,
    device: str | torch.device | None = None,
) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls,
    each call bracketed by :func:`sync` on ``device`` (GPU work is asynchronous)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_ratio(
    candidate: Callable[[], object],
    reference: Callable[[], object],
    steps: int = 20,
    repeats: int = 7,
    warmup: int = 5,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Time ``candidate`` and ``reference`` in alternating blocks; report medians.

    Alternating blocks of ``steps`` calls, ``repeats`` times, make a noisy shared machine
    slow both sides alike, so the ratio of medians is stable even when absolute times drift.
    Each block is bracketed by :func:`sync` on ``device`` (``None``: any CUDA device).

    Returns:
        ``candidate_ms``, ``reference_ms`` (median per call) and ``ratio``.
    """
    for _ in range(warmup):
        candidate()
        reference()
    times: dict[str, list[float]] = {"candidate": [], "reference": []}
    for _ in range(repeats):
        for name, fn in (("candidate", candidate), ("reference", reference)):
            sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - start) / steps * 1e3)
    cand, ref = statistics.median(times["candidate"]), statistics.median(times["reference"])
    ratios = [c / r for c, r in zip(times["candidate"], times["reference"])]
    return {"candidate_ms": cand, "reference_ms": ref, "ratio": statistics.median(ratios)}


def paired_cell(d: dict, scale: float = 1.0, digits: int = 2) -> str:
    """A table cell for :func:`learnreg.eval.stats.paired`'s result: the mean difference
    ± its t half-width (times ``scale``, e.g. 100 for percentage points), the paired
    t-test p, the seeds won out of n and the verdict."""
    return (
        f"{d['mean_diff'] * scale:+.{digits}f} ± {d['ci95'] * scale:.{digits}f}, "
        f"p={d['p_value']:.2g}, {d['wins']}/{d['n']}: {d['verdict']}"
    )
