"""Hand-designed optimizers for the optimizer role, from torchopt's functional API."""

from __future__ import annotations

import torchopt

from learnreg.optimizers.base import TorchoptOptimizer
from learnreg.registry import register


@register("optimizer", "sgd")
class SGD(TorchoptOptimizer):
    """SGD with optional (Nesterov) momentum and L2 weight decay (torchopt.sgd).

    Coordinatewise (``elementwise``): on parameters stacked over a population it is every
    member's own update in one call.

    Args:
        lr: learning rate.
        momentum: heavy-ball momentum.
        nesterov: Nesterov momentum.
        weight_decay: L2 coefficient added to the gradient.
    """

    elementwise = True

    def __init__(
        self,
        lr: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ):
        super().__init__(
            torchopt.sgd(lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
        )
        self.lr = lr


@register("optimizer", "adam")
class Adam(TorchoptOptimizer):
    """Adam (torchopt.adam); ``weight_decay`` is L2 added to the gradient, as in torch.optim.Adam.

    Args:
        lr: learning rate.
        betas: first and second moment decays.
        eps: denominator epsilon.
        weight_decay: L2 coefficient.
        eps_root: added under the square root, ``√(v + eps_root)``. Set it (e.g. 1e-16)
            when unrolling through Adam on models whose gradients can be exactly zero: the
            backward of ``√v`` at ``v = 0`` is infinite and would make meta-gradients NaN.
    """

    elementwise = True  # coordinatewise, as SGD

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] | list[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        eps_root: float = 0.0,
    ):
        super().__init__(
            torchopt.adam(
                lr, betas=tuple(betas), eps=eps, eps_root=eps_root, weight_decay=weight_decay
            )
        )
        self.lr = lr
