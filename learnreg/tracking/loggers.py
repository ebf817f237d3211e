"""The logger protocol and its backends: jsonl (always on), console and Weights & Biases.

A record is a dict of scalar metrics plus its axes: ``meta_step`` for meta-training,
``inner_step`` (and ``seed``) for base training during meta-test. W&B gets each axis as
its own step metric, so meta-step and inner-step curves do not share an x-axis.
``log_table`` records a table (a search's population per generation): a ``wandb.Table``
in W&B, one JSON record in metrics.jsonl, nothing on the console.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from learnreg.tracking.json_values import json_number, strict_json
from learnreg.tracking.wandb_logger import WandbLogger, flatten, has_wandb_credentials, wandb_mode

__all__ = [
    "Logger",
    "JsonlLogger",
    "ConsoleLogger",
    "WandbLogger",
    "MultiLogger",
    "flatten",
    "has_wandb_credentials",
    "probe_line",
    "strict_json",
    "wandb_mode",
]


class Logger(Protocol):
    def log(self, metrics: dict[str, float], **axes: int) -> None: ...

    def log_table(self, name: str, columns: list[str], rows: list[list], **axes: int) -> None: ...

    def log_artifact(self, path: str | Path, name: str, kind: str) -> None: ...

    def log_images(self, images: dict[str, Path]) -> None: ...

    def close(self) -> None: ...


class JsonlLogger:
    """One JSON object per line in ``path``; ``truncate(n)`` drops lines after the n-th
    (so a resumed run's file equals an uninterrupted run's)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a", encoding="utf-8")
        self.lines = _count_lines(self.path)

    def log(self, metrics: dict[str, float], **axes: int) -> None:
        record = strict_json({**axes, **metrics})
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.lines += 1

    def log_table(self, name: str, columns: list[str], rows: list[list], **axes: int) -> None:
        rows = [[json_number(v) for v in row] for row in rows]
        self.log({"table": name, "columns": list(columns), "rows": rows}, **axes)

    def truncate(self, lines: int) -> None:
        self.file.close()
        kept = (
            self.path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]
            if self.path.exists()
            else []
        )
        self.path.write_text("".join(kept), encoding="utf-8")
        self.file = self.path.open("a", encoding="utf-8")
        self.lines = len(kept)

    def log_images(self, images) -> None:
        return None  # the images are files in the run directory already

    def log_artifact(self, path, name, kind) -> None:
        return None

    def close(self) -> None:
        self.file.close()


