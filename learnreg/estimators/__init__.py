"""Estimators: how meta-parameters move (truncated unrolls, evolutionary search)."""

from learnreg.estimators.base import Estimator, MetaContext, derive_seed
from learnreg.estimators.unroll import TruncatedUnroll

__all__ = ["Estimator", "MetaContext", "derive_seed", "TruncatedUnroll"]
