"""Dead-loss detection: a learned loss that no longer pushes the prediction.

A classification loss is *dead* above ``p_min`` when its derivative with respect to the
target-class probability vanishes for every ``p >= p_min``: a model whose predictions
reach that range gets no base gradient (and an online loss no meta-gradient), so training
stalls. The derivative is measured on the loss profile of
:func:`~learnreg.eval.loss_shape.loss_profile` (finite differences between its grid
points), relative to its largest value over the whole grid so that the scale of a learned
loss does not matter. The typical cause is a Softplus output layer saturated to zero
after an offline warm-up that only saw freshly initialised models (p ≈ 1/C).

:class:`DeadLossMonitor` runs the check during meta-training and online meta-test and
applies a policy: ``warn``, ``restart`` (restore the last healthy meta-parameters and
outer-optimizer state) or ``stop`` (a :class:`~learnreg.errors.NumericalError`).
"""

from __future__ import annotations

import copy
import warnings

from learnreg.core.bias import is_learned
from learnreg.core.monitors import Monitor, snapshot
from learnreg.errors import ConfigError, NumericalError
from learnreg.eval.loss_shape import loss_profile

POLICIES = ("off", "warn", "restart", "stop")


def loss_slopes(loss, num_classes: int, p_min: float = 0.3) -> dict[str, float]:
    """The largest |∂loss/∂p_target| of a classification loss above ``p_min`` and overall.

    Args:
        loss: the loss role.
        num_classes: classes of its inputs.
        p_min: the lower end of the range checked.

    Returns:
        ``{"slope_above": ..., "slope_peak": ...}`` (finite differences of the profile).
    """
    grid, values = loss_profile(loss, "classification", num_classes)
    slopes = [
        (0.5 * (g0 + g1), abs((v1 - v0) / (g1 - g0)))
        for g0, g1, v0, v1 in zip(grid, grid[1:], values, values[1:])
    ]
    above = [s for mid, s in slopes if mid >= p_min]
    return {"slope_above": max(above, default=0.0), "slope_peak": max(s for _, s in slopes)}


def is_dead(slopes: dict[str, float], rel_tol: float = 1e-3, abs_tol: float = 1e-7) -> bool:
    """Dead when the slope above ``p_min`` is below ``rel_tol`` of the profile's peak slope
    (or below ``abs_tol``: a flat loss). Non-finite slopes are not "dead" (divergence
    has its own handling)."""
    above, peak = slopes["slope_above"], slopes["slope_peak"]
    if above != above or peak != peak:  # NaN
        return False
    return above <= max(abs_tol, rel_tol * peak)


class DeadLossMonitor(Monitor):
    """Checks the learned loss every ``every`` meta-steps (and online inner steps).

    Logs ``meta/dead_loss`` (1 dead, 0 healthy) and ``meta/dead_loss_slope`` (the slope
    above ``p_min`` relative to the peak); on a dead loss warns on the console and applies
    ``policy`` (``warn`` warns when the loss dies, not again while it stays dead).

    Args:
        policy: ``off``, ``warn``, ``restart`` or ``stop``.
        every: meta-steps (and inner steps of online meta-test runs) between checks.
        p_min: the check covers target probabilities ``p >= p_min`` (where a trained
            model's predictions go; 0.3 is above the 1/C of a fresh 10-class model).
        rel_tol: dead when the slope above ``p_min`` is at most this fraction of the peak.
        max_restarts: ``restart`` escalates to ``stop`` after this many restarts.
    """

    def __init__(
        self,
        policy: str = "warn",
        every: int = 50,
        p_min: float = 0.3,
        rel_tol: float = 1e-3,
        max_restarts: int = 3,
    ):
        if policy not in POLICIES:
            raise ConfigError(f"dead_loss.policy={policy!r} is not one of {', '.join(POLICIES)}")
        self.policy, self.every, self.p_min = policy, every, p_min
        self.rel_tol, self.max_restarts = rel_tol, max_restarts
        self.restarts, self.dead = 0, False
        self.healthy: tuple[dict, dict | None] | None = None  # (meta-params, outer state)

    def _applies(self, biases, kind: str) -> bool:
        return self.policy != "off" and kind == "classification" and is_learned(biases.loss)

    def _check(self, biases, outer, num_classes: int, where: str, step: int) -> dict:
        slopes = loss_slopes(biases.loss, num_classes, self.p_min)
        relative = slopes["slope_above"] / slopes["slope_peak"] if slopes["slope_peak"] else 0.0
        metrics = {"meta/dead_loss": 0.0, "meta/dead_loss_slope": relative}
        if not is_dead(slopes, self.rel_tol):
            self.dead = False
            outer_state = copy.deepcopy(outer.state_dict()) if outer is not None else None
            self.healthy = (snapshot(biases), outer_state)
            return metrics
        metrics["meta/dead_loss"] = 1.0
        message = (
            f"the learned loss is dead at {where} step {step}: |dloss/dp_target| above "
            f"p={self.p_min} is {relative:.1e} of its peak (no gradient once predictions "
            "get there). Fix: a loss network without an output Softplus (loss.output=none), "
            "or dead_loss.policy=restart"
        )
        if self.policy == "restart" and self.healthy is not None:
            if self.restarts >= self.max_restarts:
                raise NumericalError(f"{message}; still dead after {self.restarts} restarts")
            self.restarts += 1
            params, outer_state = self.healthy
            biases.load_state_dict(params)
            if outer is not None and outer_state is not None:
                outer.load_state_dict(outer_state)
            warnings.warn(
                f"{message}; restarting from the last healthy meta-parameters", stacklevel=3
            )
        elif self.policy == "stop" or self.policy == "restart":
            raise NumericalError(message)
        elif not self.dead:  # warn when it dies, not at every check while it stays dead
            warnings.warn(message, stacklevel=3)
        self.dead = self.policy == "warn"
        return metrics

    def after_meta_step(self, trainer) -> dict[str, float]:
        if self.policy == "off" or not is_learned(trainer.biases.loss):
            return {}
        if self.healthy is None:  # the first meta-parameters count as healthy
            self.healthy = (snapshot(trainer.biases), None)
        if trainer.meta_step % self.every:
            return {}
        task = trainer.ctx.family.representative()
        if task.kind != "classification":
            return {}
        return self._check(
            trainer.biases, trainer.ctx.outer, task.num_classes, "meta-train", trainer.meta_step
        )

    def after_inner_step(self, trainer, ctx, run, tag: str, index: int) -> dict[str, float]:
        if not self._applies(ctx.biases, run.task.kind) or ctx.outer is None:
            return {}
        if run.state.step == 1:  # each online run starts from the meta-trained loss
            self.healthy = (snapshot(ctx.biases), copy.deepcopy(ctx.outer.state_dict()))
            self.restarts, self.dead = 0, False
        if run.state.step % self.every:
            return {}
        return self._check(
            ctx.biases, ctx.outer, run.task.num_classes, f"meta-test seed {index}", run.state.step
        )

    def state_dict(self) -> dict:
        return {"restarts": self.restarts, "healthy": self.healthy, "dead": self.dead}

    def load_state_dict(self, state: dict) -> None:
        self.restarts, self.healthy = state["restarts"], state["healthy"]
        self.dead = state.get("dead", False)
