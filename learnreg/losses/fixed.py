"""Hand-designed losses: cross-entropy, MSE, label smoothing and SparseLSR."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from learnreg.losses.base import LossRole, check_pair, log_one_minus_target_prob
from learnreg.registry import register


@register("loss", "ce")
class CrossEntropy(LossRole):
    """Cross-entropy on logits (mean over the batch)."""

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        check_pair(pred, target, "classification")
        return F.cross_entropy(pred, target)


@register("loss", "mse")
class MSE(LossRole):
    """Mean squared error."""

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        check_pair(pred, target, "regression")
        return F.mse_loss(pred, target)


@register("loss", "label_smoothing")
class LabelSmoothing(LossRole):
    """Cross-entropy against ``(1 - smoothing) * onehot + smoothing / C`` targets.

    Args:
        smoothing: the smoothing mass xi in [0, 1).
    """

    def __init__(self, smoothing: float = 0.1):
        super().__init__()
        self.smoothing = smoothing

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        check_pair(pred, target, "classification")
        return F.cross_entropy(pred, target, label_smoothing=self.smoothing)


@register("loss", "sparse_lsr")
class SparseLSR(LossRole):
    """Sparse label smoothing: label smoothing computed from the target logit alone.

    ``-[(1 - xi + xi/C) log p_t + (xi (C-1)/C) log((1 - p_t)/(C - 1))]``, which has the
    same gradient on the target logit as full label smoothing (``p_t - (1 - xi + xi/C)``)
    but touches only the target column. The reference code adds the second term; this
    follows the equation (Raymond, 2024, arXiv 2406.09713).

    Args:
        smoothing: xi in [0, 1).
    """

    def __init__(self, smoothing: float = 0.1):
        super().__init__()
        self.smoothing = smoothing

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        check_pair(pred, target, "classification")
        c = pred.shape[-1]
        xi = self.smoothing
        log_pt = pred.log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        loss = (1 - xi + xi / c) * log_pt
        if c > 1:  # with one class there is no mass to smooth onto
            log_rest = log_one_minus_target_prob(pred, target) - math.log(c - 1)
            loss = loss + (xi * (c - 1) / c) * log_rest
        return -loss.mean()
