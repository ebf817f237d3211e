"""Persistent evolution strategies: an unbiased meta-gradient from truncated unrolls.

Truncated backpropagation and truncated ES see only the last window of an inner run, so
they ignore how the meta-parameters shaped the state the window starts from: their
estimates are biased towards short-horizon behaviour (a smaller learning rate, Wu et al.
2018). PES keeps each antithetic pair's two copies running on their own states for the
whole horizon, and weights each window's loss difference by the sum ``ξ_i`` of every
perturbation the pair has received since its runs began::

    ξ_i ← ξ_i + ε_i,      g = 1 / (2σ² P) · Σ_i ξ_i · (L(θ + ε_i) − L(θ − ε_i))

With a fixed ``θ`` the estimates of one horizon's windows average, in expectation, to the
gradient of the (Gaussian-smoothed) meta-loss averaged over the whole horizon, the
full-unroll gradient, at the memory of one window and with no backward pass.

References:
    Vicol, Metz & Sohl-Dickstein, "Unbiased Gradient Estimation in Unrolled Computation
    Graphs with Persistent Evolution Strategies", ICML 2021 (arXiv 2112.13835):
    antithetic PES.
    Wu, Ren, Liao & Grosse, "Understanding Short-Horizon Bias in Stochastic
    Meta-Optimization", ICLR 2018 (arXiv 1803.02021).
"""

from __future__ import annotations

from torch import Tensor

from learnreg.estimators.antithetic import AntitheticPairs
from learnreg.registry import register


@register("estimator", "pes")
class PES(AntitheticPairs):
    """Antithetic persistent ES over every role's tensor meta-parameters.

    Each of the ``pairs`` pairs runs two inner runs of its own, at ``θ + ε`` and ``θ − ε``
    with a fresh ``ε ~ N(0, σ²I)`` every window, and keeps ``ξ = Σ ε`` (part of the
    checkpoint) until the runs are replaced at the horizon. No graph is built: the cost
    of a meta-step is ``2 · pairs · window`` inner steps, vmapped per task.

    Args:
        sigma: standard deviation of each perturbation coordinate (in the meta-parameters'
            own units: 0.01 for a learned optimizer's weights).
        pairs: antithetic pairs per meta-step, over all processes (each rank holds
            ``pairs / world`` of them).
        window: inner steps per meta-step.
        horizon: inner steps after which the runs and ``ξ`` restart (a multiple of
            ``window``); the horizon the estimate is unbiased for.
        meta_batch: tasks per horizon, the pairs spread evenly over them (None: a task of
            its own per pair, as learned_optimization's ``TruncatedPES`` does).
        objective_batch: ``train`` or ``val`` (see :class:`TruncatedUnroll`).
        average: average the meta-loss over the window's steps (the L2L meta-loss).
        vmap: vectorize the copies of a task (False: a loop; same estimate).
    """

    name = "pes"

    def directions(self, eps: Tensor) -> Tensor:
        self.accumulated = eps if self.accumulated is None else self.accumulated + eps
        return self.accumulated
