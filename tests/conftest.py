"""Shared fixtures: tiny float64 tasks for exact gradient checks, quiet W&B, one thread."""

from __future__ import annotations

import contextlib
import os
import tempfile

import pytest
import torch

from learnreg.core.task import Split, Task
from learnreg.models import MLP

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Modules trusted with --import are remembered per user; tests keep their own list.
os.environ.setdefault("LEARNREG_HOME", tempfile.mkdtemp(prefix="learnreg-home-"))
# Two xdist workers on two cores: one intra-op thread each avoids oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def tiny_task(
    kind: str = "classification",
    n: int = 48,
    d: int = 4,
    c: int = 3,
    hidden=(6,),
    seed: int = 0,
    dtype=torch.float64,
) -> Task:
    """A small random task whose models are float64 MLPs (for finite differences)."""
    g = torch.Generator().manual_seed(seed)

    def split(m: int) -> Split:
        x = torch.randn(m, d, generator=g, dtype=dtype)
        if kind == "classification":
            return Split(x, torch.randint(0, c, (m,), generator=g))
        return Split(x, torch.randn(m, c, generator=g, dtype=dtype))

    def model_fn():
        return MLP((d,), c, hidden=hidden, activation="tanh").to(dtype)

    return Task(
        "tiny",
        kind,
        split(n),
        split(n // 2),
        split(n // 2),
        num_classes=c,
        batch_size=8,
        model_fn=model_fn,
    )


@pytest.fixture
def task():
    return tiny_task()


@pytest.fixture
def regression_task():
    return tiny_task("regression", c=2)


class Interrupt(Exception):
    """Stands for a run killed mid-way (the SIGKILL tests kill real processes)."""


@contextlib.contextmanager
def interrupted_at(cls, method: str, call: int):
    """Within the block, ``cls.method`` raises :class:`Interrupt` on its ``call``-th call."""
    original, calls = getattr(cls, method), 0

    def failing(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == call:
            raise Interrupt
        return original(self, *args, **kwargs)

    setattr(cls, method, failing)
    try:
        yield
    finally:
        setattr(cls, method, original)
