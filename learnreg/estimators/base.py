"""The estimator contract, re-exported from :mod:`learnreg.core.estimator` (where it lives,
so that the core imports nothing built on it)."""

from learnreg.core.estimator import Estimate, Estimator, MetaContext, derive_seed, meta_step

__all__ = ["Estimate", "Estimator", "MetaContext", "derive_seed", "meta_step"]
