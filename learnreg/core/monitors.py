"""Monitors: small hooks the meta-trainer calls, for checks and selections that are not
part of any method.

A monitor sees the trainer after every meta-step (:meth:`Monitor.after_meta_step`), at
the end of meta-training (:meth:`Monitor.after_fit`) and after every inner step of an
online meta-test run (:meth:`Monitor.after_inner_step`); it may return metrics to log,
change the meta-parameters (restore, select) or raise. Its state travels with the
trainer's checkpoint.

The monitors themselves are built on the core, not in it: dead-loss detection
(:mod:`learnreg.eval.dead_loss`) and best-checkpoint selection
(:mod:`learnreg.eval.best_checkpoint`) evaluate roles and models.
"""

from __future__ import annotations

import torch


class Monitor:
    """Base class: every hook does nothing."""

    def after_meta_step(self, trainer) -> dict[str, float]:
        """Called after each meta-step of :meth:`MetaTrainer.fit`; returns metrics to log."""
        return {}

    def after_fit(self, trainer) -> None:
        """Called once when :meth:`MetaTrainer.fit` has taken its meta-steps."""

    def after_inner_step(self, trainer, ctx, run, tag: str, index: int) -> dict[str, float]:
        """Called after each inner step of an online (adapting) meta-test run; ``ctx`` holds
        that run's own biases and outer optimizer."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def snapshot(module: torch.nn.Module) -> dict:
    """A detached copy of a module's state (``state_dict`` shares storage with it)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
