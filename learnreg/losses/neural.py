"""The neural loss network of ML3 and AdaLFL.

A small MLP maps one (prediction, target) pair to a loss value. For classification the
pair is (softmax probability, one-hot target) of one class; the same network is applied to
every class and the results are summed over classes and averaged over the batch. For
regression it is (prediction, target) of each output.

References:
    Bechtle et al., "Meta Learning via Learned Loss", ICPR 2021 (arXiv 1906.05374).
    Raymond et al., "Meta-Learning Adaptive Loss Functions", TMLR 2025 (arXiv 2301.13247).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from learnreg.losses.base import LossRole, check_pair, probs_and_onehot
from learnreg.registry import register


class SmoothLeakyReLU(nn.Module):
    """``gamma * x + (1 - gamma) * softplus(x; beta)`` (AdaLFL's activation)."""

    def __init__(self, gamma: float = 0.25, beta: float = 3.0):
        super().__init__()
        self.gamma, self.beta = gamma, beta

    def forward(self, x: Tensor) -> Tensor:
        return self.gamma * x + (1 - self.gamma) * F.softplus(x, beta=self.beta)


def _activation(name: str, gamma: float, beta: float) -> nn.Module:
    if name == "smooth_leaky_relu":
        return SmoothLeakyReLU(gamma, beta)
    return {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU}[name]()


@register("loss", "neural")
class NeuralLoss(LossRole):
    """Learned loss network shared across classes (ML3 / AdaLFL).

    Args:
        kind: ``classification`` or ``regression`` (injected from the task).
        num_classes: classes, or regression outputs (injected).
        hidden: hidden widths (50, 50 in both papers).
        activation: ``relu`` (ML3) or ``smooth_leaky_relu`` (AdaLFL).
        output: ``softplus`` keeps the loss non-negative (both papers); ``none`` for raw.
        bias: linear layers with biases (the papers use none).
        gamma, beta: smooth leaky ReLU parameters (AdaLFL: gamma 0.25, beta in [2, 5];
            3 is our default, the middle of that range).
    """

    def __init__(
        self,
        kind: Literal["classification", "regression"] = "classification",
        num_classes: int = 10,
        hidden: tuple[int, ...] | list[int] = (50, 50),
        activation: Literal["relu", "smooth_leaky_relu", "tanh", "softplus", "elu"] = "relu",
        output: Literal["softplus", "none"] = "softplus",
        bias: bool = False,
        gamma: float = 0.25,
        beta: float = 3.0,
    ):
        super().__init__()
        self.kind, self.num_classes = kind, num_classes
        layers: list[nn.Module] = []
        width = 2
        for h in hidden:
            layers += [nn.Linear(width, h, bias=bias), _activation(activation, gamma, beta)]
            width = h
        layers.append(nn.Linear(width, 1, bias=bias))
        if output == "softplus":
            layers.append(nn.Softplus())
        self.net = nn.Sequential(*layers)

    def pairs(self, pred: Tensor, target: Tensor) -> Tensor:
        """The network's inputs, shape (N, C, 2)."""
        check_pair(
            pred, target, self.kind, self.num_classes if self.kind == "classification" else None
        )
        if self.kind == "classification":
            p, onehot = probs_and_onehot(pred, target)
            return torch.stack([p, onehot], -1)
        return torch.stack([pred, target], -1)

    def pointwise(self, pred: Tensor, target: Tensor) -> Tensor:
        """Per-example loss (N,)."""
        return self.net(self.pairs(pred, target)).squeeze(-1).sum(-1)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.pointwise(pred, target).mean()

    def curve(self, p: Tensor, y: float = 1.0) -> Tensor:
        """The network on a grid of (prediction, target=y) pairs, for plots of its shape."""
        return self.net(torch.stack([p, torch.full_like(p, y)], -1)).squeeze(-1)
