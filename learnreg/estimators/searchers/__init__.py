"""Searchers: black-box proposal distributions over loss candidates (CMA-ES, DEAP GP)."""

from learnreg.estimators.searchers.base import Searcher
from learnreg.estimators.searchers.cmaes import CMAES
from learnreg.estimators.searchers.gp import GeneticProgramming

__all__ = ["Searcher", "CMAES", "GeneticProgramming"]
