"""The optimizer role: fixed torchopt optimizers and learned update rules."""

from learnreg.optimizers import fixed, precond
from learnreg.optimizers.base import OptimizerRole, TorchoptOptimizer
from learnreg.optimizers.fixed import SGD, Adam
from learnreg.optimizers.precond import PreconditionedSGD

__all__ = [
    "fixed",
    "precond",
    "OptimizerRole",
    "TorchoptOptimizer",
    "SGD",
    "Adam",
    "PreconditionedSGD",
]
