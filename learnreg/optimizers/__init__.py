"""The optimizer role: fixed torchopt optimizers and learned update rules."""

from learnreg.optimizers import fixed, precond
from learnreg.optimizers.base import OptimizerRole, TorchoptOptimizer
from learnreg.optimizers.fixed import SGD, Adam
from learnreg.optimizers.flat import FlatRule
from learnreg.optimizers.learned_lr import LearnedLR
from learnreg.optimizers.lstm import LSTMRule
from learnreg.optimizers.meta_sgd import MetaSGD
from learnreg.optimizers.mlp import MLPRule
from learnreg.optimizers.precond import PreconditionedSGD
from learnreg.optimizers.schedule import ScheduleSGD

__all__ = [
    "fixed",
    "precond",
    "OptimizerRole",
    "TorchoptOptimizer",
    "SGD",
    "Adam",
    "PreconditionedSGD",
    "FlatRule",
    "LearnedLR",
    "LSTMRule",
    "MLPRule",
    "MetaSGD",
    "ScheduleSGD",
]
