"""Searchers: black-box proposal distributions over a role's candidates (CMA-ES here; the
loss role's genetic programming lives in :mod:`learnreg.losses.gp`)."""

from learnreg.estimators.searchers.base import Searcher
from learnreg.estimators.searchers.cmaes import CMAES

__all__ = ["Searcher", "CMAES"]
