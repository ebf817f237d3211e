"""learnreg: meta-learning losses, optimizers and initializations."""

__version__ = "0.1.0"
