"""The outer (meta-parameter) update, shared by every gradient-based estimator.

It owns the meta-optimizer and guards it: a non-finite meta-loss or meta-gradient skips
the step (the meta-parameters stay at the last good values), and too many consecutive
failures stop the run with :class:`~learnreg.errors.NumericalError`. Under ``torchrun`` it
is also where ranks meet: the meta-gradients (and the meta-loss, so every rank takes the
same skip decision) are averaged over ranks before the step (:mod:`learnreg.core.distributed`).
An optional learning-rate schedule advances once per meta-step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from learnreg.core import distributed
from learnreg.core.metaparams import MetaParams
from learnreg.errors import NumericalError


class OuterOptimizer:
    """A torch optimizer over the meta-parameters, with clipping and a non-finite guard.

    Args:
        params: the meta-parameters (those that require grad).
        optimizer: a ``torch.optim.Optimizer`` over ``params``.
        clip_grad_norm: clip the global meta-gradient norm to this value (None: no clip).
        max_bad_steps: consecutive skipped steps tolerated before raising.
        scheduler: a ``torch.optim.lr_scheduler`` over ``optimizer``, stepped once per
            meta-step (skipped steps included, so the schedule follows the meta-step count).
        sync: average meta-gradients over the ranks of the process group (None: whenever
            one is active). Estimators average over their own tasks; ranks hold disjoint
            tasks of equal number, so the result is the mean over all tasks.
        named: the same parameters by role and name
            (:func:`~learnreg.core.metaparams.meta_parameters`), which :meth:`apply`
            matches an estimate's gradients against.
    """

    def __init__(
        self,
        params: list[nn.Parameter],
        optimizer: torch.optim.Optimizer,
        clip_grad_norm: float | None = None,
        max_bad_steps: int = 10,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        sync: bool | None = None,
        named: MetaParams | None = None,
    ):
        self.params, self.optimizer, self.scheduler = params, optimizer, scheduler
        self.named = named or {}
        self.clip_grad_norm, self.max_bad_steps = clip_grad_norm, max_bad_steps
        self.sync = distributed.is_active() if sync is None else sync
        self.broadcast_done = False
        self.bad_steps = 0
        self.last_good = [p.detach().clone() for p in params]

    def zero_grad(self) -> None:
        """Clear the meta-gradients before a meta-step. When syncing, the first call also
        gives every rank rank 0's meta-parameters (a collective: all ranks call it)."""
        if self.sync and not self.broadcast_done:
            distributed.broadcast_(self.params)
            for saved, p in zip(self.last_good, self.params):
                saved.copy_(p.detach())
            self.broadcast_done = True
        self.optimizer.zero_grad(set_to_none=True)

    def begin(self) -> None:
        """Start a meta-step (the first call of a synced run broadcasts rank 0's values)."""
        self.zero_grad()

    def apply(self, grads: MetaParams, meta_loss: float) -> dict[str, float]:
        """Take the outer step along an estimator's meta-gradient.

        Args:
            grads: ``{role: {name: gradient}}`` (missing entries count as zero).
            meta_loss: the estimator's meta-loss for this step.

        Returns:
            As :meth:`step`.
        """
        for p in self.params:  # optimizer.zero_grad(set_to_none=True), without its profiler scope
            p.grad = None
        for role, named in grads.items():
            for name, grad in named.items():
                try:
                    p = self.named[role][name]
                except KeyError:
                    raise KeyError(
                        f"the estimate has a gradient for {role}.{name}, which is not a "
                        "meta-parameter of this run"
                    ) from None
                # dense and in the parameter's layout, as autograd leaves a .grad
                grad = grad.detach().to(p.dtype).contiguous()
                p.grad = grad if p.grad is None else p.grad + grad
        return self.step(meta_loss)

    def step(self, meta_loss: float) -> dict[str, float]:
        """Apply the accumulated meta-gradient, unless it or ``meta_loss`` is not finite.

        Args:
            meta_loss: this process's meta-loss (averaged over ranks when syncing).

        Returns:
            ``meta_loss`` (averaged over ranks), ``grad_norm`` (before clipping),
            ``skipped`` (1.0 when the step was refused) and, with a schedule, ``meta_lr``
            (the learning rate the step used).

        Raises:
            NumericalError: after ``max_bad_steps`` consecutive refused steps.
        """
        if self.sync:
            meta_loss = self._all_reduce(meta_loss)
        info = {"meta_loss": meta_loss, **self._apply(meta_loss)}
        if self.scheduler is not None:
            info["meta_lr"] = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step()
        return info

    def _all_reduce(self, meta_loss: float) -> float:
        """Average ``.grad`` and the meta-loss over ranks (a missing grad counts as zero)."""
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        loss = torch.tensor([meta_loss], dtype=self.params[0].dtype, device=self.params[0].device)
        distributed.all_reduce_mean_([p.grad for p in self.params] + [loss])
        return float(loss)

    def _apply(self, meta_loss: float) -> dict[str, float]:
        grads = [p.grad for p in self.params if p.grad is not None]
        # foreach: one call for all the leaves (the per-leaf norms are the same values)
        norm = (
            torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).item()
            if grads
            else 0.0
        )
        if not (math.isfinite(meta_loss) and math.isfinite(norm)):
            return self._refuse(
                f"non-finite meta-loss {meta_loss} or meta-gradient norm {norm}", norm
            )
        if self.clip_grad_norm is not None and norm > self.clip_grad_norm:
            torch._foreach_mul_(grads, self.clip_grad_norm / (norm + 1e-12))
        self.optimizer.step()
        with torch.no_grad():
            # all finite ⟺ every max |p| is finite (NaN propagates through the max): one check
            finite = bool(torch.stack(torch._foreach_norm(self.params, math.inf)).isfinite().all())
            if finite:
                torch._foreach_copy_(self.last_good, self.params)
        if not finite:
            return self._refuse("the meta-parameters became non-finite after the update", norm)
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
        state = {"optimizer": self.optimizer.state_dict(), "bad_steps": self.bad_steps}
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.bad_steps = int(state["bad_steps"])
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        for saved, p in zip(self.last_good, self.params):
            saved.copy_(p.detach())


# The meta-optimizers and meta learning-rate schedules a config may name (any torch.optim
# class also works by dotted path).
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
    register("meta_lr_schedule", "cosine")(cosine)


def cosine(optimizer: torch.optim.Optimizer, total_steps: int, min_lr: float = 0.0):
    """Cosine decay of the meta learning rate to ``min_lr`` over the run's meta-steps.

    Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts"
    (arXiv 1608.03983), without restarts; NPBML meta-trains with it.

    Args:
        optimizer: the meta-optimizer (injected).
        total_steps: the run's ``meta_steps`` (injected).
        min_lr: the learning rate reached at the last meta-step.
    """
    return torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(total_steps, 1), eta_min=min_lr
    )


_register_meta_optimizers()
