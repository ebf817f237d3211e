"""NPBML's learned loss: the task's own loss plus a learned term that starts at zero.

``M(ŷ, y) = task_loss(ŷ, y) + N_φ(ŷ, y)`` with ``N_φ`` the per-class loss network of
:class:`~learnreg.losses.neural.NeuralLoss` (no biases, as in ML3: a constant added to a
loss has no gradient) whose output layer is zero-initialized, so the
learned loss begins as cross-entropy (or MSE) exactly and meta-training only has to learn
the correction. With ``film``, the network's first hidden layer is modulated by a FiLM
generator fed with that layer's statistics over the batch (the support set), which makes
the loss task-adaptive; the generator also starts at zero.

References:
    Raymond et al., "Meta-Learning Neural Procedural Biases" (NPBML, arXiv 2406.07983);
    Bechtle et al., "Meta Learning via Learned Loss" (ML3, arXiv 1906.05374).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from learnreg.core.objectives import task_loss
from learnreg.losses.base import LossRole, check_pair
from learnreg.losses.neural import NeuralLoss
from learnreg.registry import register


@register("loss", "task_plus_learned")
class TaskPlusLearned(LossRole):
    """Task loss plus a learned correction (zero at initialization).

    Args:
        kind: ``classification`` or ``regression`` (injected).
        num_classes: classes, or regression outputs (injected).
        hidden: hidden widths of the correction network.
        activation: its activation (see :class:`NeuralLoss`).
        film: modulate its first hidden layer with batch statistics (task-adaptive).
    """

    def __init__(
        self,
        kind: Literal["classification", "regression"] = "classification",
        num_classes: int = 10,
        hidden: tuple[int, ...] | list[int] = (50, 50),
        activation: Literal["relu", "smooth_leaky_relu", "tanh", "softplus", "elu"] = (
            "smooth_leaky_relu"
        ),
        film: bool = False,
    ):
        super().__init__()
        self.kind = kind
        self.learned = NeuralLoss(kind, num_classes, hidden, activation, output="none")
        nn.init.zeros_(self.learned.net[-1].weight)
        width = hidden[0]
        self.film = nn.Linear(2 * width, 2 * width) if film else None
        if self.film is not None:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def correction(self, pred: Tensor, target: Tensor) -> Tensor:
        """The learned term alone (batch mean)."""
        if self.film is None:
            return self.learned(pred, target)
        net = self.learned.net
        h = net[:2](self.learned.pairs(pred, target))  # (N, C, width): first hidden layer
        stats = torch.cat([h.mean((0, 1)), h.std((0, 1), unbiased=False)])
        gamma, beta = self.film(stats).chunk(2)
        return net[2:]((1 + gamma) * h + beta).squeeze(-1).sum(-1).mean()

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        check_pair(pred, target, self.kind)
        return task_loss(pred, target, self.kind) + self.correction(pred, target)
