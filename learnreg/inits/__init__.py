"""The init role: random (fixed), MAML's learned θ0, and task-conditioned FiLM."""

from learnreg.inits import film, learned, random
from learnreg.inits.base import InitRole
from learnreg.inits.film import FiLMInit
from learnreg.inits.learned import LearnedInit
from learnreg.inits.random import RandomInit

__all__ = ["film", "learned", "random", "InitRole", "FiLMInit", "LearnedInit", "RandomInit"]
