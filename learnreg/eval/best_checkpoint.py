"""Best-checkpoint selection: validate during meta-training, end on the best
meta-parameters (a :class:`~learnreg.core.monitors.Monitor`)."""

from __future__ import annotations

import math

import torch

from learnreg.core.inner import inner_step
from learnreg.core.monitors import Monitor, snapshot
from learnreg.eval.metrics import evaluate_split


class BestCheckpoint(Monitor):
    """Validate every ``every`` fraction of meta-training and end on the best meta-parameters.

    Each validation trains ``seeds`` fresh models for ``steps`` inner steps with the current
    biases on meta-training tasks (``family.sample``) and scores their ``val`` split, never
    ``test``: the test split stays for the final report. Lower is better (``error`` for
    classification, ``mse`` for regression). The final meta-step is always validated, so
    the result is never worse on validation than the last meta-parameters.

    Args:
        every: fraction of the meta-steps between validations (0.1: ten validations).
        steps: inner steps of each validation run.
        seeds: validation runs (model seeds / tasks) averaged per validation.

    References:
        The official EvoMAL code validates ML3's loss network and EvoMAL's local search
        every 10% of the meta-gradient steps and reloads the best (Raymond et al., TPAMI
        2023, github.com/Decadz/Evolved-Model-Agnostic-Loss, source/optimization/gimli.py).
    """

    def __init__(self, every: float = 0.1, steps: int = 500, seeds: int = 1):
        self.every, self.steps, self.seeds = every, steps, seeds
        self.best: dict | None = None
        self.best_value = math.inf
        self.best_step = -1

    def interval(self, meta_steps: int) -> int:
        return max(1, round(self.every * meta_steps))

    def after_meta_step(self, trainer) -> dict[str, float]:
        total = trainer.target_meta_steps
        if trainer.meta_step % self.interval(total) and trainer.meta_step != total:
            return {}
        value = self.validate(trainer)
        value = value if math.isfinite(value) else math.inf  # a diverged run is the worst
        if value < self.best_value or self.best is None:
            self.best, self.best_value = snapshot(trainer.biases), value
            self.best_step = trainer.meta_step
        return {"meta/val_metric": value, "meta/best_val_metric": self.best_value}

    @torch.no_grad()
    def validate(self, trainer) -> float:
        """Mean validation metric of ``seeds`` fresh runs trained with the current biases."""
        ctx, values = trainer.ctx, []
        for index in range(self.seeds):
            run = ctx.new_run("validation", index)
            for _ in range(self.steps):
                run.state, _ = inner_step(
                    run.model, run.state, run.next_train(), ctx.biases.loss, ctx.biases.optimizer
                )
            metrics = evaluate_split(run.model, run.state, run.task.val, run.task.kind)
            values.append(metrics["error" if run.task.kind == "classification" else "mse"])
        return sum(values) / len(values)

    def after_fit(self, trainer) -> None:
        if self.best is not None:
            trainer.biases.load_state_dict(self.best)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_value": self.best_value, "best_step": self.best_step}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_value = state["best"], state["best_value"]
        self.best_step = state["best_step"]
