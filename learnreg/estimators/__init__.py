"""Estimators: how meta-parameters move (truncated unrolls, evolution strategies, implicit
differentiation, evolutionary search)."""

from learnreg.estimators.base import Estimate, Estimator, MetaContext, derive_seed
from learnreg.estimators.es import TruncatedES
from learnreg.estimators.evaluators.backends import (
    Evaluator,
    ProcessPoolEvaluator,
    RayEvaluator,
    SerialEvaluator,
    VmapEvaluator,
)
from learnreg.estimators.evolution import Evolution
from learnreg.estimators.implicit import ImplicitProximal
from learnreg.estimators.pes import PES
from learnreg.estimators.searchers import CMAES, Searcher
from learnreg.estimators.unroll import TruncatedUnroll

__all__ = [
    "Estimate",
    "Estimator",
    "MetaContext",
    "derive_seed",
    "TruncatedUnroll",
    "ImplicitProximal",
    "PES",
    "TruncatedES",
    "Evolution",
    "Searcher",
    "CMAES",
    "Evaluator",
    "VmapEvaluator",
    "SerialEvaluator",
    "ProcessPoolEvaluator",
    "RayEvaluator",
]
