"""The init role: random (fixed) and learned initializations."""

from learnreg.inits import random
from learnreg.inits.base import InitRole
from learnreg.inits.random import RandomInit

__all__ = ["random", "InitRole", "RandomInit"]
