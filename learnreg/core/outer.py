"""The outer (meta-parameter) update, shared by every gradient-based estimator.

It owns the meta-optimizer and guards it: a non-finite meta-loss or meta-gradient skips
the step (the meta-parameters stay at the last good values), and too many consecutive
failures stop the run with :class:`~learnreg.errors.NumericalError`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from learnreg.errors import NumericalError


class OuterOptimizer:
    """A torch optimizer over the meta-parameters, with clipping and a non-finite guard.

    Args:
        params: the meta-parameters (those that require grad).
        optimizer: a ``torch.optim.Optimizer`` over ``params``.
        clip_grad_norm: clip the global meta-gradient norm to this value (None: no clip).
        max_bad_steps: consecutive skipped steps tolerated before raising.
    """

    def __init__(
        self,
        params: list[nn.Parameter],
        optimizer: torch.optim.Optimizer,
        clip_grad_norm: float | None = None,
        max_bad_steps: int = 10,
    ):
        self.params, self.optimizer = params, optimizer
        self.clip_grad_norm, self.max_bad_steps = clip_grad_norm, max_bad_steps
        self.bad_steps = 0
        self.last_good = [p.detach().clone() for p in params]

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, meta_loss: float) -> dict[str, float]:
        """Apply the accumulated meta-gradient, unless it or ``meta_loss`` is not finite.

        Returns:
            ``grad_norm`` (before clipping) and ``skipped`` (1.0 when the step was refused).

        Raises:
            NumericalError: after ``max_bad_steps`` consecutive refused steps.
        """
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = (
            torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g) for g in grads])
            ).item()
            if grads
            else 0.0
        )
        if not (math.isfinite(meta_loss) and math.isfinite(norm)):
            return self._refuse(
                f"non-finite meta-loss {meta_loss} or meta-gradient norm {norm}", norm
            )
        if self.clip_grad_norm is not None and norm > self.clip_grad_norm:
            for g in grads:
                g.mul_(self.clip_grad_norm / (norm + 1e-12))
        self.optimizer.step()
        if not all(torch.isfinite(p).all() for p in self.params):
            return self._refuse("the meta-parameters became non-finite after the update", norm)
        for saved, p in zip(self.last_good, self.params):
            saved.copy_(p.detach())
        self.bad_steps = 0
        return {"grad_norm": norm, "skipped": 0.0}

    def _refuse(self, reason: str, norm: float) -> dict[str, float]:
        self.zero_grad()
        with torch.no_grad():
            for saved, p in zip(self.last_good, self.params):
                p.copy_(saved)
        self.bad_steps += 1
        self.last_reason = reason
        if self.bad_steps >= self.max_bad_steps:
            raise NumericalError(
                f"meta-training diverged: {self.bad_steps} consecutive meta-steps skipped ({reason}). "
                "Lower the meta learning rate or the inner learning rate, or set meta_grad_clip."
            )
        return {"grad_norm": norm, "skipped": 1.0}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "bad_steps": self.bad_steps}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.bad_steps = int(state["bad_steps"])
        for saved, p in zip(self.last_good, self.params):
            saved.copy_(p.detach())


# The meta-optimizers a config may name (any torch.optim class also works by dotted path).
def _register_meta_optimizers() -> None:
    from learnreg.registry import register

    for name, cls in {
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "sgd": torch.optim.SGD,
    }.items():
        register("meta_optimizer", name, f"torch.optim.{cls.__name__} over the meta-parameters")(
            cls
        )


_register_meta_optimizers()
