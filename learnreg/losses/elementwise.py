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

from collections.abc import Hashable

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

    #: the name of the one parameter tensor :meth:`elementwise_at` takes in place of the
    #: module's own (None: the class does not evaluate members together)
    population_parameter: str | None = None

    def population_key(self) -> Hashable | None:
        """Losses with one (non-None) key differ only in their ``population_parameter``
        and are evaluated as one group by :meth:`population_values` (the default: none)."""
        return None

    def elementwise_at(self, values: Tensor, target: Tensor, prediction: Tensor) -> Tensor:
        """:meth:`elementwise` with ``values`` in place of the ``population_parameter``;
        ``values`` may carry leading dimensions that broadcast against ``prediction``'s."""
        raise NotImplementedError

    @staticmethod
    def population_values(losses: list, preds: Tensor, target: Tensor) -> Tensor:
        """Each loss on its own slice of ``preds`` (``(P, N, ...)``), shape ``(P,)``.

        Elementwise losses of one kind share the batch's one-hot targets and softmax (one
        each for the population, not one per candidate): the hook a population of
        candidates is evaluated through (:mod:`learnreg.estimators.evaluators`). Losses
        with one :meth:`population_key` (TaylorGLO's coefficient vectors, trees of one
        expression) are one evaluation at their stacked parameters, broadcast over their
        slices, instead of one per member: a handful of operations for the group rather
        than a Python evaluation of each member."""
        first = losses[0]
        if not all(isinstance(x, ElementwiseLoss) and x.kind == first.kind for x in losses):
            return torch.stack([loss(p, target) for loss, p in zip(losses, preds)])
        targets, elements = first.elements(preds, target)
        groups: dict = {}
        for i, loss in enumerate(losses):
            key = loss.population_key()
            groups.setdefault(i if key is None else (type(loss), key), []).append(i)
        if len(groups) == len(losses):  # nothing to share
            return torch.stack(
                [x.reduce(x.elementwise(targets, e)) for x, e in zip(losses, elements)]
            )
        # members sorted by group (one gather), each group a contiguous slice
        order = [i for members in groups.values() for i in members]
        identity = order == list(range(len(losses)))
        if not identity:
            elements = elements.index_select(0, torch.tensor(order, device=elements.device))
        parts, start = [], 0
        for members in groups.values():
            head, part = losses[members[0]], elements[start : start + len(members)]
            start += len(members)
            if len(members) == 1:
                parts.append(head.reduce(head.elementwise(targets, part[0])).reshape(1))
                continue
            values = torch.stack([getattr(losses[i], head.population_parameter) for i in members])
            # (G, *shape) -> (G, 1, ..., *shape): one leading entry per member's slice
            values = values.reshape(len(members), *[1] * (part.dim() - 1), *values.shape[1:])
            parts.append(head.reduce(head.elementwise_at(values, targets, part)))
        values = torch.cat(parts)
        if identity:
            return values
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return values.index_select(0, inverse.to(values.device))

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
