"""A learned step-size schedule: SGD whose learning rate follows K learned knots.

The learning rate at inner step ``t`` (1 for the first) is
``exp(Σ_k w_k(t) · log_lr_k)``, the piecewise-linear interpolation of ``K`` log learning
rates placed evenly over ``horizon`` steps (``w_k`` are hat functions, so every step
mixes at most two neighbouring knots); after the horizon it stays at the last knot. The
``K`` log learning rates are the only meta-parameters, few enough for a black-box
search (``evolution`` with ``role: optimizer`` and CMA-ES) and smooth enough for a
gradient estimator. Interpolating in log space keeps the rate positive and makes a
knot's effect multiplicative, as step-size schedules are usually read.

It is a coordinatewise :class:`~learnreg.optimizers.flat.FlatRule` whose update does not
depend on the coordinate, so an exported schedule is also a drop-in
``torch.optim.Optimizer`` through :class:`learnreg.optim.LearnedOptimizer`.

References:
    Wu et al., "Understanding Short-Horizon Bias in Stochastic Meta-Optimization"
    (arXiv 1803.02021): learned step-size schedules and why their horizon matters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from learnreg.errors import ConfigError
from learnreg.optimizers.flat import FlatRule
from learnreg.registry import register


@register("optimizer", "schedule_sgd")
class ScheduleSGD(FlatRule):
    """SGD with a learned learning-rate schedule: ``θ ← θ − lr_t · g``.

    Args:
        lr: the initial learning rate of every knot (a constant schedule).
        knots: K, the number of learned log learning rates (1: a learned constant).
        horizon: inner steps the knots span (knot k sits at step ``1 + k·(horizon−1)/(K−1)``);
            later steps use the last knot. Match it to the inner runs the schedule is for.
        log_lrs: initial log learning rates, one per knot (overrides ``lr``; exports use it).
    """

    chunk_size = None  # the update is one multiply: no activations to keep in cache

    def __init__(
        self,
        lr: float = 0.01,
        knots: int = 4,
        horizon: int = 1000,
        log_lrs: list[float] | None = None,
    ):
        super().__init__()
        if knots < 1 or horizon < 1 or not lr > 0:
            raise ConfigError(
                f"schedule_sgd needs knots >= 1, horizon >= 1 and lr > 0; got {knots}, {horizon}, {lr}"
            )
        values = [math.log(lr)] * knots if log_lrs is None else [float(v) for v in log_lrs]
        if len(values) != knots:
            raise ConfigError(
                f"schedule_sgd: {knots} knots need as many log_lrs, got {len(values)}"
            )
        self.knots, self.horizon, self.nominal_lr = knots, horizon, float(lr)
        self.log_lrs = nn.Parameter(torch.tensor(values))

    def lr_at(self, step: Tensor | int) -> Tensor:
        """The learning rate at inner step ``step`` (1 for the first), differentiable in
        the knots and vmappable over them."""
        step = torch.as_tensor(step, device=self.log_lrs.device)
        span = max(self.horizon - 1, 1)
        where = ((step.to(self.log_lrs.dtype) - 1) / span * (self.knots - 1)).clamp(
            0, self.knots - 1
        )
        positions = torch.arange(self.knots, device=self.log_lrs.device, dtype=self.log_lrs.dtype)
        hats = (1 - (where - positions).abs()).clamp(min=0)
        return (hats * self.log_lrs).sum().exp()

    def update(self, grad, param, slots, aux, step, where):
        return -self.weights(self.lr_at(step), grad.dtype) * grad, {}

    def schedule(self, steps: int | None = None) -> list[float]:
        """The learning rate of every step ``1 … steps`` (default: the horizon)."""
        with torch.no_grad():
            return [float(self.lr_at(t)) for t in range(1, (steps or self.horizon) + 1)]

    def describe(self) -> str:
        """The knots as learning rates, e.g. for ``learned/optimizer_formula.txt``."""
        rates = ", ".join(f"{math.exp(v):.4g}" for v in self.log_lrs.detach().tolist())
        return (
            f"SGD, learning rate interpolated in log space between {self.knots} knots "
            f"spread over {self.horizon} steps: [{rates}]"
        )

    def plot(self, path):
        """Draw the learning rate against the inner step into ``path`` (a PNG)."""
        from matplotlib.figure import Figure

        from learnreg.tracking.atomic import save_figure

        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        ax.plot(range(1, self.horizon + 1), self.schedule())
        ax.set_yscale("log")
        ax.set_xlabel("inner step")
        ax.set_ylabel("learning rate")
        return save_figure(fig, path)
