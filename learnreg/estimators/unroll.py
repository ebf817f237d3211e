"""Truncated backpropagation through the inner loop.

References:
    Bechtle et al., "Meta Learning via Learned Loss" (offline, window 1, reset each step).
    Raymond et al., "Meta-Learning Adaptive Loss Functions" (online, window 1, no reset).
    Andrychowicz et al., "Learning to learn by gradient descent by gradient descent"
    (window T inside a horizon N); Metz et al., 2019, on truncation bias.
"""

from __future__ import annotations

from typing import Literal

from learnreg.core import hypergrad
from learnreg.core.inner import InnerRun, inner_step
from learnreg.errors import ConfigError
from learnreg.estimators.base import Estimator, MetaContext
from learnreg.registry import register


@register("estimator", "truncated_unroll")
class TruncatedUnroll(Estimator):
    """Keep inner runs alive; every meta-step, unroll ``window`` differentiable inner steps,
    backpropagate the meta-objective into the meta-parameters, step, detach and go on.

    Args:
        window: inner steps per meta-step (the truncation length).
        horizon: inner steps after which a run is replaced by a fresh one (None: never,
            the online regime). ML3 is ``window=1, horizon=1``; online AdaLFL
            ``window=1, horizon=None``; learned optimizers ``window=T, horizon=N``.
        meta_batch: inner runs (tasks) averaged per meta-step.
        objective_batch: ``val`` (a held-out validation batch) or ``train`` (the last
            inner training batch, as ML3's and AdaLFL's reference code do).
        average: average the objective over every step of the window (the L2L
            convention) instead of taking it at the end only.
        fast_path: use the exact one-step meta-gradient of :mod:`learnreg.core.hypergrad`
            when it applies (window 1, objective at the end); False forces the generic
            double backward (same result, slower).
    """

    def __init__(
        self,
        window: int = 1,
        horizon: int | None = 1,
        meta_batch: int = 1,
        objective_batch: Literal["val", "train"] = "val",
        average: bool = False,
        fast_path: bool = True,
    ):
        if window < 1 or (horizon is not None and horizon < window) or meta_batch < 1:
            raise ConfigError(
                f"need window >= 1, horizon >= window (or None), meta_batch >= 1; got {window}, {horizon}, {meta_batch}"
            )
        self.window, self.horizon, self.meta_batch = window, horizon, meta_batch
        self.objective_batch, self.average, self.fast_path = objective_batch, average, fast_path
        self.runs: list[InnerRun] = []
        self.next_index = 0
        self.attached = False

    def step(self, ctx: MetaContext) -> dict[str, float]:
        self._refresh_runs(ctx)
        ctx.outer.zero_grad()
        losses, base = [], []
        for run in self.runs:
            meta_loss, base_loss = self.unroll(ctx, run, scale=1.0 / len(self.runs))
            losses.append(meta_loss)
            base.append(base_loss)
        meta_loss = float(sum(losses) / len(losses))
        info = ctx.outer.step(meta_loss)
        if info["skipped"] and not self.attached:  # the states may be garbage: start again
            self.runs = []
        return {"meta_loss": meta_loss, "base_loss": float(sum(base) / len(base)), **info}

    def unroll(self, ctx: MetaContext, run: InnerRun, scale: float = 1.0) -> tuple[float, float]:
        """Advance ``run`` by ``window`` steps and accumulate ``scale · ∂(meta-loss)`` into
        the meta-parameters' ``.grad``; the run continues from the detached state.

        Returns:
            The meta-loss and the last base (inner) loss.
        """
        biases, model, task = ctx.biases, run.model, run.task

        def objective(state):
            batch = run.val.next() if self.objective_batch == "val" else run.last_batch
            return ctx.objective(model, state, batch, task)

        if self.fast_path and self.window == 1 and hypergrad.applies(run.state):
            run.state, meta_loss, base_loss = hypergrad.one_step(
                model, run.state, run.next_train(), biases.loss, biases.optimizer, objective, scale
            )
            return float(meta_loss), base_loss

        state, total = run.state, 0.0
        for i in range(self.window):
            state, base_loss = inner_step(
                model, state, run.next_train(), biases.loss, biases.optimizer
            )
            if self.average or i == self.window - 1:
                total = total + objective(state)
        meta_loss = total / self.window if self.average else total
        (scale * meta_loss).backward()
        run.state = state.detach()
        return float(meta_loss.detach()), float(base_loss)

    def attach(self, run: InnerRun) -> None:
        """Adapt online along ``run`` only: it is never reset or replaced (the meta-test
        phase of online AdaLFL)."""
        self.runs, self.horizon, self.meta_batch, self.attached = [run], None, 1, True

    def _refresh_runs(self, ctx: MetaContext) -> None:
        if self.horizon is not None:
            self.runs = [r for r in self.runs if r.state.step + self.window <= self.horizon]
        while len(self.runs) < self.meta_batch:
            self.runs.append(ctx.new_run("meta_train", self.next_index))
            self.next_index += 1

    def state_dict(self) -> dict:
        return {"next_index": self.next_index, "runs": [r.state_dict() for r in self.runs]}

    def load_state_dict(self, state: dict, ctx: MetaContext) -> None:
        self.next_index = int(state["next_index"])
        self.runs = []
        for sd in state["runs"]:
            run = ctx.new_run("meta_train", int(sd["index"]))
            run.load_state_dict(sd)
            self.runs.append(run)
