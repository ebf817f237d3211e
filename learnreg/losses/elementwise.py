"""Losses that are a sum over classes (or outputs) of one function of a target element and
a prediction element, averaged over the batch: ``mean_batch Σ_c ℓ(y_c, f(x)_c)``.

The convention of ML3, TaylorGLO and EvoMAL: for classification ``y`` is the one-hot
target and ``f(x)`` the softmax probability; for regression the raw target and prediction.
Subclasses implement ``elementwise(target, prediction)``; the split lets a population of
such losses share the softmax and one-hot of one batch
(:mod:`learnreg.losses.search`) and lets any of them
be plotted over target × prediction (:mod:`learnreg.losses.plot`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from learnreg.losses.base import LossRole, check_pair, class_targets, warn_class_count


class ElementwiseLoss(LossRole):
    """Base class; subclasses set ``kind`` and ``num_classes`` and implement
    :meth:`elementwise`."""

    kind: str
    num_classes: int

    def elementwise(self, target: Tensor, prediction: Tensor) -> Tensor:
        """The loss of each (target, prediction) element (broadcasting)."""
        raise NotImplementedError

    def elements(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """``(target, prediction)`` elements of a batch; ``pred`` may carry leading
        dimensions (a population), ``target`` is the batch's."""
        if self.kind == "classification":
            return F.one_hot(target, pred.shape[-1]).to(pred.dtype), pred.softmax(-1)
        return target, pred

    @staticmethod
    def population_values(losses: list, preds: Tensor, target: Tensor) -> Tensor:
        """Each loss on its own slice of ``preds`` (``(P, N, ...)``), shape ``(P,)``.

        Elementwise losses of one kind share the batch's one-hot targets and softmax (one
        each for the population, not one per candidate): the hook a population of
        different trees is evaluated through (:mod:`learnreg.estimators.evaluators`)."""
        first = losses[0]
        if not all(isinstance(x, ElementwiseLoss) and x.kind == first.kind for x in losses):
            return torch.stack([loss(p, target) for loss, p in zip(losses, preds)])
        targets, elements = first.elements(preds, target)
        return torch.stack([x.reduce(x.elementwise(targets, e)) for x, e in zip(losses, elements)])

    def plot(self, path):
        """Draw the loss over target × prediction into ``path`` (:func:`~learnreg.losses.plot.plot_loss`)."""
        from learnreg.losses.plot import plot_loss

        return plot_loss(self, path)

    def reduce(self, values: Tensor) -> Tensor:
        """Sum over classes/outputs, mean over the batch."""
        return values.sum(-1).mean(-1)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Integer labels or probability / one-hot rows; any class count (one that differs
        from ``num_classes`` warns: the per-class function is shared but was not
        meta-trained on it, and the sum over classes changes the scale)."""
        if self.kind != "classification":
            check_pair(pred, target, self.kind)
            return self.reduce(self.elementwise(target, pred))
        targets = class_targets(pred, target)
        warn_class_count(self, pred.shape[-1], scale_changes=True)
        return self.reduce(self.elementwise(targets, pred.softmax(-1)))
