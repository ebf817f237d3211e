"""The neural loss network of ML3 and AdaLFL.

A small MLP maps one (prediction, target) pair to a loss value. For classification the
pair is (softmax probability, target probability) of one class; the same network is
applied to every class and the per-class terms are aggregated over classes (ML3: summed;
AdaLFL: averaged) and reduced over the batch. For regression it is (prediction, target) of
each output.

Because the network is shared across classes, a loss meta-trained on C classes is defined
for any class count: with mean aggregation its value keeps the same scale. Applying it to
a different count warns once (the loss never saw that count during meta-training).

References:
    Bechtle et al., "Meta Learning via Learned Loss", ICPR 2021 (arXiv 1906.05374).
    Raymond et al., "Meta-Learning Adaptive Loss Functions", TMLR 2025 (arXiv 2301.13247).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from learnreg.errors import ConfigError
from learnreg.losses.base import LossRole, check_pair, class_targets, reduce_batch, warn_class_count
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


#: Weight initialisations of the linear layers (biases, when present, start at zero except
#: under ``torch_default``, which keeps PyTorch's own bias init too).
INITS = {
    "torch_default": None,  # nn.Linear's Kaiming-uniform(a=sqrt 5): AdaLFL author's code
    "xavier_uniform": nn.init.xavier_uniform_,  # ML3's official code
    "kaiming_normal": nn.init.kaiming_normal_,  # EvoMAL's re-implementation of ML3
}


@register("loss", "neural")
class NeuralLoss(LossRole):
    """Learned loss network shared across classes (ML3 / AdaLFL).

    Args:
        kind: ``classification`` or ``regression`` (injected from the task).
        num_classes: classes (or regression outputs) it is meta-trained on (injected).
        hidden: hidden widths (50, 50 in both papers).
        activation: ``relu`` (ML3) or ``smooth_leaky_relu`` (AdaLFL).
        output: ``softplus`` keeps each term non-negative (ML3); ``none`` leaves the last
            layer linear (AdaLFL: a Softplus output can saturate to an exactly flat,
            "dead" loss).
        bias: linear layers with biases (the papers' per-class networks use none).
        gamma, beta: smooth leaky ReLU parameters (AdaLFL: gamma 0.25; beta 2 in the
            author's later code, 3 here, see docs/fidelity.md).
        aggregation: ``sum`` over classes (ML3, EvoMAL's code) or ``mean`` (AdaLFL's
            code; the loss scale no longer grows with the class count).
        init: ``torch_default``, ``xavier_uniform`` or ``kaiming_normal`` (see :data:`INITS`).
        reduction: over the batch, ``mean`` (default), ``sum`` or ``none`` (per example).
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
        aggregation: Literal["sum", "mean"] = "sum",
        init: Literal["torch_default", "xavier_uniform", "kaiming_normal"] = "torch_default",
        reduction: Literal["mean", "sum", "none"] = "mean",
    ):
        super().__init__()
        for name, value, choices in (
            ("output", output, ("softplus", "none")),
            ("aggregation", aggregation, ("sum", "mean")),
            ("init", init, tuple(INITS)),
            ("reduction", reduction, ("mean", "sum", "none")),
        ):
            if value not in choices:
                raise ConfigError(f"loss.{name}={value!r} is not one of {', '.join(choices)}")
        self.kind, self.num_classes = kind, num_classes
        self.aggregation, self.reduction = aggregation, reduction
        layers: list[nn.Module] = []
        width = 2
        for h in hidden:
            layers += [nn.Linear(width, h, bias=bias), _activation(activation, gamma, beta)]
            width = h
        layers.append(nn.Linear(width, 1, bias=bias))
        if output == "softplus":
            layers.append(nn.Softplus())
        self.net = nn.Sequential(*layers)
        if INITS[init] is not None:
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    INITS[init](layer.weight)
                    if layer.bias is not None:
                        nn.init.zeros_(layer.bias)

    def pairs(self, pred: Tensor, target: Tensor) -> Tensor:
        """The network's inputs, shape (N, C, 2)."""
        if self.kind != "classification":
            check_pair(pred, target, self.kind)
            return torch.stack([pred, target], -1)
        targets = class_targets(pred, target)
        warn_class_count(self, pred.shape[-1], self.aggregation == "sum")
        return torch.stack([pred.softmax(-1), targets], -1)

    def terms(self, pred: Tensor, target: Tensor) -> Tensor:
        """Per-class (per-output) terms of every example, shape (N, C)."""
        return self.net(self.pairs(pred, target)).squeeze(-1)

    def pointwise(self, pred: Tensor, target: Tensor) -> Tensor:
        """Per-example loss (N,): the terms aggregated over classes."""
        terms = self.terms(pred, target)
        return terms.mean(-1) if self.aggregation == "mean" else terms.sum(-1)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return reduce_batch(self.pointwise(pred, target), self.reduction)

    def curve(self, p: Tensor, y: float = 1.0) -> Tensor:
        """The network on a grid of (prediction, target=y) pairs, for plots of its shape."""
        return self.net(torch.stack([p, torch.full_like(p, y)], -1)).squeeze(-1)

    def describe(self) -> str:
        """What the network is and which class counts it applies to."""
        layers = [type(m).__name__ for m in self.net]
        text = f"neural loss ({self.kind}): {' -> '.join(layers)}, {self.aggregation} over classes"
        if self.kind == "classification":
            text += (
                f"\nmeta-trained on {self.num_classes} classes; the per-class network is "
                "shared, so it applies to any class count (another count warns: it was "
                "never seen in meta-training"
                + (
                    "; the sum over classes changes the scale)"
                    if self.aggregation == "sum"
                    else ")"
                )
            )
        return text
