"""The optimizer role: fixed torchopt optimizers and learned update rules."""

from learnreg.optimizers import fixed
from learnreg.optimizers.base import OptimizerRole, TorchoptOptimizer
from learnreg.optimizers.fixed import SGD, Adam

__all__ = ["fixed", "OptimizerRole", "TorchoptOptimizer", "SGD", "Adam"]
