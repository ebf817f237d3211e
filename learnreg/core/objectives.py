"""Meta-objectives: what the meta-parameters are judged by after (part of) an inner run.

Contract: ``objective(model, state, batch, task) -> scalar``, differentiable with respect
to ``state.params`` when the objective is smooth (a truncated unroll backpropagates
through it). Error rates are not differentiable: use them for evolutionary search.
Teacher objectives (SAM, GSAM, GAM) live in :mod:`learnreg.optim.teachers`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from learnreg.core.inner import Batch, InnerState, forward
from learnreg.registry import register


def task_loss(pred: Tensor, target: Tensor, kind: str) -> Tensor:
    """The task's natural loss: cross-entropy on logits, or mean squared error."""
    if kind == "classification":
        return F.cross_entropy(pred, target)
    return F.mse_loss(pred, target)


class Objective(nn.Module):
    """Base class; subclasses implement ``forward(model, state, batch, task)``.

    Attributes:
        differentiable: whether a gradient estimator may backpropagate through it.
        lower_is_better: the search direction (all built-in objectives are minimized).
    """

    differentiable = True
    lower_is_better = True


@register("objective", "task_loss")
class TaskLoss(Objective):
    """Validation loss under the task's own loss (cross-entropy or MSE).

    Args:
        loss: ``auto`` (cross-entropy for classification, MSE for regression), ``ce`` or ``mse``.
    """

    def __init__(self, loss: Literal["auto", "ce", "mse"] = "auto"):
        super().__init__()
        self.loss = loss

    def forward(self, model: nn.Module, state: InnerState, batch: Batch, task) -> Tensor:
        x, y = batch
        kind = (
            task.kind
            if self.loss == "auto"
            else ("classification" if self.loss == "ce" else "regression")
        )
        return task_loss(forward(model, state, x), y, kind)


@register("objective", "task_error")
class TaskError(Objective):
    """Validation error rate (classification) or MSE (regression); not differentiable."""

    differentiable = False

    def forward(self, model: nn.Module, state: InnerState, batch: Batch, task) -> Tensor:
        x, y = batch
        with torch.no_grad():
            pred = forward(model, state, x)
            if task.kind == "classification":
                return (pred.argmax(-1) != y).float().mean()
            return F.mse_loss(pred, y)
