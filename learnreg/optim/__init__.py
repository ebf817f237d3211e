"""Drop-in ``torch.optim`` optimizers: SAM, GSAM, GAM and the learned optimizer."""

from learnreg.optim.batchnorm import frozen_bn_stats
from learnreg.optim.learned import LearnedOptimizer
from learnreg.optim.perturbed import PerturbedOptimizer
from learnreg.optim.sam import GAM, GSAM, SAM

__all__ = ["frozen_bn_stats", "LearnedOptimizer", "PerturbedOptimizer", "SAM", "GSAM", "GAM"]
