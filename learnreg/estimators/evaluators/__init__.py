"""Evaluators: how a population of candidates gets its fitness (vmap, processes, Ray)."""

from learnreg.estimators.evaluators.fitness import (
    Evaluation,
    FitnessProblem,
    LocalSearch,
    evaluate_group,
)
from learnreg.estimators.evaluators.population import Population

__all__ = ["Evaluation", "FitnessProblem", "LocalSearch", "Population", "evaluate_group"]
