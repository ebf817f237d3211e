"""What every estimator sees (a :class:`MetaContext`) and what it must provide.

An estimator moves meta-parameters; it does not know which bias they belong to. It gets
the task family, the biases, the meta-objective and (for gradient estimators) the outer
optimizer through the context, and creates inner runs with :meth:`MetaContext.new_run`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from learnreg.core.bias import Biases
from learnreg.core.inner import InnerRun, init_state
from learnreg.core.outer import OuterOptimizer


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any printable parts (same parts, same seed, every run)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass
class MetaContext:
    """The pieces of a meta-training run that estimators use.

    Attributes:
        family: the :class:`~learnreg.core.task.TaskFamily` tasks are drawn from.
        biases: the roles being learned.
        objective: the meta-objective.
        outer: the outer optimizer (None for estimators that need none).
        seed: the run's seed; every inner run's seed derives from it.
        device: where tasks, models and states live.
        logger: the run's logger (None: none), for estimators that log more than the
            metrics their ``step`` returns (a search's population table).
    """

    family: Any
    biases: Biases
    objective: Any
    outer: OuterOptimizer | None
    seed: int
    device: torch.device
    logger: Any = None

    def new_run(self, phase: str, index: int, task=None) -> InnerRun:
        """A fresh inner run: the ``index``-th task of the family (unless ``task`` is
        given) and a model seeded by ``(seed, phase, index)``."""
        if task is None:
            task = self.family.sample(index).to(self.device)
        seed = derive_seed(self.seed, phase, index)
        model = task.build_model(seed).to(self.device)
        state = init_state(model, self.biases.init, self.biases.optimizer, task)
        return InnerRun(task, model, state, seed, index)


class Estimator:
    """Base class. ``step(ctx)`` performs one meta-step and returns scalar metrics."""

    #: whether the estimator needs ``ctx.outer`` (gradient-based estimators do).
    needs_outer = True

    def step(self, ctx: MetaContext) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict, ctx: MetaContext) -> None:
        return None

    def close(self) -> None:
        """Release what the estimator started (worker pools, a Ray instance); called when
        meta-training ends. A later :meth:`step` may start them again."""
        return None

    def export(self, directory, ctx: MetaContext) -> None:
        """Write estimator-specific outputs into the run's ``learned/`` folder (optional)."""
        return None
