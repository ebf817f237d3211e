"""Evaluators: how a population of candidate losses gets its fitness (vmap, processes, Ray)."""

from learnreg.estimators.evaluators.fitness import (
    Evaluation,
    FitnessProblem,
    LocalSearch,
    evaluate_group,
)

__all__ = ["Evaluation", "FitnessProblem", "LocalSearch", "evaluate_group"]
