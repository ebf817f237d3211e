"""Truncated antithetic evolution strategies.

Each window, both copies of a pair start from one shared inner state, run ``window``
steps at ``θ ± ε`` and the estimate is ``g = 1 / (2σ² P) · Σ_i ε_i · (L⁺_i − L⁻_i)``: the
gradient of the Gaussian-smoothed window meta-loss, with no backward pass and no
requirement that the inner loop be differentiable (a step function, a non-smooth
objective). Like truncated backpropagation it sees only the window, so it shares its
short-horizon bias; :class:`~learnreg.estimators.pes.PES` removes it.

References:
    Salimans et al., "Evolution Strategies as a Scalable Alternative to Reinforcement
    Learning", arXiv 1703.03864 (antithetic sampling, Eq. 2).
    Metz et al., "Understanding and correcting pathologies in the training of learned
    optimizers", ICML 2019 (arXiv 1810.10180): truncated ES for learned optimizers.
"""

from __future__ import annotations

from torch import Tensor

from learnreg.estimators.antithetic import AntitheticPairs
from learnreg.registry import register


@register("estimator", "es")
class TruncatedES(AntitheticPairs):
    """Antithetic truncated ES over every role's tensor meta-parameters.

    A pair's inner run is persistent up to ``horizon``; after each window it continues
    from the positive copy's state, which the next window's two copies both start from
    (learned_optimization's ``TruncatedES`` does the same).

    Args:
        sigma: standard deviation of each perturbation coordinate.
        pairs: antithetic pairs per meta-step, over all processes.
        window: inner steps per meta-step (the truncation).
        horizon: inner steps after which the runs are replaced (a multiple of ``window``).
        meta_batch: tasks per horizon, the pairs spread evenly over them (None: one each).
        objective_batch: ``train`` or ``val``.
        average: average the meta-loss over the window's steps.
        vmap: vectorize the copies of a task (False: a loop; same estimate).
    """

    name = "es"

    def directions(self, eps: Tensor) -> Tensor:
        return eps

    def after_window(self) -> None:
        for pos, neg in zip(self.pos, self.neg):
            neg.state = pos.state