class ConsoleLogger:
    """Prints a line every ``every`` meta-steps and every logged meta-test curve point
    (each ``eval_every`` inner steps), with elapsed time and an ETA when the totals are
    known: progress that shows in a log file or CI output as well as on a terminal.

    Args:
        every: meta-steps between meta-training lines.
        stream: where to print (default ``sys.stderr``).
        meta_steps: total meta-steps (for the meta-training ETA).
        meta_test_steps: inner steps of one meta-test run.
        meta_test_seeds: meta-test seeds.
        eval_every: inner steps between meta-test curve points (0: only at the end).
        runs_per_seed: meta-test runs per seed (learned, then baseline when there is one).
    """

    def __init__(
        self,
        every: int = 50,
        stream=None,
        meta_steps: int | None = None,
        meta_test_steps: int | None = None,
        meta_test_seeds: int | None = None,
        eval_every: int = 0,
        runs_per_seed: int = 2,
    ):
        self.every, self.stream = every, stream or sys.stderr
        self.meta_steps, self.meta_test_steps = meta_steps, meta_test_steps
        self.meta_test_seeds, self.runs_per_seed = meta_test_seeds, runs_per_seed
        self.eval_every = eval_every or meta_test_steps
        self.clocks: dict[str, tuple[float, float]] = {}  # phase -> (start time, start fraction)
        self.last_line = time.monotonic()  # a phase's clock starts at the previous line

    def log(self, metrics: dict[str, float], **axes: int) -> None:
        step = axes.get("meta_step")
        if step is not None and step % self.every != 0:
            return
        if step is None and "inner_step" in axes:
            self._meta_test_line(metrics, axes)
            return
        where = " ".join(f"{k}={v}" for k, v in axes.items())
        if "meta/one_step_gain" in metrics:  # the meta-training probes, in plain words
            print(f"[{where}] {probe_line(metrics)}", file=self.stream)
            return
        body = " ".join(
            f"{k.split('/')[-1]}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float))
        )
        total = self.meta_steps
        timing = (
            self._timing("meta_train", step / total, (step - self.every) / total)
            if step is not None and total
            else ""
        )
        self._print(f"[{where}] {body}{timing}")

    def _meta_test_line(self, metrics: dict, axes: dict) -> None:
        # Progress follows the runs' curves (meta_test/<run>/<metric>); run-level
        # diagnostics such as meta_test/update_ratio are logged but not printed.
        tags = [
            k.split("/")[1] for k in metrics if k.startswith("meta_test/") and k.count("/") >= 2
        ]
        if not tags:
            return
        tag = tags[0]
        shown = " ".join(
            f"{k.split('/')[-1]}={v:.4g}"
            for k, v in metrics.items()
            if k.split("/")[-1].startswith("test_") and isinstance(v, (int, float))
        )
        step, timing = axes["inner_step"], ""
        if self.meta_test_steps and self.meta_test_seeds:
            # Runs finished before this one: earlier seeds', then learned before baseline.
            done = (axes.get("seed") or 0) * self.runs_per_seed + (tag == "baseline")
            runs = self.meta_test_seeds * self.runs_per_seed
            fraction = (done + step / self.meta_test_steps) / runs
            interval = min(self.eval_every, step) / self.meta_test_steps / runs
            timing = self._timing("meta_test", fraction, fraction - interval)
        total = f"/{self.meta_test_steps}" if self.meta_test_steps else ""
        self._print(f"[meta-test {tag} seed={axes.get('seed')} step={step}{total}] {shown}{timing}")

    def _timing(self, phase: str, fraction: float, previous: float) -> str:
        """Elapsed time of ``phase`` and its ETA; ``previous`` is the fraction done one
        interval ago (where the phase stood when this process's clock started)."""
        now = time.monotonic()
        start, start_fraction = self.clocks.setdefault(phase, (self.last_line, max(previous, 0)))
        self.last_line = now
        elapsed, gained = now - start, fraction - start_fraction
        eta = elapsed / gained * (1 - fraction) if gained > 0 else None
        text = f" | {_duration(elapsed)} elapsed"
        return text + (f", ETA {_duration(eta)}" if eta is not None else "")

    def _print(self, line: str) -> None:
        # Through tqdm, so that a progress bar on the same terminal is redrawn below it.
        tqdm.write(line, file=self.stream)

    def log_table(self, name, columns, rows, **axes) -> None:
        return None  # tables go to the files and W&B, not the terminal

    def log_images(self, images) -> None:
        return None  # the images are files in the run directory already

    def log_artifact(self, path, name, kind) -> None:
        return None

    def close(self) -> None:
        return None


def probe_line(metrics: dict[str, float]) -> str:
    """The probes of :mod:`learnreg.eval.probes` as one readable console line."""
    text = (
        f"one step lowers the meta-objective by {metrics['meta/one_step_gain']:.4g} "
        f"(task loss: {metrics['meta/one_step_gain_task_loss']:.4g})"
    )
    for key, value in metrics.items():
        if key.startswith("meta/val_") and not key.endswith("_task_loss"):
            _, metric, steps = key.rsplit("_", 2)
            reference = metrics.get(f"{key}_task_loss", float("nan"))
            text += f"; val {metric} after {steps} steps {value:.4g} (task loss: {reference:.4g})"
    return text


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class MultiLogger:
    """Fans every call out to several backends."""

    def __init__(self, *loggers: Any):
        self.loggers = [lg for lg in loggers if lg is not None]

    def log(self, metrics: dict[str, float], **axes: int) -> None:
        for lg in self.loggers:
            lg.log(dict(metrics), **dict(axes))

    def log_table(self, name, columns, rows, **axes) -> None:
        for lg in self.loggers:
            if hasattr(lg, "log_table"):  # loggers written before tables existed skip them
                lg.log_table(name, columns, rows, **dict(axes))

    def log_images(self, images) -> None:
        for lg in self.loggers:
            lg.log_images(images)

    def log_artifact(self, path, name, kind) -> None:
        for lg in self.loggers:
            lg.log_artifact(path, name, kind)

    def log_summary(self, summary: dict) -> None:
        for lg in self.loggers:
            if hasattr(lg, "log_summary"):  # the backends with a run summary (W&B)
                lg.log_summary(summary)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()

    def find(self, cls):
        return next((lg for lg in self.loggers if isinstance(lg, cls)), None)


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for _ in f)
